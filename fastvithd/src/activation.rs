use burn::tensor::activation;
use burn::tensor::{DType, FloatDType, Tensor, backend::Backend};

/// GELU (erf form) as FastViTHD's reference evaluates it, any shape.
///
/// For f16/bf16 tensors in f32, rounded once to the input's type, as PyTorch evaluates it:
/// burn's `gelu` rounds after each of its steps (a division, erf, an add and two products) at
/// the tensor's precision; under fusion the casts join the same kernel. For f32 tensors on
/// burn's `flex` CPU backend (with this crate's `flex` feature) in one parallel pass over the
/// data instead of flex's single-threaded scalar `erf` (`vlm_kernels::flex::gelu`).
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match vlm_kernels::flex::gelu(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    match x.dtype() {
        DType::F16 | DType::BF16 => {
            let dtype = x.dtype();
            activation::gelu(x.cast(FloatDType::F32)).cast(dtype)
        }
        _ => activation::gelu(x),
    }
}
