//! A decoding step's attention inputs at batch 1 in one launch: the RMS norm, q/k/v with their
//! biases, the rotary embedding of q and k, and the KV cache write.

use burn::tensor::{DType, Shape, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::gemv::{COLUMNS, MAX_NORMED, RowCube, partial_dot, reduce_slices, stage_norm};
use super::rotary::owned;
use super::{CubeKernel, float};
use crate::ops::RowNorm;

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
    let d = 2 * half;
    let pair = CUBE_POS_X as usize * PAIRS + column % PAIRS;
    let upper = column / PAIRS;
    // Channel `j` of head `head` (q's heads, then k's, then v's).
    let head = pair / half;
    let j = pair % half + upper * half;
    let n = head * d + j;
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
        // This column's and its rotary partner's projections (channel j ± d/2, same head).
        let mut partner_column = column + PAIRS;
        let mut partner = n + half;
        let mut sign = f32::new(-1.0);
        if upper == 1 {
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
            keys[h * keys.stride(1) + at * keys.stride(2) + j * keys.stride(3)] =
                F::cast_from(rotated);
        } else {
            let h = (n - nq - nk) / d;
            values[h * values.stride(1) + at * values.stride(2) + j * values.stride(3)] =
                F::cast_from(y);
        }
    }
}

/// A decoding step's attention inputs at batch 1, in one launch: `x` `[1, 1, in]` (the layer's
/// input row, normalised first with `norm`), projected by `weights` `[in, q]`, `[in, kv]`,
/// `[in, kv]` (burn's `[in, out]`, any strides) plus `biases` (all three or none); q and k
/// rotated at position `start` by `cos`, `sin` `[1, 1, 1, d]`; k and v written into the caches
/// `keys`, `values` `[1, kv_heads, capacity, d]` at `start`. Returns the rotated queries `[1,
/// heads, 1, d]` and the caches (the same buffers when the caller passed the only reference to
/// them, else copies).
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
    weights: [BurnTensor<B, 2>; 3],
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
            &weights,
            biases.as_ref(),
            norm.as_ref(),
            (&cos, &sin),
            &keys,
            &values,
            start
        ),
        "qkv_rotary_append: x {:?}, weights {:?}, tables {:?}, caches {:?} at {start}",
        x.dims(),
        weights.each_ref().map(|w| w.dims()),
        cos.dims(),
        keys.dims(),
    );
    let kernel = QkvRotary {
        bias: biases.is_some(),
        eps: norm.as_ref().map(|n| n.eps),
        start,
    };
    let mut inputs = vec![float(x)];
    inputs.extend(weights.map(float));
    inputs.extend(biases.into_iter().flat_map(|b| b.map(float)));
    inputs.extend([cos, sin, keys, values].map(float));
    inputs.extend(norm.map(|n| float(n.weight)));
    let [q, keys, values] = super::run_all(&kernel, inputs)
        .try_into()
        .unwrap_or_else(|_| unreachable!("three outputs"));
    (q, keys, values)
}

/// Whether [`qkv_rotary_append`] takes these tensors: `x` `[1, 1, in]`; weights `[in, heads·d]`,
/// `[in, kv_heads·d]` twice; biases `[heads·d]`, `[kv_heads·d]` twice; a norm weight `[in]`
/// with `in` ≤ 4096; tables `[1, 1, 1, d]`; caches `[1, kv_heads, capacity, d]` with `start <
/// capacity`; `d` a multiple of 16; one float type.
#[allow(clippy::too_many_arguments)]
pub fn qkv_rotary_append_fits<B: Backend>(
    x: &BurnTensor<B, 3>,
    [wq, wk, wv]: &[BurnTensor<B, 2>; 3],
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
    let (nq, nk) = (wq.dims()[1], wk.dims()[1]);
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && [wq, wk, wv].iter().all(|w| w.dtype() == dtype)
        && [cos, sin, keys, values].iter().all(|t| t.dtype() == dtype)
        && (b, n, cb) == (1, 1, 1)
        && d > 0
        && d % (2 * PAIRS) == 0
        && nq > 0
        && nq % d == 0
        && nk == kv_heads * d
        && wq.dims()[0] == d_in
        && wk.dims() == [d_in, nk]
        && wv.dims() == [d_in, nk]
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

/// Inputs `[x, wq, wk, wv, (bq, bk, bv)?, cos, sin, keys, values, norm weight?]`; outputs
/// `[q rotated, keys, values]`.
#[derive(Debug, Clone, Copy)]
struct QkvRotary {
    bias: bool,
    /// The norm's ε where the row is normalised first.
    eps: Option<f64>,
    start: usize,
}

impl CubeKernel for QkvRotary {
    const NAME: &'static str = "vlm_qkv_rotary_append";

    fn output_shapes(&self, inputs: &[Shape]) -> Vec<Shape> {
        let tables = if self.bias { 7 } else { 4 };
        let d = inputs[tables].dims::<4>()[3];
        let nq = inputs[1].dims::<2>()[1];
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
        let mut inputs = inputs.into_iter();
        let mut next = || inputs.next().expect("qkv_rotary_append's inputs");
        let x = next();
        let [wq, wk, wv] = [next(), next(), next()];
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
        let width = wq.meta.shape()[1] + 2 * wk.meta.shape()[1];
        let k_len = x.meta.shape()[2];
        let RowCube {
            slices,
            k_major,
            cube_dim,
        } = RowCube::of(&wq);
        let dtype = q_out.dtype.into();
        // SAFETY: `qkv_rotary_append` checked the shapes (`qkv_rotary_append_fits`): the
        // width is a multiple of 16 (heads of `d`, a multiple of 16), so every cube's columns
        // and their rotary partners lie inside one head of q, k or v; a thread reads weight rows
        // below `in`, columns below their width, the biases and tables at its channel, x and
        // the norm weight below `in` (at most `MAX_NORMED`, the staging buffer's length), and
        // writes q below its size and the caches at position `start < capacity`.
        unsafe {
            qkv_rotary_kernel::launch_unchecked::<R>(
                &x.client,
                CubeCount::Static((width / COLUMNS) as u32, 1, 1),
                cube_dim,
                x.clone().into_tensor_arg(),
                wq.into_tensor_arg(),
                wk.into_tensor_arg(),
                wv.into_tensor_arg(),
                bq.into_tensor_arg(),
                bk.into_tensor_arg(),
                bv.into_tensor_arg(),
                norm_weight.into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                q_out.clone().into_tensor_arg(),
                keys.clone().into_tensor_arg(),
                values.clone().into_tensor_arg(),
                self.eps.unwrap_or(0.0) as f32,
                self.start as u32,
                self.bias,
                self.eps.is_some(),
                if self.eps.is_some() { k_len } else { 1 },
                d / 2,
                k_major,
                slices,
                slices.trailing_zeros() as usize,
                (COLUMNS * slices).trailing_zeros() as usize,
                dtype,
            )
        };
        vec![q_out, keys, values]
    }
}
