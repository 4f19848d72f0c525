use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Tensor, backend::Backend};

use crate::weights::{ConvSpec, LoadError, WeightLoader};

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
        loader: &mut WeightLoader<B>,
        name: &str,
        channels: usize,
    ) -> Result<Self, LoadError> {
        let rd = Self::reduced(channels);
        Ok(Self {
            reduce: loader.conv(&format!("{name}.reduce"), ConvSpec::new([channels, rd], 1))?,
            expand: loader.conv(&format!("{name}.expand"), ConvSpec::new([rd, channels], 1))?,
        })
    }

    /// `[batch, channels, h, w]` → same shape.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let pooled = x.clone().mean_dim(2).mean_dim(3);
        let gate = sigmoid(self.expand.forward(relu(self.reduce.forward(pooled))));
        x * gate
    }
}
