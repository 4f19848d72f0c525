//! Token selection (greedy or sampled), stopping, and per-request metrics.

use serde::Serialize;

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOptions {
    /// 0 picks the most likely token (greedy); above 0 divides the logits before sampling.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 keeps all).
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0 keeps all). Hugging Face samples with 50.
    pub top_k: usize,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Return the `logprobs` most likely alternatives (and the chosen token's) at every step.
    pub logprobs: Option<usize>,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl GenerationOptions {
    /// `predict.py`'s defaults: temperature 0.2, 256 new tokens; top-k 50 and top-p 1 are the
    /// Hugging Face sampling defaults it inherits. Every front end starts from these.
    pub const DEFAULT: Self = Self {
        temperature: 0.2,
        top_p: 1.0,
        top_k: 50,
        seed: 0,
        max_new_tokens: 256,
        logprobs: None,
    };

    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.logprobs.is_some_and(|n| n > 20) {
            return Err("logprobs: at most 20 alternatives per token".into());
        }
        Ok(())
    }

    pub fn greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// The most likely alternatives at one step, as natural-log probabilities over the vocabulary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token (`<|im_end|>`, `<|endoftext|>`) was produced.
    Stop,
    /// `max_new_tokens` (or the context) was reached.
    Length,
    /// The caller stopped it (the token callback returned `Break`).
    Cancelled,
}

/// Timings and counts of one request.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Metrics {
    pub preprocess_ms: f64,
    pub encode_ms: f64,
    pub prefill_ms: f64,
    /// From the start of preprocessing to the first generated token.
    pub ttft_ms: f64,
    pub decode_ms: f64,
    /// Tokens per second after the first one.
    pub decode_tokens_per_s: f64,
    pub prompt_tokens: usize,
    pub image_tokens: usize,
    pub generated_tokens: usize,
}

/// A small seeded generator (SplitMix64): sampling is reproducible for a given seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next token from logits over the usable vocabulary, the way Hugging Face's
/// sampler does: temperature, then top-k, then top-p, then a draw.
pub fn sample(logits: &[f32], options: &GenerationOptions, rng: &mut Rng) -> u32 {
    if options.greedy() {
        return argmax(logits);
    }
    let t = options.temperature as f64;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if options.top_k > 0 {
        order.truncate(options.top_k);
    }
    let max = logits[order[0]] as f64 / t;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| (logits[i] as f64 / t - max).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if options.top_p < 1.0 {
        // Keep the most likely tokens until their mass reaches top_p (at least one).
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                mass += p;
                mass >= options.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut r = rng.next_f64();
    for (i, p) in order.iter().zip(&probs) {
        if r < *p {
            return *i as u32;
        }
        r -= p;
    }
    order[order.len() - 1] as u32
}

/// Index of the largest logit (the first one on ties, as torch's argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax of `logits`, the chosen token's value and the `n` best.
pub fn logprobs(logits: &[f32], chosen: u32, n: usize) -> TokenLogprobs {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let lse = max
        + logits
            .iter()
            .map(|v| (*v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let lp = |i: usize| (logits[i] as f64 - lse) as f32;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let n = n.min(logits.len());
    if n > 0 {
        order.select_nth_unstable_by(n - 1, |&a, &b| {
            logits[b].total_cmp(&logits[a]).then(a.cmp(&b))
        });
    }
    let mut top: Vec<usize> = order[..n].to_vec();
    top.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    TokenLogprobs {
        token: chosen,
        logprob: lp(chosen as usize),
        top: top.into_iter().map(|i| (i as u32, lp(i))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let options = GenerationOptions {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample(&[0.1, 3.0, 2.0], &options, &mut Rng::new(1)), 1);
    }

    #[test]
    fn sampling_respects_top_k_top_p_and_seed() {
        let logits = [0.0f32, 2.0, 1.9, -5.0, 1.0];
        let top1 = GenerationOptions {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        let mut rng = Rng::new(3);
        assert!((0..50).all(|_| sample(&logits, &top1, &mut rng) == 1));
        let nucleus = GenerationOptions {
            temperature: 1.0,
            top_p: 0.6,
            top_k: 0,
            ..Default::default()
        };
        let mut rng = Rng::new(4);
        let drawn: Vec<u32> = (0..200)
            .map(|_| sample(&logits, &nucleus, &mut rng))
            .collect();
        assert!(drawn.iter().all(|t| *t == 1 || *t == 2), "{drawn:?}");
        assert!(drawn.contains(&1) && drawn.contains(&2));
        let again: Vec<u32> = {
            let mut rng = Rng::new(4);
            (0..200)
                .map(|_| sample(&logits, &nucleus, &mut rng))
                .collect()
        };
        assert_eq!(drawn, again);
    }

    #[test]
    fn logprobs_are_a_normalised_log_softmax() {
        let logits = [1.0f32, 3.0, 2.0];
        let lp = logprobs(&logits, 2, 2);
        let total: f64 = [1.0f64, 3.0, 2.0].iter().map(|v| v.exp()).sum();
        assert!((lp.logprob as f64 - (2.0 - total.ln())).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
    }
}
