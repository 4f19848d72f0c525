//! Linear layers of a single row (a decoding step at batch 1) in one launch each: several
//! projections of the same input side by side, SwiGLU's two, the RMS norm before them and a
//! residual added on the way out.

use burn::tensor::{DType, Shape, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::{CubeKernel, float, run, words};
use crate::ops::RowNorm;
use crate::quant::{Quantization, QuantizedMatrix};

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

/// `Σ_k x[k]·w[row, k]` over this thread's words `slice, slice + slices, …` of a quantized
/// row (`packed` `[out, in·bits/32]`, `scales`, `offsets` `[out, in/group_size]`, MLX's
/// `w = scale·q + bias`): each value dequantized as the matrix's own dequantization rounds it
/// (a GPU step is bound by reading the words; the arithmetic per value is free), so the sum
/// differs from dequantize-then-product's only in its order. Consecutive threads read
/// consecutive words of the row.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantized_partial_dot<F: Float>(
    x: &Tensor<F>,
    staged: &SharedMemory<f32>,
    packed: &Tensor<u32>,
    scales: &Tensor<F>,
    offsets: &Tensor<F>,
    row: usize,
    slice: usize,
    #[comptime] slices: usize,
    #[comptime] norm: bool,
    #[comptime] bits: usize,
    #[comptime] group_size: usize,
) -> f32 {
    let per = comptime!(32 / bits);
    let words_per_group = comptime!(group_size / (32 / bits));
    let mask = comptime!(((1u64 << bits) - 1) as u32);
    let words = packed.shape(1);
    let word_row = row * packed.stride(0);
    let word_step = packed.stride(1);
    let scale_row = row * scales.stride(0);
    let offset_row = row * offsets.stride(0);
    let mut acc = f32::new(0.0);
    let mut w = slice;
    while w < words {
        let word = packed[word_row + w * word_step];
        let g = w / words_per_group;
        let scale = f32::cast_from(scales[scale_row + g * scales.stride(1)]);
        let offset = f32::cast_from(offsets[offset_row + g * offsets.stride(1)]);
        #[unroll]
        for j in 0..per {
            let shift = u32::cast_from(j * bits);
            let q = f32::cast_from((word >> shift) & mask);
            acc += load_x::<F>(x, staged, w * per + j, norm) * (q * scale + offset);
        }
        w += slices;
    }
    acc
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
        finish_row::<F>(
            sums[column],
            gates[column],
            n,
            n0,
            n1,
            b0,
            b1,
            b2,
            residual,
            output,
            bias,
            swiglu,
            add_residual,
        );
    }
}

