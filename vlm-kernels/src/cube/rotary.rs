//! The rotary embedding of new queries and keys and the KV cache write, as one kernel.

use burn::tensor::{DType, Shape, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::{calculate_cube_count_elemwise, prelude::*};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::{CubeKernel, float};

/// Rotates `x`'s channel `i` at position `p` of `[.., n, d]` by the tables: `x·cos +
/// rotate_half(x)·sin` with the half partner read in place.
#[cube]
fn rotated<F: Float>(
    x: &Tensor<F>,
    base: usize,
    i: usize,
    p: usize,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
) -> f32 {
    let half = x.shape(3) / 2;
    let value = f32::cast_from(x[base + i * x.stride(3)]);
    let mut partner = i + half;
    let mut sign = f32::new(-1.0);
    if i >= half {
        partner = i - half;
        sign = f32::new(1.0);
    }
    let rotated = sign * f32::cast_from(x[base + partner * x.stride(3)]);
    let c = f32::cast_from(cos[p * cos.stride(2) + i * cos.stride(3)]);
    let s = f32::cast_from(sin[p * sin.stride(2) + i * sin.stride(3)]);
    value * c + rotated * s
}

/// One thread per element of the new q, k and v: thread `t` below `q`'s size writes the rotated
/// query, the next `k`'s size the rotated keys into the key cache at `start + p`, the rest the
/// values into the value cache.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rotary_append_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    q_out: &mut Tensor<F>,
    keys: &mut Tensor<F>,
    values: &mut Tensor<F>,
    start: u32,
    #[define(F)] _dtype: StorageType,
) {
    let d = q.shape(3);
    let n = q.shape(2);
    let q_len = q_out.len();
    let kv_len = k.shape(0) * k.shape(1) * n * d;
    let mut t = ABSOLUTE_POS;
    if t >= q_len + 2 * kv_len {
        terminate!();
    }
    if t < q_len {
        let i = t % d;
        let p = (t / d) % n;
        let h = (t / (d * n)) % q.shape(1);
        let b = t / (d * n * q.shape(1));
        let base = b * q.stride(0) + h * q.stride(1) + p * q.stride(2);
        q_out[t] = F::cast_from(rotated::<F>(q, base, i, p, cos, sin));
    } else {
        t -= q_len;
        let is_value = t >= kv_len;
        if is_value {
            t -= kv_len;
        }
        let i = t % d;
        let p = (t / d) % n;
        let h = (t / (d * n)) % k.shape(1);
        let b = t / (d * n * k.shape(1));
        let at = start as usize + p;
        if is_value {
            let value = v[b * v.stride(0) + h * v.stride(1) + p * v.stride(2) + i * v.stride(3)];
            values[b * values.stride(0)
                + h * values.stride(1)
                + at * values.stride(2)
                + i * values.stride(3)] = value;
        } else {
            let base = b * k.stride(0) + h * k.stride(1) + p * k.stride(2);
            keys[b * keys.stride(0)
                + h * keys.stride(1)
                + at * keys.stride(2)
                + i * keys.stride(3)] = F::cast_from(rotated::<F>(k, base, i, p, cos, sin));
        }
    }
}

/// Whether [`rotary_append`] takes these tensors: q `[batch, heads, n, d]`, k and v `[batch,
/// kv_heads, n, d]`, tables `[1, 1, n, d]`, caches `[batch, kv_heads, capacity, d]` with
/// `start + n ≤ capacity`, `d` even, one float type.
#[allow(clippy::too_many_arguments)]
pub fn rotary_append_fits<B: Backend>(
    q: &BurnTensor<B, 4>,
    k: &BurnTensor<B, 4>,
    v: &BurnTensor<B, 4>,
    cos: &BurnTensor<B, 4>,
    sin: &BurnTensor<B, 4>,
    keys: &BurnTensor<B, 4>,
    values: &BurnTensor<B, 4>,
    start: usize,
) -> bool {
    let [batch, _, n, d] = q.dims();
    let [kb, kv_heads, kn, kd] = k.dims();
    let [cb, ch, capacity, cd] = keys.dims();
    let dtype = q.dtype();
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && [k, v, cos, sin, keys, values]
            .iter()
            .all(|t| t.dtype() == dtype)
        && d % 2 == 0
        && (kb, kn, kd) == (batch, n, d)
        && v.dims() == k.dims()
        && cos.dims() == [1, 1, n, d]
        && sin.dims() == [1, 1, n, d]
        && (cb, ch, cd) == (batch, kv_heads, d)
        && values.dims() == keys.dims()
        && start + n <= capacity
}

