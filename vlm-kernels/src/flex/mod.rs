//! FastVLM's slow ops on burn's `flex` CPU backend as parallel, vectorised loops.
//!
//! flex 0.21 evaluates `gelu` and `silu` one element at a time on one thread, through libm's
//! branchy scalar `erff` and `expf`. At 1024² FastViTHD's ConvFFN GELUs took more time than
//! its 1×1 convolutions (98 ms for the 6.3 M elements of one stage-2 block against 43 ms for
//! each of its two convolutions, `cargo run --release -p benches --example encoder_probe`), and
//! the 0.5B prefill of 280 positions spent 18 ms a layer on `silu(gate) · up`. Here every element
//! goes through the same branch-free arithmetic ([`math`]), which the compiler vectorises (8
//! lanes where the CPU has AVX2), in chunks spread over rayon's threads.
//!
//! The same holds for whole ops: [`attention`] (flex: one head at a time on one thread),
//! [`depthwise_conv2d`] (flex: one output pixel at a time), [`conv2d_patches`] (the stem's
//! dense convolution from 3 channels) and [`pointwise_mlp`] (ConvFFN without its wide map in
//! memory), each split into tasks over rayon's threads that call the `gemm` crate (flex's own
//! matrix product) single-threaded on strided blocks.
//!
//! Each op takes f32 tensors and hands its inputs back (`Err`) on another backend, dtype or
//! shape, so that the caller goes on with burn's ops.

mod attention;
mod conv;
mod depthwise;
mod math;
mod mlp;

pub use attention::attention;
pub use conv::{DenseConv, conv2d_patches};
pub use depthwise::depthwise_conv2d;
pub use mlp::{PointwiseMlp, pointwise_mlp};

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive, backend::Backend};
use rayon::prelude::*;

use crate::{cast, is};

/// Elements per task: large enough that rayon's scheduling is noise, small enough to spread a
/// 64×64×384 map over the cores.
const CHUNK: usize = 1 << 14;

/// Whether `B`'s float tensors are flex's (burn's `Flex` backend, no autodiff in front).
pub fn on_flex<B: Backend>() -> bool {
    is::<B::FloatTensorPrimitive, FlexTensor>()
}

/// GELU (erf form), `0.5·x·(1 + erf(x/√2))`, of an f32 tensor on flex; `x` back otherwise.
///
/// In place when `x` is contiguous and holds its data alone.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !on_flex::<B>() || x.dtype() != DType::F32 {
        return Err(x);
    }
    let mut t = contiguous(flex(x));
    let values = values_mut(&mut t);
    if values.len() < 2 * CHUNK {
        math::gelu_slice(values);
    } else {
        values.par_chunks_mut(CHUNK).for_each(math::gelu_slice);
    }
    Ok(tensor(t))
}

/// SwiGLU's product `silu(gate) · up` of two f32 tensors of one shape on flex; both back
/// otherwise.
///
/// Written over `gate`'s data when it is contiguous and held by `gate` alone.
#[allow(clippy::type_complexity)]
pub fn swiglu<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    let f32s = gate.dtype() == DType::F32 && up.dtype() == DType::F32;
    if !on_flex::<B>() || !f32s || gate.dims() != up.dims() {
        return Err((gate, up));
    }
    let mut g = contiguous(flex(gate));
    let u = contiguous(flex(up));
    let n = u.layout().num_elements();
    let up = &u.storage::<f32>()[..n];
    let gate = values_mut(&mut g);
    if n < 2 * CHUNK {
        math::swiglu_slice(gate, up);
    } else {
        gate.par_chunks_mut(CHUNK)
            .zip(up.par_chunks(CHUNK))
            .for_each(|(g, u)| math::swiglu_slice(g, u));
    }
    Ok(tensor(g))
}

fn flex<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
    cast(x.into_primitive().tensor())
}

fn tensor<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(cast(t)))
}

/// An output buffer that parallel tasks write in disjoint parts.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

impl SharedMut {
    /// Through a method, so that closures capture the `Sync` wrapper rather than its field.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the ops that make one write disjoint parts of the buffer (each says which) and
// keep the buffer alive until their tasks are done.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// `t` with its elements in row-major order from the start of its storage.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    }
}

/// The elements of a [`contiguous`] f32 tensor, copied first where another tensor shares them.
fn values_mut(t: &mut FlexTensor) -> &mut [f32] {
    let n = t.layout().num_elements();
    &mut t.storage_mut::<f32>()[..n]
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor, activation};

    fn rel_l2(a: Tensor<Flex, 3>, b: Tensor<Flex, 3>) -> f32 {
        let d = (a - b.clone()).powi_scalar(2).sum().into_scalar().sqrt();
        d / b.powi_scalar(2).sum().into_scalar().sqrt()
    }

    fn random(shape: [usize; 3], std: f64) -> Tensor<Flex, 3> {
        Tensor::random(shape, Distribution::Normal(0.0, std), &Default::default())
    }

    /// burn's own GELU to within f32 rounding, in parallel chunks (more than `2 · CHUNK`
    /// elements) and in one, on a view (transposed) and on data another tensor still holds,
    /// which must stay as it was.
    #[test]
    fn gelu_matches_burn() {
        for shape in [[3, 70, 400], [1, 7, 9]] {
            let x = random(shape, 3.0);
            let before = x.to_data();
            let got = super::gelu(x.clone()).expect("flex f32");
            assert!(rel_l2(got.clone(), activation::gelu(x.clone())) < 1e-6);
            x.to_data().assert_eq(&before, true);
            let moved = (got - x.clone()).abs().mean().into_scalar();
            assert!(moved > 0.1, "GELU left its input as it was ({moved})");
            let view = x.clone().swap_dims(1, 2);
            let got = super::gelu(view.clone()).expect("flex f32");
            assert!(rel_l2(got, activation::gelu(view)) < 1e-6);
            x.to_data().assert_eq(&before, true);
        }
    }

    /// burn's `silu(gate) · up` to within f32 rounding, each input moving the output, shared
    /// and viewed inputs left as they were; other dtypes and mismatched shapes come back.
    #[test]
    fn swiglu_matches_burn() {
        for shape in [[2, 50, 700], [1, 3, 11]] {
            let (gate, up) = (random(shape, 3.0), random(shape, 1.0));
            let before = (gate.to_data(), up.to_data());
            let want = activation::silu(gate.clone()) * up.clone();
            let got = super::swiglu(gate.clone(), up.clone()).expect("flex f32");
            assert!(rel_l2(got.clone(), want) < 1e-6);
            gate.to_data().assert_eq(&before.0, true);
            up.to_data().assert_eq(&before.1, true);
            let other = super::swiglu(gate.clone(), up.clone() * 2.0).expect("flex f32");
            assert!(rel_l2(other, got.clone()) > 0.5);
            let other = super::swiglu(gate.clone() + 1.0, up.clone()).expect("flex f32");
            assert!(rel_l2(other, got) > 0.05);

            let (g, u) = (gate.clone().swap_dims(0, 2), up.clone().swap_dims(0, 2));
            let want = activation::silu(g.clone()) * u.clone();
            assert!(rel_l2(super::swiglu(g, u).expect("flex f32"), want) < 1e-6);
        }
        let (gate, up) = (random([1, 2, 3], 1.0), random([1, 3, 2], 1.0));
        assert!(super::swiglu(gate, up).is_err());
        let half = random([1, 2, 3], 1.0).cast(burn::tensor::FloatDType::F16);
        assert!(super::gelu(half).is_err());
    }
}
