use burn::tensor::{Tensor, backend::Backend};

/// Keys and values of one layer, preallocated to the cache capacity.
#[derive(Debug, Clone)]
pub(crate) struct LayerCache<B: Backend> {
    /// `[batch, kv_heads, capacity, head_dim]`.
    pub keys: Tensor<B, 4>,
    /// `[batch, kv_heads, capacity, head_dim]`.
    pub values: Tensor<B, 4>,
}

/// The key/value cache of every layer, allocated once for the length a request needs.
///
/// A prefill writes positions `0..n`; each decoding step appends one position. Positions of new
/// tokens continue from [`KvCache::len`].
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<LayerCache<B>>,
    len: usize,
    capacity: usize,
    batch: usize,
}

impl<B: Backend> KvCache<B> {
    pub(crate) fn new(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let layer = || LayerCache {
            keys: Tensor::zeros([batch, kv_heads, capacity, head_dim], device),
            values: Tensor::zeros([batch, kv_heads, capacity, head_dim], device),
        };
        Self {
            layers: (0..layers).map(|_| layer()).collect(),
            len: 0,
            capacity,
            batch,
        }
    }

    /// Positions already cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Batch size the cache was made for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Forgets every cached position; the memory is kept for the next sequence.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

impl<B: Backend> LayerCache<B> {
    /// Writes `[batch, kv_heads, n, head_dim]` at `start` and returns the whole buffers
    /// `[batch, kv_heads, capacity, head_dim]`, of which `0..start + n` are filled.
    pub fn append(
        &mut self,
        start: usize,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, n, d] = keys.dims();
        let range = [0..b, 0..h, start..start + n, 0..d];
        // Take the buffers out so they are uniquely owned and the write can happen in place.
        let empty = || Tensor::empty([0, 0, 0, 0], &keys.device());
        let cached_keys = std::mem::replace(&mut self.keys, empty());
        let cached_values = std::mem::replace(&mut self.values, empty());
        self.keys = cached_keys.slice_assign(range.clone(), keys);
        self.values = cached_values.slice_assign(range, values);
        (self.keys.clone(), self.values.clone())
    }
}

#[cfg(feature = "cubecl")]
impl<B: Backend> LayerCache<B> {
    /// Rotates the new queries and keys and writes keys and values at `start`, in one launch on
    /// the CubeCL backends (`vlm_kernels::rotary_append`, the buffers updated in place): q
    /// `[batch, heads, n, d]`, k and v `[batch, kv_heads, n, d]`, tables `[1, 1, n, d]`. Returns
    /// the rotated queries and the whole buffers as [`LayerCache::append`] does; `None` (nothing
    /// done) where the kernel does not apply.
    pub fn rotate_and_append(
        &mut self,
        start: usize,
        [q, k, v]: [&Tensor<B, 4>; 3],
        (cos, sin): &(Tensor<B, 4>, Tensor<B, 4>),
    ) -> Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
        use vlm_kernels::{Kernel, available, rotary_append, rotary_append_fits};
        let fits = available::<B>(Kernel::Rotary)
            && rotary_append_fits(q, k, v, cos, sin, &self.keys, &self.values, start);
        if !fits {
            return None;
        }
        Some(self.write_in_place(|keys, values| {
            rotary_append(
                q.clone(),
                k.clone(),
                v.clone(),
                cos.clone(),
                sin.clone(),
                keys,
                values,
                start,
            )
        }))
    }

    /// A decoding step's attention inputs in one launch on the CubeCL backends
    /// (`vlm_kernels::qkv_rotary_append`): the layer's input row `x` `[1, 1, hidden]` through
    /// `norm` and the q/k/v `weights` `[hidden, out]` (with `biases`), q and k rotated, k and v
    /// written at `start` in place. Returns the rotated queries `[1, heads, 1, d]` and the
    /// whole buffers as [`LayerCache::append`] does; `None` (nothing done) where the kernel does
    /// not apply.
    pub fn project_rotate_append(
        &mut self,
        start: usize,
        x: &Tensor<B, 3>,
        norm: Option<vlm_kernels::RowNorm<B>>,
        weights: [Tensor<B, 2>; 3],
        biases: Option<[Tensor<B, 1>; 3]>,
        (cos, sin): &(Tensor<B, 4>, Tensor<B, 4>),
    ) -> Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
        use vlm_kernels::{Kernel, available, qkv_rotary_append, qkv_rotary_append_fits};
        let fits = available::<B>(Kernel::QkvRotary)
            && qkv_rotary_append_fits(
                x,
                &weights,
                biases.as_ref(),
                norm.as_ref(),
                (cos, sin),
                &self.keys,
                &self.values,
                start,
            );
        if !fits {
            return None;
        }
        Some(self.write_in_place(|keys, values| {
            qkv_rotary_append(
                x.clone(),
                weights,
                biases,
                norm,
                (cos.clone(), sin.clone()),
                keys,
                values,
                start,
            )
        }))
    }

    /// Runs `kernel` on the buffers moved out of the cache, so that it holds the only reference
    /// and writes in place, and keeps the buffers it returns: its queries and the whole buffers.
    fn write_in_place(
        &mut self,
        kernel: impl FnOnce(Tensor<B, 4>, Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>),
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let device = self.keys.device();
        let empty = || Tensor::empty([0, 0, 0, 0], &device);
        let keys = std::mem::replace(&mut self.keys, empty());
        let values = std::mem::replace(&mut self.values, empty());
        let (q, keys, values) = kernel(keys, values);
        self.keys = keys;
        self.values = values;
        (q, self.keys.clone(), self.values.clone())
    }
}