/// The rotary embedding of a layer's new queries and keys, and the KV cache write, in one
/// launch: q `[batch, heads, n, d]`, k and v `[batch, kv_heads, n, d]` (any strides) at
/// positions `start..start + n` with tables `cos`, `sin` `[1, 1, n, d]`; the caches `keys`,
/// `values` `[batch, kv_heads, capacity, d]`. Returns the rotated queries (contiguous) and the
/// caches with the rotated keys and the values written at `start..start + n`: the same buffers
/// when the caller passed the only reference to them, else copies.
///
/// In burn's ops that is four launches or more (two rotations, two slice assignments).
///
/// # Panics
/// Unless [`super::available`] holds for `B` and `Kernel::Rotary`, and [`rotary_append_fits`]
/// for the tensors.
#[allow(clippy::too_many_arguments)]
pub fn rotary_append<B: Backend>(
    q: BurnTensor<B, 4>,
    k: BurnTensor<B, 4>,
    v: BurnTensor<B, 4>,
    cos: BurnTensor<B, 4>,
    sin: BurnTensor<B, 4>,
    keys: BurnTensor<B, 4>,
    values: BurnTensor<B, 4>,
    start: usize,
) -> (BurnTensor<B, 4>, BurnTensor<B, 4>, BurnTensor<B, 4>) {
    assert!(
        rotary_append_fits(&q, &k, &v, &cos, &sin, &keys, &values, start),
        "rotary_append: q {:?}, k {:?}, v {:?}, tables {:?}, caches {:?} at {start}",
        q.dims(),
        k.dims(),
        v.dims(),
        cos.dims(),
        keys.dims()
    );
    let inputs = [q, k, v, cos, sin, keys, values].map(float).to_vec();
    let [q, keys, values] = super::run_all(&RotaryAppend { start }, inputs)
        .try_into()
        .unwrap_or_else(|_| unreachable!("three outputs"));
    (q, keys, values)
}

/// Inputs `[q, k, v, cos, sin, keys, values]`; outputs `[q rotated, keys, values]`.
#[derive(Debug, Clone, Copy)]
struct RotaryAppend {
    start: usize,
}

/// `cache` to write into: itself when nothing else holds its buffer and it is laid out densely,
/// else a copy.
pub(crate) fn owned<R: CubeRuntime>(cache: CubeTensor<R>) -> CubeTensor<R> {
    if cache.can_mut() && cache.is_contiguous_buffer() {
        cache
    } else {
        cache.copy()
    }
}

impl CubeKernel for RotaryAppend {
    const NAME: &'static str = "vlm_rotary_append";

    fn output_shapes(&self, inputs: &[Shape]) -> Vec<Shape> {
        vec![inputs[0].clone(), inputs[5].clone(), inputs[6].clone()]
    }

    fn launch<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [q, k, v, cos, sin, keys, values]: [CubeTensor<R>; 7] = inputs
            .try_into()
            .expect("rotary_append takes q, k, v, cos, sin, keys and values");
        let (keys, values) = (owned(keys), owned(values));
        let q_out = empty_device_dtype(
            q.client.clone(),
            q.device.clone(),
            q.meta.shape().clone(),
            q.dtype,
        );
        let units = q_out.meta.num_elements() + 2 * k.meta.num_elements();
        let cube_dim = CubeDim::new(&q.client, units);
        let cube_count = calculate_cube_count_elemwise(&q.client, units, cube_dim);
        let dtype = q_out.dtype.into();
        // SAFETY: threads past the new elements return first; the others read q, k, v and the
        // tables within the shapes `rotary_append` checked and write the caches at positions
        // `start + p < capacity`.
        unsafe {
            rotary_append_kernel::launch_unchecked(
                &q_out.client,
                cube_count,
                cube_dim,
                q.into_tensor_arg(),
                k.into_tensor_arg(),
                v.into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                q_out.clone().into_tensor_arg(),
                keys.clone().into_tensor_arg(),
                values.clone().into_tensor_arg(),
                self.start as u32,
                dtype,
            )
        };
        vec![q_out, keys, values]
    }
}
