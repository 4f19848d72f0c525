//! FastVLM's slow ops on burn's `flex` CPU backend as parallel, vectorised loops.
//!
//! flex 0.21 evaluates `gelu` and `silu` one element at a time on one thread, through libm's
//! branchy scalar `erff` and `expf`, so FastViTHD's ConvFFN GELUs cost more than its 1×1
//! convolutions and the prefill's `silu(gate) · up` is a large share of a layer (BENCHMARKS.md,
//! `encoder_probe`). Here every element goes through the same branch-free arithmetic
//! ([`math`]), which the compiler vectorises (8 lanes where the CPU has AVX2), in chunks spread
//! over rayon's threads.
//!
//! The same holds for whole ops: [`attention`] (flex: one head at a time on one thread),
//! [`depthwise_conv2d`] (flex: one output pixel at a time), [`conv2d_patches`] (the stem's
//! dense convolution from 3 channels) and [`pointwise_mlp`] (ConvFFN without its wide map in
//! memory), each split into tasks over rayon's threads that call the `gemm` crate (flex's own
//! matrix product) single-threaded on strided blocks. [`rotary_append`] rotates and writes
//! the KV cache in place (flex 0.21's `slice_assign` copies the whole cache per write).
//!
//! Each op takes f32 tensors and hands its inputs back (`Err`) on another backend, dtype or
//! shape, so that its caller in [`crate::ops`] goes on with burn's ops.

mod attention;
mod conv;
mod depthwise;
mod math;
mod mlp;
mod quant;
mod quant_i8;
mod rotary;

pub use attention::attention;
pub use conv::{DenseConv, conv2d_patches};
pub use depthwise::depthwise_conv2d;
pub use mlp::{PointwiseMlp, pointwise_mlp};
pub use quant::{MATVEC_ROWS, quantized_matmul, quantized_rows};
pub use rotary::rotary_append;

use burn::backend::flex::{FlexTensor, Layout};
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

/// A matrix read in place: its first element and the steps between rows and between columns.
#[derive(Clone, Copy)]
struct Matrix {
    ptr: *const f32,
    row: isize,
    col: isize,
}

impl Matrix {
    /// The same values read the other way round.
    fn transposed(self) -> Self {
        Self {
            row: self.col,
            col: self.row,
            ..self
        }
    }

    /// Rows `row` apart, columns adjacent.
    fn rows(ptr: *const f32, row: usize) -> Self {
        Self {
            ptr,
            row: row as isize,
            col: 1,
        }
    }
}

/// An input's first element and strides, read in place.
struct Operand {
    /// Keeps the data alive (and `ptr` valid) while the tasks read it.
    _tensor: FlexTensor,
    ptr: *const f32,
    strides: [isize; 4],
}

// SAFETY: the tasks only read through `ptr`, which `_tensor` keeps alive.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    /// Negative strides (flipped views) are made contiguous first: `gemm` walks any sign, but
    /// the offsets below are computed for the non-negative case.
    fn of(t: FlexTensor) -> Self {
        let t = if t.layout().strides().iter().all(|&s| s >= 0) {
            t
        } else {
            t.to_contiguous()
        };
        let layout = t.layout();
        let strides: [isize; 4] = layout.strides().try_into().expect("a 4-d tensor");
        let ptr = t.storage::<f32>()[layout.start_offset()..].as_ptr();
        Self {
            _tensor: t,
            ptr,
            strides,
        }
    }

    /// The matrix over the last two axes at `index` (its first element): rows along axis 2,
    /// columns along axis 3.
    fn at(&self, index: [usize; 4]) -> Matrix {
        let offset: isize = index
            .iter()
            .zip(self.strides)
            .map(|(&i, s)| i as isize * s)
            .sum();
        Matrix {
            // SAFETY: callers pass indices inside the tensor's shape.
            ptr: unsafe { self.ptr.offset(offset) },
            row: self.strides[2],
            col: self.strides[3],
        }
    }
}

/// `dst = scale · lhs · rhs` for `lhs` `m × k` and `rhs` `k × n` into `dst` (`m` rows of `n`
/// adjacent values, `dst_row` apart), with `bias[i]` added to row `i` when given; on the
/// calling thread (the ops' tasks are the parallelism), through `gemm`, flex's own product.
///
/// # Safety
/// Every element the shapes and strides address lies inside its buffer, and `dst` overlaps
/// neither operand.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_row: usize,
    lhs: Matrix,
    rhs: Matrix,
    scale: f32,
    bias: Option<&[f32]>,
) {
    if let Some(bias) = bias {
        for (i, &b) in bias.iter().enumerate().take(m) {
            // SAFETY: row i of dst, by the caller's contract.
            unsafe { std::slice::from_raw_parts_mut(dst.add(i * dst_row), n) }.fill(b);
        }
    }
    // SAFETY: the caller's contract; gemm computes dst = 1·dst + scale·lhs·rhs when it reads
    // dst (the bias) and dst = scale·lhs·rhs otherwise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row as isize,
            bias.is_some(),
            lhs.ptr,
            lhs.col,
            lhs.row,
            rhs.ptr,
            rhs.col,
            rhs.row,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// An f32 tensor of `shape` over `values`, row-major.
fn output<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    let shape = burn::tensor::Shape::from(shape.to_vec());
    output_laid_out(values, Layout::contiguous(shape))
}

/// An f32 tensor over `values` read through `layout`.
fn output_laid_out<B: Backend, const D: usize>(values: Vec<f32>, layout: Layout) -> Tensor<B, D> {
    let bytes = burn::tensor::Bytes::from_elems(values);
    tensor(FlexTensor::new(bytes, layout, DType::F32))
}

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

/// What the ops' tests share.
#[cfg(test)]
mod testing {
    use burn::backend::Flex;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, Tensor, activation};

    /// Normal values with standard deviation `std`.
    pub fn random<const D: usize>(shape: [usize; D], std: f64) -> Tensor<Flex, D> {
        Tensor::random(shape, Distribution::Normal(0.0, std), &Default::default())
    }

    /// burn's `conv2d` with the same stride and padding on both axes, then GELU when `gelu`.
    pub fn burn_conv(
        x: Tensor<Flex, 4>,
        weight: Tensor<Flex, 4>,
        bias: Tensor<Flex, 1>,
        [stride, padding, groups]: [usize; 3],
        gelu: bool,
    ) -> Tensor<Flex, 4> {
        let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], groups);
        let y = conv2d(x, weight, Some(bias), options);
        if gelu { activation::gelu(y) } else { y }
    }

    /// `‖a − b‖ / ‖b‖`.
    pub fn rel_l2<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        let d = (a - b.clone()).powi_scalar(2).sum().into_scalar().sqrt();
        d / b.powi_scalar(2).sum().into_scalar().sqrt()
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation;

    use super::testing::{random, rel_l2};

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
