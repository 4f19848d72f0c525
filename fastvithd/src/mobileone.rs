use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::loader::{LoadError, Params};
use vlm_kernels::ops;

use crate::names::ConvSpec;
use crate::squeeze_excite::SqueezeExcite;

/// MobileOne block in its inference form: one re-parameterised convolution (`reparam_conv`), an
/// optional squeeze-excite, then GELU.
#[derive(Module, Debug)]
pub struct MobileOneBlock<B: Backend> {
    pub reparam_conv: Conv2d<B>,
    pub se: Option<SqueezeExcite<B>>,
}

impl<B: Backend> MobileOneBlock<B> {
    pub(crate) fn load(
        params: &mut impl Params<B>,
        name: &str,
        spec: ConvSpec,
        with_se: bool,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            reparam_conv: spec.load(params, &format!("{name}.reparam_conv"))?,
            se: match with_se {
                true => Some(SqueezeExcite::load(
                    params,
                    &format!("{name}.se"),
                    spec.channels[1],
                )?),
                false => None,
            },
        })
    }

    /// `[batch, c_in, h, w]` → `[batch, c_out, h / stride, w / stride]` (rounded up).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match &self.se {
            // GELU comes after the squeeze-excite, so it cannot join the convolution.
            Some(se) => ops::gelu(se.forward(ops::conv2d(&self.reparam_conv, x, false))),
            None => ops::conv2d(&self.reparam_conv, x, true),
        }
    }
}
