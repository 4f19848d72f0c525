//! A decoding step's attention inputs at batch 1 in one launch: the RMS norm, q/k/v with their
//! biases, the rotary embedding of q and k, and the KV cache write.

use burn::tensor::{DType, Shape, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::gemv::{
    COLUMNS, MAX_NORMED, RowCube, RowWeights, partial_dot, quantized_partial_dot, reduce_slices,
    stage_norm,
};
use super::rotary::owned;
use super::{CubeKernel, float};
use crate::ops::RowNorm;
use crate::quant::Quantization;

/// Pairs of rotary partners per cube: a cube's [`COLUMNS`] columns are channels `i` and
/// `i + d/2` of 8 pairs, so the rotation reads both from the cube's shared memory.
const PAIRS: usize = COLUMNS / 2;

/// `linear_row`'s cube (threads `(column, slice)`, f32 partial dots reduced over slices in
/// shared memory, the norm staged first) with the columns of q | k | v taken in rotary pairs:
/// cube `c`'s column `t` is channel `i + (t / 8)·d/2` of head `h`, where `h·d/2 + i = 8c +
/// t % 8`. Slice 0 adds the bias, rounds to `F` as the projection's output would be, rotates q
/// and k by the tables (`x·cos + rotate_half(x)·sin` with the partner column's value), and
/// writes q to `q_out`, k and v into the caches at position `start`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn qkv_rotary_kernel<F: Float>(
    x: &Tensor<F>,
    wq: &Tensor<F>,
    wk: &Tensor<F>,
    wv: &Tensor<F>,
    bq: &Tensor<F>,
    bk: &Tensor<F>,
    bv: &Tensor<F>,
    norm_weight: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    q_out: &mut Tensor<F>,
    keys: &mut Tensor<F>,
    values: &mut Tensor<F>,
    eps: f32,
    start: u32,
    #[comptime] bias: bool,
    #[comptime] norm: bool,
    #[comptime] staged_len: usize,
    #[comptime] half: usize,
    #[comptime] k_major: bool,
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
    let columns = COLUMNS;
    let n = rotary_column(column, half);
    let j = n % (2 * half);
    let nq = wq.shape(1);
    let nk = wk.shape(1);
    let total = nq + 2 * nk;

    let mut sums = SharedMemory::<f32>::new(columns * slices);
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
    if n < total {
        if n < nq {
            acc = partial_dot::<F>(x, &staged, wq, n, slice, slices, norm);
        } else if n < nq + nk {
            acc = partial_dot::<F>(x, &staged, wk, n - nq, slice, slices, norm);
        } else {
            acc = partial_dot::<F>(x, &staged, wv, n - nq - nk, slice, slices, norm);
        }
    }
    reduce_slices(&mut sums, acc, column, slice, columns, slices, levels);

    if slice == 0 && n < total {
        finish_qkv::<F>(
            &sums, column, n, j, nq, nk, half, bq, bk, bv, cos, sin, q_out, keys, values, start,
            bias,
        );
    }
}

/// The output column (of q | k | v) that a cube's `column` computes: cube `c`'s column `t` is
/// channel `i + (t / 8)·d/2` of head `h`, where `h·d/2 + i = 8c + t % 8`, so a column and its
/// rotary partner sit in one cube. Returns `h·d + channel`.
#[cube]
fn rotary_column(column: usize, #[comptime] half: usize) -> usize {
    let pair = CUBE_POS_X as usize * PAIRS + column % PAIRS;
    let upper = column / PAIRS;
    let head = pair / half;
    head * 2 * half + pair % half + upper * half
}

