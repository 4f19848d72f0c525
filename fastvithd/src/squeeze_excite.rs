use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::loader::{LoadError, Params};
use vlm_kernels::ops;

use crate::names::ConvSpec;

/// Squeeze-excite of `conv_exp`: global average → 1×1 `reduce` → ReLU → 1×1 `expand` → sigmoid,
/// then a per-channel gate on the input.
#[derive(Module, Debug)]
pub struct SqueezeExcite<B: Backend> {
    pub reduce: Conv2d<B>,
    pub expand: Conv2d<B>,
}

impl<B: Backend> SqueezeExcite<B> {
    /// Width of the bottleneck: `int(channels * 0.0625)` as in `mci.py`.
    pub fn reduced(channels: usize) -> usize {
        channels / 16
    }

    pub(crate) fn load(
        params: &mut impl Params<B>,
        name: &str,
        channels: usize,
    ) -> Result<Self, LoadError> {
        let rd = Self::reduced(channels);
        Ok(Self {
            reduce: ConvSpec::new([channels, rd], 1).load(params, &format!("{name}.reduce"))?,
            expand: ConvSpec::new([rd, channels], 1).load(params, &format!("{name}.expand"))?,
        })
    }

    /// `[batch, channels, h, w]` → same shape.
    ///
    /// The gate is computed in f32 at every precision and rounded once (the pooling averages
    /// the whole map, the convolutions sum over `channels` and `channels / 16` inputs); the map
    /// itself keeps its precision.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let pooled = ops::to_f32(x.clone()).mean_dim(2).mean_dim(3);
        let hidden = relu(ops::conv2d(&self.reduce, pooled, false));
        let gate = sigmoid(ops::conv2d(&self.expand, hidden, false));
        let dtype = x.dtype();
        x * ops::cast(gate, dtype)
    }
}
