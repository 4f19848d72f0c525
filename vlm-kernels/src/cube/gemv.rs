//! Linear layers of a single row (a decoding step at batch 1) in one launch each: several
//! projections of the same input side by side, SwiGLU's two, the RMS norm before them and a
//! residual added on the way out.

use burn::tensor::{DType, Shape, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::{CubeKernel, float, run};
use crate::ops::RowNorm;

/// Output columns per cube: burn's `[in, out]` weights put columns next to each other, so the
/// 16 threads of a column block read 32 contiguous bytes of bf16 per input row (a full memory
/// sector).
pub(crate) const COLUMNS: usize = 16;

/// Input element `k`: `x`'s own, or (with `norm`) the normalised row the cube staged.
#[cube]
fn load_x<F: Float>(
    x: &Tensor<F>,
    staged: &SharedMemory<f32>,
    k: usize,
    #[comptime] norm: bool,
) -> f32 {
    if norm {
        staged[k]
    } else {
        f32::cast_from(x[k * x.stride(2)])
    }
}

/// `Σ_k x[k]·w[k, column]` over this thread's slice `slice, slice + slices, …` of the input
/// axis, four rows per iteration with their own accumulators so that four loads are in flight
/// (one row at a time, a thread would wait out the memory latency at every row).
#[cube]
pub(crate) fn partial_dot<F: Float>(
    x: &Tensor<F>,
    staged: &SharedMemory<f32>,
    w: &Tensor<F>,
    column: usize,
    slice: usize,
    #[comptime] slices: usize,
    #[comptime] norm: bool,
) -> f32 {
    let k_len = w.shape(0);
    let col = column * w.stride(1);
    let row = w.stride(0);
    let mut a0 = f32::new(0.0);
    let mut a1 = f32::new(0.0);
    let mut a2 = f32::new(0.0);
    let mut a3 = f32::new(0.0);
    let mut k = slice;
    while k + 3 * slices < k_len {
        let w0 = f32::cast_from(w[k * row + col]);
        let w1 = f32::cast_from(w[(k + slices) * row + col]);
        let w2 = f32::cast_from(w[(k + 2 * slices) * row + col]);
        let w3 = f32::cast_from(w[(k + 3 * slices) * row + col]);
        a0 += load_x::<F>(x, staged, k, norm) * w0;
        a1 += load_x::<F>(x, staged, k + slices, norm) * w1;
        a2 += load_x::<F>(x, staged, k + 2 * slices, norm) * w2;
        a3 += load_x::<F>(x, staged, k + 3 * slices, norm) * w3;
        k += 4 * slices;
    }
    while k < k_len {
        a0 += load_x::<F>(x, staged, k, norm) * f32::cast_from(w[k * row + col]);
        k += slices;
    }
    (a0 + a1) + (a2 + a3)
}

/// Sums each column's `slices` partial values (`value` from thread `(column, slice)`) into
/// `sums[column]`, a tree in shared memory: `slices` is a power of two, `levels` its log2, so the
/// halving widths are compile-time. Ends with the cube in step.
#[cube]
pub(crate) fn reduce_slices(
    sums: &mut SharedMemory<f32>,
    value: f32,
    column: usize,
    slice: usize,
    #[comptime] columns: usize,
    #[comptime] slices: usize,
    #[comptime] levels: usize,
) {
    sums[slice * columns + column] = value;
    sync_cube();
    #[unroll]
    for level in 0..levels {
        let width = slices >> (level + 1);
        if slice < width {
            sums[slice * columns + column] += sums[(slice + width) * columns + column];
        }
        sync_cube();
    }
}

/// Stages `x` normalised (`x / √(mean(x²) + ε)` in f32, rounded to `F`, times `weight`, rounded
/// to `F`: `rms_norm`'s rounding) in `staged`, all `units` threads of the cube sharing the sum of
/// squares (in `sums`, a tree of `unit_levels` levels) and the writes. Ends with the cube in step,
/// so `sums` is free again.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_norm<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    staged: &mut SharedMemory<f32>,
    sums: &mut SharedMemory<f32>,
    eps: f32,
    unit: usize,
    #[comptime] units: usize,
    #[comptime] unit_levels: usize,
) {
    let k_len = x.shape(2);
    let xs = x.stride(2);
    let mut squares = f32::new(0.0);
    let mut c = unit;
    while c < k_len {
        let v = f32::cast_from(x[c * xs]);
        squares += v * v;
        c += units;
    }
    sums[unit] = squares;
    sync_cube();
    #[unroll]
    for level in 0..unit_levels {
        let width = units >> (level + 1);
        if unit < width {
            sums[unit] += sums[unit + width];
        }
        sync_cube();
    }
    let rms = Sqrt::sqrt(sums[0] / f32::cast_from(k_len) + eps);
    let mut c = unit;
    while c < k_len {
        let normed = F::cast_from(f32::cast_from(x[c * xs]) / rms);
        let w = f32::cast_from(weight[c * weight.stride(0)]);
        staged[c] = f32::cast_from(F::cast_from(f32::cast_from(normed) * w));
        c += units;
    }
    // Also orders every read of `sums[0]` before the caller reuses `sums`.
    sync_cube();
}

