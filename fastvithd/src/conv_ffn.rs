use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};

use crate::depthwise::conv_forward;
use crate::pointwise::Pointwise;
use crate::weights::{ConvSpec, LoadError, WeightLoader};
use vlm_kernels::activation::gelu;

/// ConvFFN: depthwise 7×7 conv + BatchNorm, 1×1 `fc1` (×mlp_ratio), GELU, 1×1 `fc2`.
///
/// The checkpoint's eval-mode BatchNorm is folded into the depthwise conv at load, and the
/// block's layer scale (when given) into `fc2`, so the forward pass is a depthwise convolution
/// and two pixel-wise matrix products.
#[derive(Module, Debug)]
pub struct ConvFfn<B: Backend> {
    /// Depthwise 7×7 with the BatchNorm folded in, `[dim, 1, 7, 7]`.
    pub conv: Conv2d<B>,
    /// `[hidden, dim]` (released as `[hidden, dim, 1, 1]`).
    pub fc1: Pointwise<B>,
    /// `[dim, hidden]`, scaled per output channel by the block's layer scale.
    pub fc2: Pointwise<B>,
}

/// Folds an eval-mode BatchNorm into the bias-free conv before it:
/// `W' = W · γ/√(σ²+ε)` per output channel, `b' = β − μ · γ/√(σ²+ε)`.
pub fn fold_batch_norm(
    weight: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> Vec<f32> {
    let per_out = weight.len() / gamma.len();
    (0..gamma.len())
        .map(|c| {
            let scale = gamma[c] as f64 / (var[c] as f64 + eps).sqrt();
            for w in &mut weight[c * per_out..(c + 1) * per_out] {
                *w = (*w as f64 * scale) as f32;
            }
            (beta[c] as f64 - mean[c] as f64 * scale) as f32
        })
        .collect()
}

impl<B: Backend> ConvFfn<B> {
    pub(crate) fn load(
        loader: &mut WeightLoader<B>,
        name: &str,
        dim: usize,
        hidden: usize,
        eps: f64,
        layer_scale: Option<&[f32]>,
    ) -> Result<Self, LoadError> {
        let spec = ConvSpec::depthwise(dim, 7);
        let mut weight = loader.host(&format!("{name}.conv.conv.weight"), &spec.weight_shape())?;
        let bn = |loader: &mut WeightLoader<B>, p: &str| {
            loader.host(&format!("{name}.conv.bn.{p}"), &[dim])
        };
        let (gamma, beta) = (bn(loader, "weight")?, bn(loader, "bias")?);
        let (mean, var) = (bn(loader, "running_mean")?, bn(loader, "running_var")?);
        let bias = fold_batch_norm(&mut weight, &gamma, &beta, &mean, &var, eps);
        let conv = loader.conv_from(
            spec,
            loader.upload(weight, spec.weight_shape()),
            loader.upload(bias, [dim]),
        );

        let w1 = loader.host(&format!("{name}.fc1.weight"), &[hidden, dim, 1, 1])?;
        let fc1 = Pointwise::new(
            loader.upload(w1, [hidden, dim]),
            loader.tensor(&format!("{name}.fc1.bias"), [hidden])?,
        );
        let mut w2 = loader.host(&format!("{name}.fc2.weight"), &[dim, hidden, 1, 1])?;
        let mut b2 = loader.host(&format!("{name}.fc2.bias"), &[dim])?;
        if let Some(scale) = layer_scale {
            scale_rows(&mut w2, scale);
            scale_rows(&mut b2, scale);
        }
        let fc2 = Pointwise::new(loader.upload(w2, [dim, hidden]), loader.upload(b2, [dim]));
        Ok(Self { conv, fc1, fc2 })
    }

    /// `[batch, dim, h, w]` → `[batch, dim, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = conv_forward(&self.conv, x, false);
        // On flex (f32) both 1×1 convolutions and the GELU run a block of pixels at a time, so
        // the 4× wide map never leaves the cache.
        #[cfg(feature = "flex")]
        let x = if vlm_kernels::flex::on_flex::<B>() {
            match vlm_kernels::flex::pointwise_mlp(x, &self.mlp_weights()) {
                Ok(y) => return y,
                Err(x) => x,
            }
        } else {
            x
        };
        let x = gelu(self.fc1.forward(x));
        self.fc2.forward(x)
    }

    #[cfg(feature = "flex")]
    fn mlp_weights(&self) -> vlm_kernels::flex::PointwiseMlp<B> {
        vlm_kernels::flex::PointwiseMlp {
            w1: self.fc1.weight.val(),
            b1: self.fc1.bias.val(),
            w2: self.fc2.weight.val(),
            b2: self.fc2.bias.val(),
        }
    }
}

/// Multiplies row `c` of a row-major `[scale.len(), …]` buffer by `scale[c]`.
pub(crate) fn scale_rows(values: &mut [f32], scale: &[f32]) {
    let per_row = values.len() / scale.len();
    for (row, s) in values.chunks_mut(per_row).zip(scale) {
        row.iter_mut().for_each(|v| *v *= s);
    }
}
