use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::loader::{LoadError, Params};
use vlm_kernels::ops;

use crate::conv_ffn::ConvFfn;
use crate::names::ConvSpec;

/// RepMixer block (stages 0–2), inference form.
///
/// `t = token_mixer(x)` is a depthwise 3×3 conv whose kernel already carries the identity and
/// the layer-scaled mixer branches (so there is no residual around it); then
/// `y = t + layer_scale · ConvFFN(t)`, with the layer scale folded into `fc2` at load.
#[derive(Module, Debug)]
pub struct RepMixerBlock<B: Backend> {
    pub token_mixer: Conv2d<B>,
    pub convffn: ConvFfn<B>,
}

impl<B: Backend> RepMixerBlock<B> {
    pub(crate) fn load(
        params: &mut impl Params<B>,
        name: &str,
        dim: usize,
        mlp_ratio: usize,
        eps: f64,
    ) -> Result<Self, LoadError> {
        let token_mixer = ConvSpec::depthwise(dim, 3)
            .load(params, &format!("{name}.token_mixer.reparam_conv"))?;
        let layer_scale = params.host(&format!("{name}.layer_scale"), &[dim, 1, 1])?;
        let convffn = ConvFfn::load(
            params,
            &format!("{name}.convffn"),
            dim,
            dim * mlp_ratio,
            eps,
            Some(&layer_scale),
        )?;
        Ok(Self {
            token_mixer,
            convffn,
        })
    }

    /// `[batch, dim, h, w]` → `[batch, dim, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let t = ops::conv2d(&self.token_mixer, x, false);
        t.clone() + self.convffn.forward(t)
    }
}