/// One cube per `columns` output columns, `slices` threads per column (as many as the device
/// allows in a cube: the input axis split finely keeps enough loads in flight). Thread
/// `(column, slice)` accumulates its slice of the dot product in f32, the cube sums the slices
/// in shared memory (a tree), and the column's thread of slice 0 adds the bias, applies SwiGLU,
/// adds the residual and writes.
///
/// Output column `n` of `parts` projections side by side belongs to `w0` below `w0`'s width,
/// then to `w1`, then `w2`. With `swiglu`, column `n` is `silu(x·w0[:, n]) · (x·w1[:, n])`.
///
/// With `norm`, the cube first normalises `x` as `rms_norm` does (`x / √(mean(x²) + ε)` in
/// f32, rounded to `F`, times `norm_weight` rounded to `F`) into shared memory: every cube
/// reads all of `x` anyway, and the norm's own launch goes.
///
/// `k_major` puts consecutive threads on consecutive input rows of one column (weights stored
/// `[out, in]`, read through a transposed view: a tied LM head), where otherwise they take
/// consecutive columns of one row (burn's `[in, out]`): either way a warp reads contiguous bytes.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gemv_kernel<F: Float>(
    x: &Tensor<F>,
    w0: &Tensor<F>,
    w1: &Tensor<F>,
    w2: &Tensor<F>,
    b0: &Tensor<F>,
    b1: &Tensor<F>,
    b2: &Tensor<F>,
    residual: &Tensor<F>,
    norm_weight: &Tensor<F>,
    output: &mut Tensor<F>,
    eps: f32,
    #[comptime] parts: usize,
    #[comptime] bias: bool,
    #[comptime] swiglu: bool,
    #[comptime] add_residual: bool,
    #[comptime] norm: bool,
    #[comptime] staged_len: usize,
    #[comptime] k_major: bool,
    #[comptime] columns: usize,
    #[comptime] slices: usize,
    #[comptime] levels: usize,
    #[comptime] unit_levels: usize,
    #[define(F)] _dtype: StorageType,
) {
    let mut column = UNIT_POS_X as usize;
    let mut slice = UNIT_POS_Y as usize;
    if k_major {
        column = UNIT_POS_Y as usize;
        slice = UNIT_POS_X as usize;
    }
    let n = CUBE_POS_X as usize * columns + column;
    let total = output.shape(2);
    let n0 = w0.shape(1);
    let mut n1 = 0usize;
    if parts > 1 {
        n1 = w1.shape(1);
    }

    let mut sums = SharedMemory::<f32>::new(columns * slices);
    let mut gates = SharedMemory::<f32>::new(columns * slices);
    let mut staged = SharedMemory::<f32>::new(staged_len);
    if norm {
        stage_norm::<F>(
            x,
            norm_weight,
            &mut staged,
            &mut sums,
            eps,
            slice * columns + column,
            columns * slices,
            unit_levels,
        );
    }

    let mut acc = f32::new(0.0);
    let mut gate = f32::new(0.0);
    if n < total {
        if swiglu {
            gate = partial_dot::<F>(x, &staged, w0, n, slice, slices, norm);
            acc = partial_dot::<F>(x, &staged, w1, n, slice, slices, norm);
        } else if n < n0 {
            acc = partial_dot::<F>(x, &staged, w0, n, slice, slices, norm);
        } else if n < n0 + n1 {
            acc = partial_dot::<F>(x, &staged, w1, n - n0, slice, slices, norm);
        } else {
            acc = partial_dot::<F>(x, &staged, w2, n - n0 - n1, slice, slices, norm);
        }
    }
    reduce_slices(&mut sums, acc, column, slice, columns, slices, levels);
    if swiglu {
        reduce_slices(&mut gates, gate, column, slice, columns, slices, levels);
    }

    if slice == 0 && n < total {
        let mut y = sums[column];
        let g = gates[column];
        if bias {
            if n < n0 {
                y += f32::cast_from(b0[n * b0.stride(0)]);
            } else if n < n0 + n1 {
                y += f32::cast_from(b1[(n - n0) * b1.stride(0)]);
            } else {
                y += f32::cast_from(b2[(n - n0 - n1) * b2.stride(0)]);
            }
        }
        if swiglu {
            // silu(g)·y, silu(g) = g·sigmoid(g).
            y *= g / (1.0 + Exp::exp(-g));
        }
        if add_residual {
            y += f32::cast_from(residual[n * residual.stride(2)]);
        }
        output[n] = F::cast_from(y);
    }
}