/// Output column `n` (channel `j` of its head) from the reduced dot products in `sums`: the
/// bias, rounded to `F` as the projection's output would be, q and k rotated by the tables
/// (`x·cos + rotate_half(x)·sin` with the partner column's value), q written to `q_out`, k and
/// v into the caches at position `start`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn finish_qkv<F: Float>(
    sums: &SharedMemory<f32>,
    column: usize,
    n: usize,
    j: usize,
    nq: usize,
    nk: usize,
    #[comptime] half: usize,
    bq: &Tensor<F>,
    bk: &Tensor<F>,
    bv: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    q_out: &mut Tensor<F>,
    keys: &mut Tensor<F>,
    values: &mut Tensor<F>,
    start: u32,
    #[comptime] bias: bool,
) {
    let d = 2 * half;
    // This column's and its rotary partner's projections (channel j ± d/2, same head).
    let mut partner_column = column + PAIRS;
    let mut partner = n + half;
    let mut sign = f32::new(-1.0);
    if column >= PAIRS {
        partner_column = column - PAIRS;
        partner = n - half;
        sign = f32::new(1.0);
    }
    let mut y = sums[column];
    let mut yp = sums[partner_column];
    if bias {
        if n < nq {
            y += f32::cast_from(bq[n * bq.stride(0)]);
            yp += f32::cast_from(bq[partner * bq.stride(0)]);
        } else if n < nq + nk {
            y += f32::cast_from(bk[(n - nq) * bk.stride(0)]);
            yp += f32::cast_from(bk[(partner - nq) * bk.stride(0)]);
        } else {
            y += f32::cast_from(bv[(n - nq - nk) * bv.stride(0)]);
        }
    }
    // The projections' outputs at the model's precision, as the unfused path has them.
    let y = f32::cast_from(F::cast_from(y));
    let yp = f32::cast_from(F::cast_from(yp));
    let c = f32::cast_from(cos[j * cos.stride(3)]);
    let s = f32::cast_from(sin[j * sin.stride(3)]);
    let rotated = y * c + sign * yp * s;
    let at = start as usize;
    if n < nq {
        q_out[n] = F::cast_from(rotated);
    } else if n < nq + nk {
        let h = (n - nq) / d;
        keys[h * keys.stride(1) + at * keys.stride(2) + j * keys.stride(3)] = F::cast_from(rotated);
    } else {
        let h = (n - nq - nk) / d;
        values[h * values.stride(1) + at * values.stride(2) + j * values.stride(3)] =
            F::cast_from(y);
    }
}

/// [`qkv_rotary_kernel`] over quantized weights (`p*` packed words, `s*` scales, `o*` offsets,
/// MLX's `[out, …]` layouts): thread `(column, slice)` takes words `slice, slice + slices, …` of
/// its channel's row, the rest as there.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn quantized_qkv_rotary_kernel<F: Float>(
    x: &Tensor<F>,
    pq: &Tensor<u32>,
    sq: &Tensor<F>,
    oq: &Tensor<F>,
    pk: &Tensor<u32>,
    sk: &Tensor<F>,
    ok: &Tensor<F>,
    pv: &Tensor<u32>,
    sv: &Tensor<F>,
    ov: &Tensor<F>,
    bq: &Tensor<F>,
    bk: &Tensor<F>,
    bv: &Tensor<F>,
    norm_weight: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    q_out: &mut Tensor<F>,
    keys: &mut Tensor<F>,
    values: &mut Tensor<F>,
    eps: f32,
    start: u32,
    #[comptime] bias: bool,
    #[comptime] norm: bool,
    #[comptime] staged_len: usize,
    #[comptime] half: usize,
    #[comptime] bits: usize,
    #[comptime] group_size: usize,
    #[comptime] slices: usize,
    #[comptime] levels: usize,
    #[comptime] unit_levels: usize,
    #[define(F)] _dtype: StorageType,
) {
    let column = UNIT_POS_Y as usize;
    let slice = UNIT_POS_X as usize;
    let columns = COLUMNS;
    let n = rotary_column(column, half);
    let j = n % (2 * half);
    let nq = pq.shape(0);
    let nk = pk.shape(0);
    let total = nq + 2 * nk;

    let mut sums = SharedMemory::<f32>::new(columns * slices);
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
    if n < total {
        if n < nq {
            acc = quantized_partial_dot::<F>(
                x, &staged, pq, sq, oq, n, slice, slices, norm, bits, group_size,
            );
        } else if n < nq + nk {
            acc = quantized_partial_dot::<F>(
                x,
                &staged,
                pk,
                sk,
                ok,
                n - nq,
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
                pv,
                sv,
                ov,
                n - nq - nk,
                slice,
                slices,
                norm,
                bits,
                group_size,
            );
        }
    }
    reduce_slices(&mut sums, acc, column, slice, columns, slices, levels);

    if slice == 0 && n < total {
        finish_qkv::<F>(
            &sums, column, n, j, nq, nk, half, bq, bk, bv, cos, sin, q_out, keys, values, start,
            bias,
        );
    }
}

