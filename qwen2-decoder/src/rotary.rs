use burn::module::Module;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use vlm_kernels::ops::Rope;

/// Rotary position embedding in the "rotate half" convention of Qwen2 / Llama:
/// the two halves of each head are rotated as (x₁, x₂) → (x₁·cos − x₂·sin, x₂·cos + x₁·sin)
/// with `inv_freq[i] = θ^(−2i / head_dim)`.
#[derive(Module, Debug, Clone)]
pub struct RotaryEmbedding {
    pub head_dim: usize,
    pub theta: f64,
}

impl RotaryEmbedding {
    /// The tables for positions `start..start + len`, each `[1, 1, len, head_dim]`.
    ///
    /// Angles are formed in f32 as the reference does (`inv_freq` and `position · inv_freq`
    /// in float32), then their cosine and sine are taken in f64.
    pub fn tables<B: Backend>(&self, start: usize, len: usize, device: &B::Device) -> Rope<B> {
        let half = self.head_dim / 2;
        let theta = self.theta as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / self.head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(len * self.head_dim);
        let mut sin = Vec::with_capacity(len * self.head_dim);
        for p in start..start + len {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = (p as f32 * f) as f64;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let shape = [1, 1, len, self.head_dim];
        Rope {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }
}
