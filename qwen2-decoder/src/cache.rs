use burn::tensor::{Tensor, backend::Backend};

/// Keys and values of one layer, preallocated to the cache capacity; the ops that append to
/// them ([`vlm_kernels::ops::rotary_append`]) write in place.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
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