/// Output column `n` from its reduced dot product `y` (and SwiGLU's gate `g`): the bias of its
/// projection (`n0`, `n1` the first two projections' widths), SwiGLU's product, the residual,
/// rounded to `F` into `output`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn finish_row<F: Float>(
    y: f32,
    g: f32,
    n: usize,
    n0: usize,
    n1: usize,
    b0: &Tensor<F>,
    b1: &Tensor<F>,
    b2: &Tensor<F>,
    residual: &Tensor<F>,
    output: &mut Tensor<F>,
    #[comptime] bias: bool,
    #[comptime] swiglu: bool,
    #[comptime] add_residual: bool,
) {
    let mut y = y;
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

/// [`gemv_kernel`] over quantized weights (`p*` packed words, `s*` scales, `o*` offsets, MLX's
/// `[out, …]` layouts): thread `(column, slice)` takes words `slice, slice + slices, …` of its
/// output's row (consecutive threads on consecutive words), the rest as there.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn quantized_gemv_kernel<F: Float>(
    x: &Tensor<F>,
    p0: &Tensor<u32>,
    s0: &Tensor<F>,
    o0: &Tensor<F>,
    p1: &Tensor<u32>,
    s1: &Tensor<F>,
    o1: &Tensor<F>,
    p2: &Tensor<u32>,
    s2: &Tensor<F>,
    o2: &Tensor<F>,
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
    #[comptime] bits: usize,
    #[comptime] group_size: usize,
    #[comptime] columns: usize,
    #[comptime] slices: usize,
    #[comptime] levels: usize,
    #[comptime] unit_levels: usize,
    #[define(F)] _dtype: StorageType,
) {
    let column = UNIT_POS_Y as usize;
    let slice = UNIT_POS_X as usize;
    let n = CUBE_POS_X as usize * columns + column;
    let total = output.shape(2);
    let n0 = p0.shape(0);
    let mut n1 = 0usize;
    if parts > 1 {
        n1 = p1.shape(0);
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
            gate = quantized_partial_dot::<F>(
                x, &staged, p0, s0, o0, n, slice, slices, norm, bits, group_size,
            );
            acc = quantized_partial_dot::<F>(
                x, &staged, p1, s1, o1, n, slice, slices, norm, bits, group_size,
            );
        } else if n < n0 {
            acc = quantized_partial_dot::<F>(
                x, &staged, p0, s0, o0, n, slice, slices, norm, bits, group_size,
            );
        } else if n < n0 + n1 {
            acc = quantized_partial_dot::<F>(
                x,
                &staged,
                p1,
                s1,
                o1,
                n - n0,
                slice,
                slices,
                norm,
                bits,
                group_size,
            );
        } else {
            acc = quantized_partial_dot::<F>(
                x,
                &staged,
                p2,
                s2,
                o2,
                n - n0 - n1,
                slice,
                slices,
                norm,
                bits,
                group_size,
            );
        }
    }
    reduce_slices(&mut sums, acc, column, slice, columns, slices, levels);
    if swiglu {
        reduce_slices(&mut gates, gate, column, slice, columns, slices, levels);
    }

    if slice == 0 && n < total {
        finish_row::<F>(
            sums[column],
            gates[column],
            n,
            n0,
            n1,
            b0,
            b1,
            b2,
            residual,
            output,
            bias,
            swiglu,
            add_residual,
        );
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

/// The weight matrices of a row kernel, all of one kind.
pub enum RowWeights<'a, B: Backend> {
    /// burn's `[in, out]`, any strides (a transposed `[out, in]` view too).
    Dense(&'a [BurnTensor<B, 2>]),
    /// `[out, in]` quantized, all by one scheme, read straight from their packed words.
    Quantized(&'a [QuantizedMatrix<B>]),
}

impl<B: Backend> Clone for RowWeights<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for RowWeights<'_, B> {}

impl<B: Backend> RowWeights<'_, B> {
    /// How many matrices.
    pub fn len(&self) -> usize {
        match self {
            Self::Dense(w) => w.len(),
            Self::Quantized(q) => q.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each matrix's `[in, out]`.
    pub(crate) fn dims(&self) -> Vec<[usize; 2]> {
        match self {
            Self::Dense(w) => w.iter().map(|w| w.dims()).collect(),
            Self::Quantized(q) => q.iter().map(|q| [q.cols(), q.rows()]).collect(),
        }
    }

    /// The quantization scheme, for quantized weights.
    pub(crate) fn scheme(&self) -> Option<Quantization> {
        match self {
            Self::Dense(_) => None,
            Self::Quantized(q) => q.first().map(|q| q.scheme()),
        }
    }

    /// Whether the kernels read them at float type `dtype`: dense weights of that dtype;
    /// quantized ones of one scheme the kernels take, `u32` words `[out, in·bits/32]` and
    /// scales and offsets of that dtype.
    pub(crate) fn of_type(&self, dtype: DType) -> bool {
        match self {
            Self::Dense(w) => w.iter().all(|w| w.dtype() == dtype),
            Self::Quantized(q) => q.iter().all(|q| {
                let scheme = q.scheme();
                let [rows, words] = q.packed.dims();
                scheme.check().is_ok()
                    && Some(scheme) == self.scheme()
                    && q.packed.val().dtype() == DType::U32
                    && rows == q.rows()
                    && words * scheme.per_word() == q.cols()
                    && q.biases.dims() == q.scales.dims()
                    && q.scales.val().dtype() == dtype
                    && q.biases.val().dtype() == dtype
            }),
        }
    }

    /// The kernel's inputs: each matrix, or each one's words, scales and offsets.
    pub(crate) fn primitives(&self) -> Vec<B::FloatTensorPrimitive> {
        match self {
            Self::Dense(w) => w.iter().map(|w| float(w.clone())).collect(),
            Self::Quantized(q) => q
                .iter()
                .flat_map(|q| {
                    [
                        words(q.packed.val()),
                        float(q.scales.val()),
                        float(q.biases.val()),
                    ]
                })
                .collect(),
        }
    }
}

/// Longest input row a [`RowNorm`] takes: the cube stages the normalised row in shared memory
/// (16 KiB of f32; Qwen2's hidden sizes are 896 to 3584).
pub(crate) const MAX_NORMED: usize = 4096;

/// One row `x` `[1, 1, in]` through linear layers (burn's `[in, out]` weights, any strides, or
/// quantized `[out, in]` ones read from their packed words), in one launch, f32 accumulation:
/// see [`RowProjection`]. With `norm`, `x` is normalised first; with `residual` `[1, 1, out]`,
/// it is added to the result. Output `[1, 1, out]`, contiguous.
///
/// A decoding step at batch 1 is a row times each weight matrix: burn 0.21 runs each projection
/// as its own matmul (a quantized one dequantized first), and the norm, the bias, SwiGLU's
/// product and the residual as further launches.
///
/// # Panics
/// Unless [`super::available`] holds for `B` and `Kernel::Gemv`, and [`linear_row_fits`] for
/// the tensors.
pub fn linear_row<B: Backend>(
    x: BurnTensor<B, 3>,
    weights: RowWeights<'_, B>,
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
        "linear_row: x {:?}, weights {:?} ({:?}), biases {:?}, {projection:?}",
        x.dims(),
        weights.dims(),
        weights.scheme(),
        biases.iter().map(|b| b.dims()).collect::<Vec<_>>(),
    );
    let kernel = Gemv {
        parts: weights.len(),
        bias: !biases.is_empty(),
        swiglu: projection == RowProjection::SwiGlu,
        residual: residual.is_some(),
        eps: norm.as_ref().map(|n| n.eps),
        scheme: weights.scheme(),
    };
    let mut inputs = vec![float(x)];
    inputs.extend(weights.primitives());
    inputs.extend(biases.iter().map(|b| float(b.clone())));
    inputs.extend(residual.map(float));
    inputs.extend(norm.map(|n| float(n.weight)));
    run(&kernel, inputs)
}

/// Whether [`linear_row`] takes these tensors: `x` `[1, 1, in]`; one to three weights of `in`
/// inputs and `out_i` outputs (exactly two for SwiGLU, of one width), read at `x`'s float type
/// ([`RowWeights`]); biases `[out_i]` for every weight or none (none for SwiGLU); a norm weight
/// `[in]` with `in` ≤ 4096; a residual `[1, 1, Σ out_i]` (SwiGLU: `[1, 1, out]`); one float
/// type.
pub fn linear_row_fits<B: Backend>(
    x: &BurnTensor<B, 3>,
    weights: RowWeights<'_, B>,
    biases: &[BurnTensor<B, 1>],
    projection: RowProjection,
    norm: Option<&RowNorm<B>>,
    residual: Option<&BurnTensor<B, 3>>,
) -> bool {
    let [b, n, d_in] = x.dims();
    let dtype = x.dtype();
    let float = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
    let dims = weights.dims();
    let widths: Vec<usize> = dims.iter().map(|d| d[1]).collect();
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
        && dims.iter().all(|d| d[0] == d_in)
        && weights.of_type(dtype)
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

/// The cube shape of the row kernels.
pub(crate) struct RowCube {
    /// Threads per output column: the most a cube may have (a power of two, at most 1024) over
    /// [`COLUMNS`].
    pub slices: usize,
    /// Threads go along the input axis: weights stored `[out, in]` (a transposed view,
    /// contiguous along the input axis, or quantized rows of words).
    pub k_major: bool,
    pub cube_dim: CubeDim,
}

impl RowCube {
    /// For a first weight `weight`, read as it is laid out.
    pub fn of<R: CubeRuntime>(weight: &CubeTensor<R>) -> Self {
        let strides = weight.meta.strides();
        Self::new(weight, strides[0] == 1 && strides[1] != 1)
    }

    /// On `tensor`'s device, threads along the input axis (`k_major`) or the output axis.
    pub fn new<R: CubeRuntime>(tensor: &CubeTensor<R>, k_major: bool) -> Self {
        let units = tensor
            .client
            .properties()
            .hardware
            .max_units_per_cube
            .clamp(64, 1024) as usize;
        let slices = (1usize << units.ilog2()) / COLUMNS;
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

/// Inputs `[x, w…, b…, residual?, norm weight?]` as [`linear_row`] takes them, where a
/// quantized `w` is three inputs (words, scales, offsets).
#[derive(Debug, Clone, Copy)]
struct Gemv {
    parts: usize,
    bias: bool,
    swiglu: bool,
    residual: bool,
    /// The norm's ε where the row is normalised first.
    eps: Option<f64>,
    /// The weights' scheme where they are quantized.
    scheme: Option<Quantization>,
}

impl Gemv {
    /// Inputs per weight.
    fn stride(&self) -> usize {
        if self.scheme.is_some() { 3 } else { 1 }
    }

    fn width(&self, inputs: &[Shape]) -> usize {
        let stride = self.stride();
        let widths = inputs[1..1 + self.parts * stride]
            .iter()
            .step_by(stride)
            .map(|w| match self.scheme {
                Some(_) => w.dims::<2>()[0],
                None => w.dims::<2>()[1],
            });
        if self.swiglu {
            widths.take(1).sum()
        } else {
            widths.sum()
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
        let weights: Vec<CubeTensor<R>> =
            inputs.by_ref().take(self.parts * self.stride()).collect();
        let biases: Vec<CubeTensor<R>> = if self.bias {
            inputs.by_ref().take(self.parts).collect()
        } else {
            Vec::new()
        };
        let residual = if self.residual { inputs.next() } else { None };
        let norm_weight = inputs.next();
        // Absent operands are bound to `x` (to the first weight's words for absent words): the
        // kernel's compile-time flags never read them.
        let weight = |i: usize| weights.get(i).unwrap_or(&x).clone().into_tensor_arg();
        let bias = |i: usize| biases.get(i).unwrap_or(&x).clone().into_tensor_arg();
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
        } = match self.scheme {
            Some(_) => RowCube::new(&weights[0], true),
            None => RowCube::of(&weights[0]),
        };
        let dtype = output.dtype.into();
        let k_len = x.meta.shape()[2];
        let count = CubeCount::Static(width.div_ceil(COLUMNS) as u32, 1, 1);
        let residual = residual.unwrap_or_else(|| x.clone()).into_tensor_arg();
        let norm_weight = norm_weight.unwrap_or_else(|| x.clone()).into_tensor_arg();
        let eps = self.eps.unwrap_or(0.0) as f32;
        let staged_len = if self.eps.is_some() { k_len } else { 1 };
        let levels = slices.trailing_zeros() as usize;
        let unit_levels = (COLUMNS * slices).trailing_zeros() as usize;
        match self.scheme {
            // SAFETY: `linear_row` checked the shapes (`linear_row_fits`, `RowWeights::of_type`):
            // a thread reads words below its row's `in·bits/32` and the scales and offsets of
            // their groups, rows below each matrix's `out`, the bias and residual at its own
            // output column, x and the norm weight below `in` (at most `MAX_NORMED`, the staging
            // buffer's length), and writes only columns below the output's width.
            Some(scheme) => unsafe {
                let words = |i: usize| weights.get(i).unwrap_or(&weights[0]).clone();
                quantized_gemv_kernel::launch_unchecked::<R>(
                    &output.client,
                    count,
                    cube_dim,
                    x.clone().into_tensor_arg(),
                    words(0).into_tensor_arg(),
                    weight(1),
                    weight(2),
                    words(3).into_tensor_arg(),
                    weight(4),
                    weight(5),
                    words(6).into_tensor_arg(),
                    weight(7),
                    weight(8),
                    bias(0),
                    bias(1),
                    bias(2),
                    residual,
                    norm_weight,
                    output.clone().into_tensor_arg(),
                    eps,
                    self.parts,
                    self.bias,
                    self.swiglu,
                    self.residual,
                    self.eps.is_some(),
                    staged_len,
                    scheme.bits,
                    scheme.group_size,
                    COLUMNS,
                    slices,
                    levels,
                    unit_levels,
                    dtype,
                )
            },
            // SAFETY: `linear_row` checked the shapes (`linear_row_fits`): a thread reads
            // weight rows below their `in` (the shape of x's last axis) and columns below their
            // width, the bias and residual at its own output column, x and the norm weight below
            // `in` (at most `MAX_NORMED`, the staging buffer's length), and writes only columns
            // below the output's width.
            None => unsafe {
                gemv_kernel::launch_unchecked::<R>(
                    &output.client,
                    count,
                    cube_dim,
                    x.clone().into_tensor_arg(),
                    weight(0),
                    weight(1),
                    weight(2),
                    bias(0),
                    bias(1),
                    bias(2),
                    residual,
                    norm_weight,
                    output.clone().into_tensor_arg(),
                    eps,
                    self.parts,
                    self.bias,
                    self.swiglu,
                    self.residual,
                    self.eps.is_some(),
                    staged_len,
                    k_major,
                    COLUMNS,
                    slices,
                    levels,
                    unit_levels,
                    dtype,
                )
            },
        };
        vec![output]
    }
}
