use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};

use crate::depthwise::conv_forward;
use crate::squeeze_excite::SqueezeExcite;
use crate::weights::{ConvSpec, LoadError, WeightLoader};
use vlm_kernels::activation::gelu;

/// MobileOne block in its inference form: one re-parameterised convolution (`reparam_conv`), an
/// optional squeeze-excite, then GELU.
#[derive(Module, Debug)]
pub struct MobileOneBlock<B: Backend> {
    pub reparam_conv: Conv2d<B>,
    pub se: Option<SqueezeExcite<B>>,
}

impl<B: Backend> MobileOneBlock<B> {
    pub(crate) fn load(
        loader: &mut WeightLoader<B>,
        name: &str,
        spec: ConvSpec,
        with_se: bool,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            reparam_conv: loader.conv(&format!("{name}.reparam_conv"), spec)?,
            se: if with_se {
                Some(SqueezeExcite::load(
                    loader,
                    &format!("{name}.se"),
                    spec.channels[1],
                )?)
            } else {
                None
            },
        })
    }

    /// `[batch, c_in, h, w]` → `[batch, c_out, h / stride, w / stride]` (rounded up).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match &self.se {
            // GELU comes after the squeeze-excite, so it cannot join the convolution.
            Some(se) => gelu(se.forward(conv_forward(&self.reparam_conv, x, false))),
            None => conv_forward(&self.reparam_conv, x, true),
        }
    }
}