/// A decoding step's attention inputs at batch 1, in one launch: `x` `[1, 1, in]` (the layer's
/// input row, normalised first with `norm`), projected by three `weights` with `q`, `kv` and
/// `kv` outputs (burn's `[in, out]`, any strides, or quantized `[out, in]` read from their
/// words) plus `biases` (all three or none); q and k rotated at position `start` by `cos`,
/// `sin` `[1, 1, 1, d]`; k and v written into the caches `keys`, `values` `[1, kv_heads,
/// capacity, d]` at `start`. Returns the rotated queries `[1, heads, 1, d]` and the caches (the
/// same buffers when the caller passed the only reference to them, else copies).
///
/// Unfused that is the norm, the projections and the rotary kernel (`linear_row` and
/// `rotary_append`): three launches.
///
/// # Panics
/// Unless [`super::available`] holds for `B` and `Kernel::QkvRotary`, and
/// [`qkv_rotary_append_fits`] for the tensors.
#[allow(clippy::too_many_arguments)]
pub fn qkv_rotary_append<B: Backend>(
    x: BurnTensor<B, 3>,
    weights: RowWeights<'_, B>,
    biases: Option<[BurnTensor<B, 1>; 3]>,
    norm: Option<RowNorm<B>>,
    (cos, sin): (BurnTensor<B, 4>, BurnTensor<B, 4>),
    keys: BurnTensor<B, 4>,
    values: BurnTensor<B, 4>,
    start: usize,
) -> (BurnTensor<B, 4>, BurnTensor<B, 4>, BurnTensor<B, 4>) {
    assert!(
        qkv_rotary_append_fits(
            &x,
            weights,
            biases.as_ref(),
            norm.as_ref(),
            (&cos, &sin),
            &keys,
            &values,
            start
        ),
        "qkv_rotary_append: x {:?}, weights {:?} ({:?}), tables {:?}, caches {:?} at {start}",
        x.dims(),
        weights.dims(),
        weights.scheme(),
        cos.dims(),
        keys.dims(),
    );
    let kernel = QkvRotary {
        bias: biases.is_some(),
        eps: norm.as_ref().map(|n| n.eps),
        start,
        scheme: weights.scheme(),
    };
    let mut inputs = vec![float(x)];
    inputs.extend(weights.primitives());
    inputs.extend(biases.into_iter().flat_map(|b| b.map(float)));
    inputs.extend([cos, sin, keys, values].map(float));
    inputs.extend(norm.map(|n| float(n.weight)));
    let [q, keys, values] = super::run_all(&kernel, inputs)
        .try_into()
        .unwrap_or_else(|_| unreachable!("three outputs"));
    (q, keys, values)
}

