//! Vocabulary-sized tensors (the token embedding and the LM head) stored as blocks.
//!
//! wgpu caps one storage binding at 128 MiB on lavapipe and on many real adapters; Qwen2-0.5B's
//! embedding alone is 151,936 × 896 × 4 bytes = 544 MB in f32. Keeping such tensors as row
//! blocks below the cap ([`vlm_kernels::ops::max_binding_bytes`]) lets every backend run them;
//! backends without the cap keep each table whole (one matrix product, no per-block launches).
//! Results do not change: a lookup picks the same rows, a projection computes the same dot
//! products.

use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor, backend::Backend};
use vlm_kernels::QuantizedMatrix;
use vlm_kernels::ops::Projection;

/// Rows of `width` f32 values that fit in `max_bytes`.
pub fn rows_per_block(width: usize, max_bytes: usize) -> usize {
    (max_bytes / (width * 4)).max(1)
}

/// A `[vocab, hidden]` table in row blocks: the token embedding, and the output projection of a
/// tied head.
#[derive(Module, Debug)]
pub struct TokenEmbedding<B: Backend> {
    /// `[rows_k, hidden]`, consecutive row ranges of the table (empty when quantized).
    pub blocks: Vec<Param<Tensor<B, 2>>>,
    /// The same row ranges quantized (empty at the compute precision).
    pub quantized: Vec<QuantizedMatrix<B>>,
}

impl<B: Backend> TokenEmbedding<B> {
    pub fn new(blocks: Vec<Tensor<B, 2>>) -> Self {
        Self {
            blocks: blocks.into_iter().map(Param::from_tensor).collect(),
            quantized: Vec::new(),
        }
    }

    /// A table stored quantized, in row blocks.
    pub fn quantized(blocks: Vec<QuantizedMatrix<B>>) -> Self {
        Self {
            blocks: Vec::new(),
            quantized: blocks,
        }
    }

    /// Rows per block, in order.
    fn block_rows(&self) -> Vec<usize> {
        match self.quantized.is_empty() {
            true => self.blocks.iter().map(|b| b.dims()[0]).collect(),
            false => self.quantized.iter().map(|q| q.rows()).collect(),
        }
    }

    pub fn vocab(&self) -> usize {
        self.block_rows().iter().sum()
    }

    /// Row `id` as `[1, hidden]` (a view of its block, or its row dequantized), `None` past
    /// the vocabulary.
    pub fn row(&self, id: usize) -> Option<Tensor<B, 2>> {
        let mut start = 0;
        for (k, rows) in self.block_rows().into_iter().enumerate() {
            if id < start + rows {
                return Some(match self.quantized.get(k) {
                    Some(q) => q.row(id - start),
                    None => self.blocks[k].val().narrow(0, id - start, 1),
                });
            }
            start += rows;
        }
        None
    }

    /// The rows of block `k` at local ids `[n]`, `[n, hidden]`.
    fn select(&self, k: usize, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        match self.quantized.get(k) {
            Some(q) => q.select_rows(ids),
            None => self.blocks[k].val().select(0, ids),
        }
    }

    /// Ids `[batch, seq]` → rows `[batch, seq, hidden]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = ids.dims();
        let flat = ids.reshape([batch * seq]);
        let block_rows = self.block_rows();
        if block_rows.len() == 1 {
            let rows = self.select(0, flat);
            let hidden = rows.dims()[1];
            return rows.reshape([batch, seq, hidden]);
        }
        // Each block looks up the ids it holds (others clamped to a valid row and zeroed), so
        // the ids can stay on the device (a sampled id never has to visit the host).
        let mut out: Option<Tensor<B, 2>> = None;
        let mut start = 0i64;
        for (k, rows) in block_rows.into_iter().enumerate() {
            let rows = rows as i64;
            let inside = flat
                .clone()
                .greater_equal_elem(start)
                .bool_and(flat.clone().lower_elem(start + rows));
            let local = flat.clone().sub_scalar(start).clamp(0, rows - 1);
            let picked = self.select(k, local) * inside.float().unsqueeze_dim::<2>(1);
            out = Some(match out {
                Some(o) => o + picked,
                None => picked,
            });
            start += rows;
        }
        let out = out.expect("at least one block");
        let hidden = out.dims()[1];
        out.reshape([batch, seq, hidden])
    }

    /// The table as an output projection over the hidden size: the blocks transposed,
    /// `[hidden, rows_k]` views, or the quantized blocks as they are.
    pub fn projection(&self) -> Vec<Projection<B>> {
        match self.quantized.is_empty() {
            true => self
                .blocks
                .iter()
                .map(|b| Projection::Dense(b.val().transpose()))
                .collect(),
            false => self
                .quantized
                .iter()
                .cloned()
                .map(Projection::Quantized)
                .collect(),
        }
    }
}

/// An untied LM head, `[hidden, vocab]` in column blocks (each contiguous), or `[vocab,
/// hidden]` in quantized row blocks.
#[derive(Module, Debug)]
pub struct LmHead<B: Backend> {
    /// `[hidden, cols_k]` (empty when quantized).
    pub blocks: Vec<Param<Tensor<B, 2>>>,
    /// `[rows_k, hidden]` quantized (empty at the compute precision).
    pub quantized: Vec<QuantizedMatrix<B>>,
}

impl<B: Backend> LmHead<B> {
    pub fn new(blocks: Vec<Tensor<B, 2>>) -> Self {
        Self {
            blocks: blocks.into_iter().map(Param::from_tensor).collect(),
            quantized: Vec::new(),
        }
    }

    /// A head stored quantized, in row blocks of the vocabulary.
    pub fn quantized(blocks: Vec<QuantizedMatrix<B>>) -> Self {
        Self {
            blocks: Vec::new(),
            quantized: blocks,
        }
    }

    /// The head's blocks as an output projection.
    pub fn projection(&self) -> Vec<Projection<B>> {
        match self.quantized.is_empty() {
            true => self
                .blocks
                .iter()
                .map(|b| Projection::Dense(b.val()))
                .collect(),
            false => self
                .quantized
                .iter()
                .cloned()
                .map(Projection::Quantized)
                .collect(),
        }
    }
}
