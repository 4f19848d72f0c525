use burn::module::{Module, Param};
use burn::tensor::{FloatDType, Tensor, backend::Backend};

/// LayerNorm over the channel axis of an NCHW map (`LayerNormChannel` in `mci.py`): every pixel
/// is normalised across its channels with the biased variance, then scaled and shifted per channel.
#[derive(Module, Debug)]
pub struct LayerNormChannel<B: Backend> {
    /// `[channels]`.
    pub weight: Param<Tensor<B, 1>>,
    /// `[channels]`.
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> LayerNormChannel<B> {
    /// `[batch, channels, h, w]` → same shape; statistics in f32 at any model precision.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let channels = x.dims()[1];
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let mean = x.clone().mean_dim(1);
        let centred = x - mean;
        let var = centred.clone().square().mean_dim(1);
        let normed = (centred / (var + self.eps).sqrt()).cast(dtype);
        let shape = [1, channels, 1, 1];
        normed * self.weight.val().reshape(shape) + self.bias.val().reshape(shape)
    }
}
