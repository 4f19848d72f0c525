use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::loader::{LoadError, Params, upload};
use vlm_kernels::ops;

use crate::names::ConvSpec;
use crate::pointwise::Pointwise;

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
        params: &mut impl Params<B>,
        name: &str,
        dim: usize,
        hidden: usize,
        eps: f64,
        layer_scale: Option<&[f32]>,
    ) -> Result<Self, LoadError> {
        let spec = ConvSpec::depthwise(dim, 7);
        let mut weight = params.host(&format!("{name}.conv.conv.weight"), &spec.weight_shape())?;
        let mut bn = |p: &str| params.host(&format!("{name}.conv.bn.{p}"), &[dim]);
        let (gamma, beta) = (bn("weight")?, bn("bias")?);
        let (mean, var) = (bn("running_mean")?, bn("running_var")?);
        let bias = fold_batch_norm(&mut weight, &gamma, &beta, &mean, &var, eps);
        let device = params.device().clone();
        let conv = spec.with(
            upload(weight, spec.weight_shape(), &device),
            upload(bias, [dim], &device),
        );

        let w1 = params.host(&format!("{name}.fc1.weight"), &[hidden, dim, 1, 1])?;
        let fc1 = Pointwise::new(
            upload(w1, [hidden, dim], &device),
            params.tensor(&format!("{name}.fc1.bias"), [hidden])?,
        );
        let mut w2 = params.host(&format!("{name}.fc2.weight"), &[dim, hidden, 1, 1])?;
        let mut b2 = params.host(&format!("{name}.fc2.bias"), &[dim])?;
        if let Some(scale) = layer_scale {
            scale_rows(&mut w2, scale);
            scale_rows(&mut b2, scale);
        }
        let fc2 = Pointwise::new(
            upload(w2, [dim, hidden], &device),
            upload(b2, [dim], &device),
        );
        Ok(Self { conv, fc1, fc2 })
    }

    /// `[batch, dim, h, w]` → `[batch, dim, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = ops::conv2d(&self.conv, x, false);
        // fc2(GELU(fc1(x))), as one op: the ops layer keeps the 4× wide map in cache where it can.
        ops::pointwise_mlp(x, self.fc1.params(), self.fc2.params())
    }
}

/// Multiplies row `c` of a row-major `[scale.len(), …]` buffer by `scale[c]`.
pub(crate) fn scale_rows(values: &mut [f32], scale: &[f32]) {
    let per_row = values.len() / scale.len();
    for (row, s) in values.chunks_mut(per_row).zip(scale) {
        row.iter_mut().for_each(|v| *v *= s);
    }
}
