use burn::tensor::{Tensor, backend::Backend};

use crate::quant::QuantizedMatrix;

/// `x · Wᵀ` for `x` `[…, cols]` and a quantized `W` `[rows, cols]` → `[…, rows]`.
///
/// On flex at f32 straight from the packed words ([`crate::flex::quantized_matmul`]: no
/// dequantized copy of the matrix), a decoding step's rows rounded to int8 first where the
/// matrix says so ([`crate::quant::Activations::Int8`]); elsewhere the matrix is dequantized by
/// burn's ops for the product (a decoding step's rows on the CubeCL backends take the row ops,
/// [`super::qkv_rotary_append`], [`super::norm_swiglu`], [`super::linear_residual`],
/// [`super::norm_project`], whose kernels read the packed words).
pub fn quantized_matmul<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: &QuantizedMatrix<B>,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match crate::flex::quantized_matmul(x, w) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let dims = x.dims();
    let dtype = x.dtype();
    let cols = dims[D - 1];
    let m: usize = dims[..D - 1].iter().product();
    let y = x
        .reshape([m, cols])
        .matmul(super::cast(w.dequantize(), dtype).transpose());
    let mut shape = dims;
    shape[D - 1] = w.rows();
    y.reshape(shape)
}