/// Whether [`qkv_rotary_append`] takes these tensors: `x` `[1, 1, in]`; three weights of `in`
/// inputs and `heads·d`, `kv_heads·d`, `kv_heads·d` outputs, read at `x`'s float type
/// ([`RowWeights`]); biases `[heads·d]`, `[kv_heads·d]` twice; a norm weight `[in]` with `in` ≤
/// 4096; tables `[1, 1, 1, d]`; caches `[1, kv_heads, capacity, d]` with `start < capacity`;
/// `d` a multiple of 16; one float type.
#[allow(clippy::too_many_arguments)]
pub fn qkv_rotary_append_fits<B: Backend>(
    x: &BurnTensor<B, 3>,
    weights: RowWeights<'_, B>,
    biases: Option<&[BurnTensor<B, 1>; 3]>,
    norm: Option<&RowNorm<B>>,
    (cos, sin): (&BurnTensor<B, 4>, &BurnTensor<B, 4>),
    keys: &BurnTensor<B, 4>,
    values: &BurnTensor<B, 4>,
    start: usize,
) -> bool {
    let [b, n, d_in] = x.dims();
    let [cb, kv_heads, capacity, d] = keys.dims();
    let dtype = x.dtype();
    let Ok([[q_in, nq], [k_in, nk], [v_in, nv]]) = <[[usize; 2]; 3]>::try_from(weights.dims())
    else {
        return false;
    };
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && weights.of_type(dtype)
        && [cos, sin, keys, values].iter().all(|t| t.dtype() == dtype)
        && (b, n, cb) == (1, 1, 1)
        && d > 0
        && d % (2 * PAIRS) == 0
        && nq > 0
        && nq % d == 0
        && nk == kv_heads * d
        && nv == nk
        && [q_in, k_in, v_in] == [d_in; 3]
        && biases.is_none_or(|[bq, bk, bv]| {
            bq.dims() == [nq]
                && bk.dims() == [nk]
                && bv.dims() == [nk]
                && [bq, bk, bv].iter().all(|t| t.dtype() == dtype)
        })
        && norm.is_none_or(|norm| {
            norm.weight.dims() == [d_in] && norm.weight.dtype() == dtype && d_in <= MAX_NORMED
        })
        && cos.dims() == [1, 1, 1, d]
        && sin.dims() == [1, 1, 1, d]
        && values.dims() == keys.dims()
        && start < capacity
}

/// Inputs `[x, wq, wk, wv, (bq, bk, bv)?, cos, sin, keys, values, norm weight?]`, where a
/// quantized `w` is three inputs (words, scales, offsets); outputs `[q rotated, keys, values]`.
#[derive(Debug, Clone, Copy)]
struct QkvRotary {
    bias: bool,
    /// The norm's ε where the row is normalised first.
    eps: Option<f64>,
    start: usize,
    /// The weights' scheme where they are quantized.
    scheme: Option<Quantization>,
}

impl QkvRotary {
    /// Inputs per weight.
    fn stride(&self) -> usize {
        if self.scheme.is_some() { 3 } else { 1 }
    }

    /// Where the tables start among the inputs.
    fn tables(&self) -> usize {
        1 + 3 * self.stride() + if self.bias { 3 } else { 0 }
    }
}

impl CubeKernel for QkvRotary {
    const NAME: &'static str = "vlm_qkv_rotary_append";

    fn output_shapes(&self, inputs: &[Shape]) -> Vec<Shape> {
        let tables = self.tables();
        let d = inputs[tables].dims::<4>()[3];
        let nq = match self.scheme {
            Some(_) => inputs[1].dims::<2>()[0],
            None => inputs[1].dims::<2>()[1],
        };
        vec![
            Shape::new([1, nq / d, 1, d]),
            inputs[tables + 2].clone(),
            inputs[tables + 3].clone(),
        ]
    }