/// What [`linear_row`] computes from one input row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowProjection {
    /// `x·w₀ + b₀ | x·w₁ + b₁ | …`: up to three projections of `x` side by side (Qwen2's q, k
    /// and v), with biases for all of them or none.
    Concat,
    /// `silu(x·w₀) · (x·w₁)`: SwiGLU's gate and up projections, no biases.
    SwiGlu,
}

/// Longest input row a [`RowNorm`] takes: the cube stages the normalised row in shared memory
/// (16 KiB of f32; Qwen2's hidden sizes are 896 to 3584).
pub(crate) const MAX_NORMED: usize = 4096;

/// One row `x` `[1, 1, in]` through linear layers with burn's `[in, out]` weights (any
/// strides), in one launch, f32 accumulation: see [`RowProjection`]. With `norm`, `x` is
/// normalised first; with `residual` `[1, 1, out]`, it is added to the result. Output
/// `[1, 1, out]`, contiguous.
///
/// A decoding step at batch 1 is a row times each weight matrix: burn 0.21 runs each projection
/// as its own matmul, and the norm, the bias, SwiGLU's product and the residual as further
/// launches.
///
/// # Panics
/// Unless [`super::available`] holds for `B` and `Kernel::Gemv`, and [`linear_row_fits`] for
/// the tensors.
pub fn linear_row<B: Backend>(
    x: BurnTensor<B, 3>,
    weights: &[BurnTensor<B, 2>],
    biases: &[BurnTensor<B, 1>],
    projection: RowProjection,
    norm: Option<RowNorm<B>>,
    residual: Option<BurnTensor<B, 3>>,
) -> BurnTensor<B, 3> {
    assert!(
        linear_row_fits(
            &x,
            weights,
            biases,
            projection,
            norm.as_ref(),
            residual.as_ref()
        ),
        "linear_row: x {:?}, weights {:?}, biases {:?}, {projection:?}",
        x.dims(),
        weights.iter().map(|w| w.dims()).collect::<Vec<_>>(),
        biases.iter().map(|b| b.dims()).collect::<Vec<_>>(),
    );
    let kernel = Gemv {
        parts: weights.len(),
        bias: !biases.is_empty(),
        swiglu: projection == RowProjection::SwiGlu,
        residual: residual.is_some(),
        eps: norm.as_ref().map(|n| n.eps),
    };
    let mut inputs = vec![float(x)];
    inputs.extend(weights.iter().map(|w| float(w.clone())));
    inputs.extend(biases.iter().map(|b| float(b.clone())));
    inputs.extend(residual.map(float));
    inputs.extend(norm.map(|n| float(n.weight)));
    run(&kernel, inputs)
}

/// Whether [`linear_row`] takes these tensors: `x` `[1, 1, in]`; one to three weights `[in,
/// out_i]` (exactly two for SwiGLU, of one width); biases `[out_i]` for every weight or none
/// (none for SwiGLU); a norm weight `[in]` with `in` ≤ 4096; a residual `[1, 1, Σ out_i]`
/// (SwiGLU: `[1, 1, out]`); one float type.
pub fn linear_row_fits<B: Backend>(
    x: &BurnTensor<B, 3>,
    weights: &[BurnTensor<B, 2>],
    biases: &[BurnTensor<B, 1>],
    projection: RowProjection,
    norm: Option<&RowNorm<B>>,
    residual: Option<&BurnTensor<B, 3>>,
) -> bool {
    let [b, n, d_in] = x.dims();
    let dtype = x.dtype();
    let float = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
    let widths: Vec<usize> = weights.iter().map(|w| w.dims()[1]).collect();
    let (shape_ok, out) = match (projection, widths.as_slice()) {
        (RowProjection::Concat, _) => ((1..=3).contains(&widths.len()), widths.iter().sum()),
        (RowProjection::SwiGlu, &[gate, up]) => (gate == up && biases.is_empty(), gate),
        (RowProjection::SwiGlu, _) => (false, 0),
    };
    float
        && b == 1
        && n == 1
        && shape_ok
        && out > 0
        && weights
            .iter()
            .all(|w| w.dims()[0] == d_in && w.dtype() == dtype)
        && (biases.is_empty()
            || (biases.len() == weights.len()
                && biases
                    .iter()
                    .zip(&widths)
                    .all(|(b, &w)| b.dims() == [w] && b.dtype() == dtype)))
        && norm.is_none_or(|norm| {
            norm.weight.dims() == [d_in] && norm.weight.dtype() == dtype && d_in <= MAX_NORMED
        })
        && residual.is_none_or(|r| r.dims() == [1, 1, out] && r.dtype() == dtype)
}

