//! The models' activations as PyTorch evaluates them, and the casts around f32 islands.
//!
//! At f16/bf16 each activation is evaluated in f32 and rounded once: burn's `gelu` and `silu`
//! round after each of their steps at the tensor's precision (under fusion the casts join the
//! same kernel). At f32 on flex they run as one parallel, vectorised pass ([`crate::flex`])
//! where flex evaluates libm one element at a time on one thread.

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

/// `x` in f32: `x` itself when it is f32 already (on the fusion backends a cast to its own type
/// is still an operation).
pub fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    cast(x, DType::F32)
}

/// `x` in `dtype` (a float type): `x` itself when it has that type already.
///
/// # Panics
/// When `dtype` is not a float type.
pub fn cast<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        return x;
    }
    let to = match dtype {
        DType::F64 => FloatDType::F64,
        DType::F32 => FloatDType::F32,
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        other => panic!("cast to {other:?}: not a float type"),
    };
    x.cast(to)
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