    fn launch<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let shapes: Vec<Shape> = inputs.iter().map(|t| t.meta.shape().clone()).collect();
        let [q_shape, _, _]: [Shape; 3] = self
            .output_shapes(&shapes)
            .try_into()
            .unwrap_or_else(|_| unreachable!("three outputs"));
        let nq = q_shape.dims::<4>()[1] * q_shape.dims::<4>()[3];
        let mut inputs = inputs.into_iter();
        let mut next = || inputs.next().expect("qkv_rotary_append's inputs");
        let x = next();
        let weights: Vec<CubeTensor<R>> = (0..3 * self.stride()).map(|_| next()).collect();
        let [bq, bk, bv] = if self.bias {
            [next(), next(), next()]
        } else {
            [x.clone(), x.clone(), x.clone()]
        };
        let [cos, sin, keys, values] = [next(), next(), next(), next()];
        let norm_weight = if self.eps.is_some() {
            next()
        } else {
            x.clone()
        };
        let (keys, values) = (owned(keys), owned(values));
        let q_out = empty_device_dtype(x.client.clone(), x.device.clone(), q_shape, x.dtype);
        let d = cos.meta.shape()[3];
        let width = nq + 2 * keys.meta.shape()[1] * d;
        let k_len = x.meta.shape()[2];
        let RowCube {
            slices,
            k_major,
            cube_dim,
        } = match self.scheme {
            Some(_) => RowCube::new(&weights[0], true),
            None => RowCube::of(&weights[0]),
        };
        let dtype = q_out.dtype.into();
        let count = CubeCount::Static((width / COLUMNS) as u32, 1, 1);
        let arg = |i: usize| weights[i].clone().into_tensor_arg();
        let eps = self.eps.unwrap_or(0.0) as f32;
        let staged_len = if self.eps.is_some() { k_len } else { 1 };
        let levels = slices.trailing_zeros() as usize;
        let unit_levels = (COLUMNS * slices).trailing_zeros() as usize;
        match self.scheme {
            // SAFETY: `qkv_rotary_append` checked the shapes (`qkv_rotary_append_fits`,
            // `RowWeights::of_type`): the width is a multiple of 16 (heads of `d`, a multiple of
            // 16), so every cube's columns and their rotary partners lie inside one head of q, k
            // or v; a thread reads words below its row's `in·bits/32` and the scales and offsets
            // of their groups, rows below each matrix's `out`, the biases and tables at its
            // channel, x and the norm weight below `in` (at most `MAX_NORMED`, the staging
            // buffer's length), and writes q below its size and the caches at position `start <
            // capacity`.
            Some(scheme) => unsafe {
                quantized_qkv_rotary_kernel::launch_unchecked::<R>(
                    &x.client,
                    count,
                    cube_dim,
                    x.clone().into_tensor_arg(),
                    arg(0),
                    arg(1),
                    arg(2),
                    arg(3),
                    arg(4),
                    arg(5),
                    arg(6),
                    arg(7),
                    arg(8),
                    bq.into_tensor_arg(),
                    bk.into_tensor_arg(),
                    bv.into_tensor_arg(),
                    norm_weight.into_tensor_arg(),
                    cos.into_tensor_arg(),
                    sin.into_tensor_arg(),
                    q_out.clone().into_tensor_arg(),
                    keys.clone().into_tensor_arg(),
                    values.clone().into_tensor_arg(),
                    eps,
                    self.start as u32,
                    self.bias,
                    self.eps.is_some(),
                    staged_len,
                    d / 2,
                    scheme.bits,
                    scheme.group_size,
                    slices,
                    levels,
                    unit_levels,
                    dtype,
                )
            },
            // SAFETY: `qkv_rotary_append` checked the shapes (`qkv_rotary_append_fits`): the
            // width is a multiple of 16 (heads of `d`, a multiple of 16), so every cube's columns
            // and their rotary partners lie inside one head of q, k or v; a thread reads weight
            // rows below `in`, columns below their width, the biases and tables at its channel, x
            // and the norm weight below `in` (at most `MAX_NORMED`, the staging buffer's length),
            // and writes q below its size and the caches at position `start < capacity`.
            None => unsafe {
                qkv_rotary_kernel::launch_unchecked::<R>(
                    &x.client,
                    count,
                    cube_dim,
                    x.clone().into_tensor_arg(),
                    arg(0),
                    arg(1),
                    arg(2),
                    bq.into_tensor_arg(),
                    bk.into_tensor_arg(),
                    bv.into_tensor_arg(),
                    norm_weight.into_tensor_arg(),
                    cos.into_tensor_arg(),
                    sin.into_tensor_arg(),
                    q_out.clone().into_tensor_arg(),
                    keys.clone().into_tensor_arg(),
                    values.clone().into_tensor_arg(),
                    eps,
                    self.start as u32,
                    self.bias,
                    self.eps.is_some(),
                    staged_len,
                    d / 2,
                    k_major,
                    slices,
                    levels,
                    unit_levels,
                    dtype,
                )
            },
        };
        vec![q_out, keys, values]
    }
}
