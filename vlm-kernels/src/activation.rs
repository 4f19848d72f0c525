//! The models' activations as PyTorch evaluates them, on every backend.
//!
//! At f16/bf16 each is evaluated in f32 and rounded once: burn's `gelu` and `silu` round after
//! each of their steps at the tensor's precision (under fusion the casts join the same kernel).
//! At f32 on burn's `flex` CPU backend (with this crate's `flex` feature) they run as one
//! parallel, vectorised pass ([`crate::flex`]) instead of flex's single-threaded libm loop.

use burn::tensor::{DType, FloatDType, Tensor, activation, backend::Backend};

/// GELU (erf form), any shape.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match crate::flex::gelu(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    in_f32(x, activation::gelu)
}

/// SiLU, `x·σ(x)`, any shape.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    in_f32(x, activation::silu)
}

/// SwiGLU's product `silu(gate) · up`, two tensors of one shape.
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let (gate, up) = match crate::flex::swiglu(gate, up) {
        Ok(product) => return product,
        Err(inputs) => inputs,
    };
    silu(gate) * up
}

/// `f(x)`, through f32 when `x` is f16 or bf16.
fn in_f32<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    match x.dtype() {
        dtype @ (DType::F16 | DType::BF16) => f(x.cast(FloatDType::F32)).cast(dtype),
        _ => f(x),
    }
}
