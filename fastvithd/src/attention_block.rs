use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use vlm_kernels::loader::{LoadError, Params};

use crate::attention::Attention;
use crate::conv_ffn::ConvFfn;
use crate::layer_norm_channel::LayerNormChannel;

/// Attention block (stages 3 and 4):
/// `x = x + layer_scale_1 · MHSA(LayerNormChannel(x))`, `x = x + layer_scale_2 · ConvFFN(x)`;
/// both layer scales are folded into the output projections at load.
#[derive(Module, Debug)]
pub struct AttentionBlock<B: Backend> {
    pub norm: LayerNormChannel<B>,
    pub token_mixer: Attention<B>,
    pub convffn: ConvFfn<B>,
}

impl<B: Backend> AttentionBlock<B> {
    pub(crate) fn load(
        params: &mut impl Params<B>,
        name: &str,
        dim: usize,
        config: &crate::FastVitHdConfig,
    ) -> Result<Self, LoadError> {
        let norm = LayerNormChannel {
            weight: Param::from_tensor(params.tensor(&format!("{name}.norm.weight"), [dim])?),
            bias: Param::from_tensor(params.tensor(&format!("{name}.norm.bias"), [dim])?),
            eps: config.norm_eps,
        };
        let ls1 = params.host(&format!("{name}.layer_scale_1"), &[dim, 1, 1])?;
        let ls2 = params.host(&format!("{name}.layer_scale_2"), &[dim, 1, 1])?;
        let token_mixer = Attention::load(
            params,
            &format!("{name}.token_mixer"),
            dim,
            config.head_dim,
            &ls1,
        )?;
        let convffn = ConvFfn::load(
            params,
            &format!("{name}.convffn"),
            dim,
            dim * config.mlp_ratio,
            config.norm_eps,
            Some(&ls2),
        )?;
        Ok(Self {
            norm,
            token_mixer,
            convffn,
        })
    }

    /// `[batch, dim, h, w]` → `[batch, dim, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = x.clone() + self.token_mixer.forward(self.norm.forward(x));
        x.clone() + self.convffn.forward(x)
    }
}
