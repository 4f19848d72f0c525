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

/// Rows of `width` f32 values that fit in `max_bytes`.
pub fn rows_per_block(width: usize, max_bytes: usize) -> usize {
    (max_bytes / (width * 4)).max(1)
}

/// A `[vocab, hidden]` table in row blocks: the token embedding, and the output projection of a
/// tied head.
#[derive(Module, Debug)]
pub struct TokenEmbedding<B: Backend> {
    /// `[rows_k, hidden]`, consecutive row ranges of the table.
    pub blocks: Vec<Param<Tensor<B, 2>>>,
}

impl<B: Backend> TokenEmbedding<B> {
    pub fn new(blocks: Vec<Tensor<B, 2>>) -> Self {
        Self {
            blocks: blocks.into_iter().map(Param::from_tensor).collect(),
        }
    }

    pub fn vocab(&self) -> usize {
        self.blocks.iter().map(|b| b.dims()[0]).sum()
    }

    /// Row `id` as `[1, hidden]` (a view of its block), `None` past the vocabulary.
    pub fn row(&self, id: usize) -> Option<Tensor<B, 2>> {
        let mut start = 0;
        for block in &self.blocks {
            let rows = block.dims()[0];
            if id < start + rows {
                return Some(block.val().narrow(0, id - start, 1));
            }
            start += rows;
        }
        None
    }

    /// Ids `[batch, seq]` → rows `[batch, seq, hidden]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = ids.dims();
        let flat = ids.reshape([batch * seq]);
        if let [block] = self.blocks.as_slice() {
            let rows = block.val().select(0, flat);
            let hidden = rows.dims()[1];
            return rows.reshape([batch, seq, hidden]);
        }
        // Each block looks up the ids it holds (others clamped to a valid row and zeroed), so
        // the ids can stay on the device (a sampled id never has to visit the host).
        let mut out: Option<Tensor<B, 2>> = None;
        let mut start = 0i64;
        for block in &self.blocks {
            let rows = block.dims()[0] as i64;
            let inside = flat
                .clone()
                .greater_equal_elem(start)
                .bool_and(flat.clone().lower_elem(start + rows));
            let local = flat.clone().sub_scalar(start).clamp(0, rows - 1);
            let picked = block.val().select(0, local) * inside.float().unsqueeze_dim::<2>(1);
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

    /// The blocks transposed, `[hidden, rows_k]` views: the output projection of a tied head.
    pub fn transposed(&self) -> Vec<Tensor<B, 2>> {
        self.blocks.iter().map(|b| b.val().transpose()).collect()
    }
}

/// An untied LM head, `[hidden, vocab]` in column blocks (each contiguous).
#[derive(Module, Debug)]
pub struct LmHead<B: Backend> {
    /// `[hidden, cols_k]`.
    pub blocks: Vec<Param<Tensor<B, 2>>>,
}

impl<B: Backend> LmHead<B> {
    pub fn new(blocks: Vec<Tensor<B, 2>>) -> Self {
        Self {
            blocks: blocks.into_iter().map(Param::from_tensor).collect(),
        }
    }

    /// The blocks, `[hidden, cols_k]`.
    pub fn blocks(&self) -> Vec<Tensor<B, 2>> {
        self.blocks.iter().map(|b| b.val()).collect()
    }
}
