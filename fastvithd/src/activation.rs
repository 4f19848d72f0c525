use burn::tensor::activation;
use burn::tensor::{DType, FloatDType, Tensor, backend::Backend};

/// GELU (erf form) evaluated in f32 and rounded once to the input's type, as PyTorch evaluates
/// it for f16/bf16 tensors. burn's `gelu` rounds after each of its steps (a division, erf, an
/// add and two products) at the tensor's precision; under fusion the casts join the same kernel.
pub(crate) fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match x.dtype() {
        DType::F16 | DType::BF16 => {
            let dtype = x.dtype();
            activation::gelu(x.cast(FloatDType::F32)).cast(dtype)
        }
        _ => activation::gelu(x),
    }
}