/// The cube shape of the row kernels for a first weight `weight`.
pub(crate) struct RowCube {
    /// Threads per output column: the most a cube may have (a power of two, at most 1024) over
    /// [`COLUMNS`].
    pub slices: usize,
    /// Weights stored `[out, in]` (a transposed view: contiguous along the input axis), so the
    /// threads go along the input axis.
    pub k_major: bool,
    pub cube_dim: CubeDim,
}

impl RowCube {
    pub fn of<R: CubeRuntime>(weight: &CubeTensor<R>) -> Self {
        let units = weight
            .client
            .properties()
            .hardware
            .max_units_per_cube
            .clamp(64, 1024) as usize;
        let slices = (1usize << units.ilog2()) / COLUMNS;
        let strides = weight.meta.strides();
        let k_major = strides[0] == 1 && strides[1] != 1;
        let cube_dim = if k_major {
            CubeDim::new_2d(slices as u32, COLUMNS as u32)
        } else {
            CubeDim::new_2d(COLUMNS as u32, slices as u32)
        };
        Self {
            slices,
            k_major,
            cube_dim,
        }
    }
}

/// Inputs `[x, w…, b…, residual?, norm weight?]` as [`linear_row`] takes them.
#[derive(Debug, Clone, Copy)]
struct Gemv {
    parts: usize,
    bias: bool,
    swiglu: bool,
    residual: bool,
    /// The norm's ε where the row is normalised first.
    eps: Option<f64>,
}

impl Gemv {
    fn width(&self, inputs: &[Shape]) -> usize {
        let weights = &inputs[1..1 + self.parts];
        if self.swiglu {
            weights[0].dims::<2>()[1]
        } else {
            weights.iter().map(|w| w.dims::<2>()[1]).sum()
        }
    }
}

impl CubeKernel for Gemv {
    const NAME: &'static str = "vlm_linear_row";

    fn output_shapes(&self, inputs: &[Shape]) -> Vec<Shape> {
        vec![Shape::new([1, 1, self.width(inputs)])]
    }

    fn launch<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let shapes: Vec<Shape> = inputs.iter().map(|t| t.meta.shape().clone()).collect();
        let width = self.width(&shapes);
        let mut inputs = inputs.into_iter();
        let x = inputs.next().expect("linear_row takes x");
        let weights: Vec<CubeTensor<R>> = inputs.by_ref().take(self.parts).collect();
        let biases: Vec<CubeTensor<R>> = if self.bias {
            inputs.by_ref().take(self.parts).collect()
        } else {
            Vec::new()
        };
        let residual = if self.residual { inputs.next() } else { None };
        let norm_weight = inputs.next();
        // Absent operands are bound to `x`: the kernel's compile-time flags never read them.
        let weight = |i: usize| weights.get(i).unwrap_or(&x).clone();
        let bias = |i: usize| biases.get(i).unwrap_or(&x).clone();
        let output = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::new([1, 1, width]),
            x.dtype,
        );
        let RowCube {
            slices,
            k_major,
            cube_dim,
        } = RowCube::of(&weights[0]);
        let dtype = output.dtype.into();
        let k_len = x.meta.shape()[2];
        // SAFETY: `linear_row` checked the shapes (`linear_row_fits`): a thread reads weight
        // rows below their `in` (the shape of x's last axis) and columns below their width, the
        // bias and residual at its own output column, x and the norm weight below `in` (at most
        // `MAX_NORMED`, the staging buffer's length), and writes only columns below the
        // output's width.
        unsafe {
            gemv_kernel::launch_unchecked::<R>(
                &output.client,
                CubeCount::Static(width.div_ceil(COLUMNS) as u32, 1, 1),
                cube_dim,
                x.clone().into_tensor_arg(),
                weight(0).into_tensor_arg(),
                weight(1).into_tensor_arg(),
                weight(2).into_tensor_arg(),
                bias(0).into_tensor_arg(),
                bias(1).into_tensor_arg(),
                bias(2).into_tensor_arg(),
                residual.unwrap_or_else(|| x.clone()).into_tensor_arg(),
                norm_weight.unwrap_or_else(|| x.clone()).into_tensor_arg(),
                output.clone().into_tensor_arg(),
                self.eps.unwrap_or(0.0) as f32,
                self.parts,
                self.bias,
                self.swiglu,
                self.residual,
                self.eps.is_some(),
                if self.eps.is_some() { k_len } else { 1 },
                k_major,
                COLUMNS,
                slices,
                slices.trailing_zeros() as usize,
                (COLUMNS * slices).trailing_zeros() as usize,
                dtype,
            )
        };
        vec![output]
    }
}
