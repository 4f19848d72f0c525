//! softmax(q·kᵀ/√d)·v in one launch: a tiled online-softmax ("flash") kernel for many query
//! positions, the decoding-step kernel for one.

use burn::tensor::{DType, Shape, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::decode_attention::DecodeAttention;
use super::{CubeKernel, float, run};

/// Which keys and values [`attention`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvAttention {
    /// Positions attended: the first `len` along the keys' and values' third axis (a KV cache is
    /// allocated past what it holds).
    pub len: usize,
    /// The `n` queries are the last `n` of the `len` positions and query `i` sees keys
    /// `0..=len - n + i` only (burn's bottom-right aligned causal mask).
    pub causal: bool,
}

impl KvAttention {
    /// Whether [`attention`] takes these tensors: query `[batch, heads, n, d]`, keys and values
    /// `[batch, kv_heads, capacity, d]` with `heads` a multiple of `kv_heads`, `1 ≤ len ≤
    /// capacity`, `n ≤ len` when causal, `d ≤ 256`, one float type (f32, f16, bf16).
    pub fn fits<B: Backend>(
        &self,
        q: &BurnTensor<B, 4>,
        k: &BurnTensor<B, 4>,
        v: &BurnTensor<B, 4>,
    ) -> bool {
        let [batch, heads, n, d] = q.dims();
        let [kb, kv_heads, capacity, kd] = k.dims();
        let float = matches!(q.dtype(), DType::F32 | DType::F16 | DType::BF16);
        float
            && k.dtype() == q.dtype()
            && v.dtype() == q.dtype()
            && v.dims() == k.dims()
            && kb == batch
            && kd == d
            && (1..=256).contains(&d)
            && kv_heads > 0
            && heads % kv_heads == 0
            && n > 0
            && (1..=capacity).contains(&self.len)
            && (!self.causal || n <= self.len)
    }
}

/// Attention of queries `[batch, heads, n, d]` over the first `len` positions of keys and values
/// `[batch, kv_heads, capacity, d]` (all three with any strides), scaled by `1/√d`; query head
/// `h` reads kv head `h / (heads / kv_heads)` (grouped-query attention: no repeated keys or
/// values are materialised). Output `[batch, heads, n, d]`, contiguous, in the inputs' dtype;
/// scores, softmax and the weighted sum in f32.
///
/// One launch, where burn 0.21's attention is about a dozen (scores, mask fills, reductions,
/// the weighted sum, and copies for repeated kv heads).
///
/// # Panics
/// Unless [`super::available`] holds for `B` and `Kernel::Attention` and [`KvAttention::fits`] for the tensors.
pub fn attention<B: Backend>(
    q: BurnTensor<B, 4>,
    k: BurnTensor<B, 4>,
    v: BurnTensor<B, 4>,
    options: KvAttention,
) -> BurnTensor<B, 4> {
    assert!(
        options.fits(&q, &k, &v),
        "attention: query {:?}, keys {:?}, values {:?} do not fit {options:?}",
        q.dims(),
        k.dims(),
        v.dims()
    );
    let [_, heads, n, _] = q.dims();
    let group = heads / k.dims()[1];
    let inputs = vec![float(q), float(k), float(v)];
    if n == 1 {
        // One position sees every cached key, causal or not.
        let kernel = DecodeAttention {
            len: options.len,
            group,
        };
        return run(&kernel, inputs);
    }
    let kernel = FlashAttention {
        len: options.len,
        group,
        causal: options.causal,
    };
    run(&kernel, inputs)
}

