use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{DType, FloatDType, Tensor, backend::Backend};

use crate::depthwise::{conv_in_f32, even_padding};
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
    ///
    /// At f16/bf16 the pooling and the gate run in f32 (the two convolutions sum over
    /// `channels` and `channels / 16` inputs, which burn 0.21's direct convolution would sum at
    /// the tensor's precision) and the gate is rounded once; the map itself stays as it is.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        let half = matches!(dtype, DType::F16 | DType::BF16);
        if half && even_padding(&self.reduce).is_some() && even_padding(&self.expand).is_some() {
            let pooled = x.clone().cast(FloatDType::F32).mean_dim(2).mean_dim(3);
            let hidden = relu(conv_in_f32(&self.reduce, pooled));
            let gate = sigmoid(conv_in_f32(&self.expand, hidden));
            return x * gate.cast(dtype);
        }
        let pooled = x.clone().mean_dim(2).mean_dim(3);
        let gate = sigmoid(self.expand.forward(relu(self.reduce.forward(pooled))));
        x * gate
    }
}
