//! Attention of one new position over the KV cache, in one kernel.

use burn::tensor::Shape;
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::CubeKernel;

/// Positions whose scores a cube holds at once (shared memory: `CHUNK + head_dim` f32s).
const CHUNK: usize = 256;

/// One cube per (sequence, query head), one thread per channel of the head. Chunk by chunk of
/// cached positions the threads score the query against the keys (each thread some positions),
/// then every thread folds the chunk into the online softmax and into its own channel of the
/// weighted sum of values. The query head reads kv head `head / group` (grouped-query
/// attention) straight from the cache: no repeated keys or values are materialised, and
/// nothing past `len` is read.
#[cube(launch)]
fn decode_attention_kernel<F: Float>(
    query: &Tensor<F>,
    keys: &Tensor<F>,
    values: &Tensor<F>,
    output: &mut Tensor<F>,
    len: u32,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] group: usize,
    #[comptime] chunk: usize,
    #[define(F)] _dtype: StorageType,
) {
    let heads = output.shape(1);
    let cube = CUBE_POS_X as usize;
    let batch = cube / heads;
    let head = cube % heads;
    let kv_head = head / group;
    let channel = UNIT_POS_X as usize;
    let len = len as usize;

    let mut q = SharedMemory::<f32>::new(head_dim);
    let mut scores = SharedMemory::<f32>::new(chunk);
    q[channel] = f32::cast_from(
        query[batch * query.stride(0) + head * query.stride(1) + channel * query.stride(3)],
    ) * scale;
    sync_cube();

    let k_base = batch * keys.stride(0) + kv_head * keys.stride(1);
    let v_base = batch * values.stride(0) + kv_head * values.stride(1);
    let v_channel = v_base + channel * values.stride(3);
    // Running maximum, normaliser and this channel's weighted sum; the same maximum and
    // normaliser in every thread, as each reads all of a chunk's scores.
    let mut max = f32::new(-1.0e30);
    let mut sum = f32::new(0.0);
    let mut acc = f32::new(0.0);
    let mut start = 0usize;
    while start < len {
        let mut n = len - start;
        if n > chunk {
            n = chunk;
        }
        let mut p = channel;
        while p < n {
            let row = k_base + (start + p) * keys.stride(2);
            let mut dot = f32::new(0.0);
            #[unroll]
            for i in 0..head_dim {
                dot += q[i] * f32::cast_from(keys[row + i * keys.stride(3)]);
            }
            scores[p] = dot;
            p += head_dim;
        }
        sync_cube();

        let mut chunk_max = max;
        for i in 0..n {
            if scores[i] > chunk_max {
                chunk_max = scores[i];
            }
        }
        let rescale = Exp::exp(max - chunk_max);
        sum *= rescale;
        acc *= rescale;
        for i in 0..n {
            let weight = Exp::exp(scores[i] - chunk_max);
            sum += weight;
            acc += weight * f32::cast_from(values[v_channel + (start + i) * values.stride(2)]);
        }
        max = chunk_max;
        // Before the next chunk overwrites the scores.
        sync_cube();
        start += chunk;
    }
    output[batch * output.stride(0) + head * output.stride(1) + channel * output.stride(3)] =
        F::cast_from(acc / sum);
}

/// Attention of a single query position: inputs `[query, keys, values]` with query
/// `[batch, heads, 1, head_dim]` and the cache tensors `[batch, kv_heads, capacity, head_dim]`
/// of which the first `len` positions are attended; output `[batch, heads, 1, head_dim]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeAttention {
    pub len: usize,
    pub group: usize,
}

impl CubeKernel for DecodeAttention {
    const NAME: &'static str = "vlm_decode_attention";

    fn output_shapes(&self, inputs: &[Shape]) -> Vec<Shape> {
        vec![inputs[0].clone()]
    }

    fn launch<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [query, keys, values]: [CubeTensor<R>; 3] = inputs
            .try_into()
            .expect("decode attention takes query, keys and values");
        let [batch, heads, _, head_dim] = query.meta.shape().dims();
        let output = empty_device_dtype(
            query.client.clone(),
            query.device.clone(),
            query.meta.shape().clone(),
            query.dtype,
        );
        let dtype = output.dtype.into();
        decode_attention_kernel::launch::<R>(
            &output.client,
            CubeCount::Static((batch * heads) as u32, 1, 1),
            CubeDim::new_1d(head_dim as u32),
            query.into_tensor_arg(),
            keys.into_tensor_arg(),
            values.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            self.len as u32,
            (head_dim as f32).sqrt().recip(),
            head_dim,
            self.group,
            CHUNK,
            dtype,
        );
        vec![output]
    }
}