/// One cube per (block of `block_q` query rows, head, sequence), one thread per query row.
///
/// The cube walks the key positions in blocks of `block_k`: its threads copy the block's keys
/// and values into shared memory (coalesced, converted to f32), then each thread scores its
/// query against every key of the block (the query and its running output in registers; the
/// key read is a broadcast, the same address for all threads; its scores to shared memory),
/// folds the block into its online softmax (running maximum and normaliser, the output rescaled
/// when the maximum grows) and adds the weighted values. Under the causal mask a cube stops at its last row's last key and
/// each row skips the keys past its own.
#[cube(launch_unchecked)]
fn flash_attention_kernel<F: Float>(
    query: &Tensor<F>,
    keys: &Tensor<F>,
    values: &Tensor<F>,
    output: &mut Tensor<F>,
    len: u32,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] group: usize,
    #[comptime] block_q: usize,
    #[comptime] block_k: usize,
    #[comptime] causal: bool,
    #[define(F)] _dtype: StorageType,
) {
    let n = query.shape(2);
    let len = len as usize;
    let head = CUBE_POS_Y as usize;
    let batch = CUBE_POS_Z as usize;
    let kv_head = head / group;
    let thread = UNIT_POS_X as usize;
    let row = CUBE_POS_X as usize * block_q + thread;
    let live = row < n;

    let mut q = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    let q_row = batch * query.stride(0) + head * query.stride(1) + row * query.stride(2);
    #[unroll]
    for c in 0..head_dim {
        acc[c] = 0.0;
        q[c] = 0.0;
        if live {
            q[c] = f32::cast_from(query[q_row + c * query.stride(3)]) * scale;
        }
    }

    // Keys this row sees (`visible`) and keys any row of the cube sees (`end`).
    let mut visible = len;
    let mut end = len;
    if causal {
        visible = len - n + row + 1;
        let mut last = (CUBE_POS_X as usize + 1) * block_q;
        if last > n {
            last = n;
        }
        end = len - n + last;
    }

    let mut keys_block = SharedMemory::<f32>::new(block_k * head_dim);
    let mut values_block = SharedMemory::<f32>::new(block_k * head_dim);
    // This thread's scores of a block at `r * block_q + thread`: conflict-free, and loops over
    // `r` stay loops (a fully unrolled block is a shader too large for some compilers).
    let mut scores = SharedMemory::<f32>::new(block_k * block_q);
    let k_base = batch * keys.stride(0) + kv_head * keys.stride(1);
    let v_base = batch * values.stride(0) + kv_head * values.stride(1);

    let mut max = f32::new(-1.0e30);
    let mut sum = f32::new(0.0);
    let mut start = 0usize;
    while start < end {
        let mut i = thread;
        while i < block_k * head_dim {
            let p = start + i / head_dim;
            let c = i % head_dim;
            let mut key = f32::new(0.0);
            let mut value = f32::new(0.0);
            if p < len {
                key = f32::cast_from(keys[k_base + p * keys.stride(2) + c * keys.stride(3)]);
                value =
                    f32::cast_from(values[v_base + p * values.stride(2) + c * values.stride(3)]);
            }
            keys_block[i] = key;
            values_block[i] = value;
            i += block_q;
        }
        sync_cube();

        let mut block_max = max;
        for r in 0..block_k {
            let mut dot = f32::new(0.0);
            #[unroll]
            for c in 0..head_dim {
                dot += q[c] * keys_block[r * head_dim + c];
            }
            scores[r * block_q + thread] = dot;
            if start + r < visible && dot > block_max {
                block_max = dot;
            }
        }
        let rescale = Exp::exp(max - block_max);
        sum *= rescale;
        #[unroll]
        for c in 0..head_dim {
            acc[c] *= rescale;
        }
        for r in 0..block_k {
            if start + r < visible {
                let weight = Exp::exp(scores[r * block_q + thread] - block_max);
                sum += weight;
                #[unroll]
                for c in 0..head_dim {
                    acc[c] += weight * values_block[r * head_dim + c];
                }
            }
        }
        max = block_max;
        // Before the next block overwrites the shared keys, values and scores.
        sync_cube();
        start += block_k;
    }

    if live {
        let out_row = batch * output.stride(0) + head * output.stride(1) + row * output.stride(2);
        #[unroll]
        for c in 0..head_dim {
            output[out_row + c * output.stride(3)] = F::cast_from(acc[c] / sum);
        }
    }
}

/// Inputs `[query, keys, values]` as [`attention`] takes them, `n > 1`.
#[derive(Debug, Clone, Copy)]
struct FlashAttention {
    len: usize,
    group: usize,
    causal: bool,
}

impl FlashAttention {
    /// Key positions per shared-memory block: at most 8 KiB of keys and values in f32 whatever
    /// the head width, and 8 KiB of scores for 64 rows (within every backend's 16 KiB of
    /// workgroup memory).
    fn block_k(head_dim: usize) -> usize {
        (1024 / head_dim).clamp(1, 32)
    }

    /// Query rows per cube: 64, or 32 when that leaves fewer cubes than a large GPU has
    /// multiprocessors (a decoder prefill of a few hundred positions).
    fn block_q(batch: usize, heads: usize, n: usize) -> usize {
        if n.div_ceil(64) * heads * batch < 128 {
            32
        } else {
            64
        }
    }
}

impl CubeKernel for FlashAttention {
    const NAME: &'static str = "vlm_flash_attention";

    fn output_shapes(&self, inputs: &[Shape]) -> Vec<Shape> {
        vec![inputs[0].clone()]
    }

    fn launch<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [query, keys, values]: [CubeTensor<R>; 3] = inputs
            .try_into()
            .expect("attention takes query, keys and values");
        let [batch, heads, n, head_dim] = query.meta.shape().dims();
        let output = empty_device_dtype(
            query.client.clone(),
            query.device.clone(),
            query.meta.shape().clone(),
            query.dtype,
        );
        let block_q = Self::block_q(batch, heads, n);
        let block_k = Self::block_k(head_dim);
        let dtype = output.dtype.into();
        // SAFETY: `attention` checked the shapes (`KvAttention::fits`): a thread reads its query
        // row and writes its output row only when the row is below `n`, and reads keys and
        // values only at positions below `len ≤ capacity`, at kv head `head / group <
        // kv_heads`, channels below `head_dim`.
        unsafe {
            flash_attention_kernel::launch_unchecked::<R>(
                &output.client,
                CubeCount::Static(n.div_ceil(block_q) as u32, heads as u32, batch as u32),
                CubeDim::new_1d(block_q as u32),
                query.into_tensor_arg(),
                keys.into_tensor_arg(),
                values.into_tensor_arg(),
                output.clone().into_tensor_arg(),
                self.len as u32,
                (head_dim as f32).sqrt().recip(),
                head_dim,
                self.group,
                block_q,
                block_k,
                self.causal,
                dtype,
            )
        };
        vec![output]
    }
}
