//! Helpers shared by the parity tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use qwen2_decoder::Qwen2Config;
use vlm_pipeline::{Weights, synthetic};

pub type Cpu = burn::backend::Flex;

/// The committed golden fixtures (`cargo xtask golden` writes them).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// ‖a − b‖ / ‖b‖ over all elements.
pub fn rel_l2<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.into_data().convert::<f64>().into_vec::<f64>().unwrap();
    let b = b.into_data().convert::<f64>().into_vec::<f64>().unwrap();
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Token ids stored as an i64 tensor in a reference file.
pub fn token_ids(reference: &Weights, name: &str) -> Vec<u32> {
    let ids = reference.get(name).unwrap().into_vec::<i64>().unwrap();
    ids.into_iter().map(|i| i as u32).collect()
}

/// The shrunk Qwen2 configurations of `qwen2_parity` (`fixtures/qwen2/{name}.safetensors`).
pub const QWEN2_CASES: [&str; 3] = ["gqa1_hd64_tied", "gqa2_hd128_untied", "gqa7_hd64_tied"];

/// One Qwen2 fixture: transformers' outputs, the configuration they were made with, and the
/// checkpoint from the weight formula (seed 2025).
pub struct Qwen2Case {
    pub golden: Weights,
    pub config: Qwen2Config,
    pub weights: HashMap<String, TensorData>,
    /// The prompt ids the golden logits were computed for.
    pub prompt: Vec<i64>,
}

pub fn qwen2_case(name: &str) -> Qwen2Case {
    let golden = Weights::open(&fixtures().join(format!("qwen2/{name}.safetensors"))).unwrap();
    let config: Qwen2Config = serde_json::from_str(&golden.metadata()["config"]).unwrap();
    let mut weights: HashMap<String, TensorData> = config
        .checkpoint_tensors()
        .into_iter()
        .map(|(n, s)| {
            (
                n.clone(),
                TensorData::new(synthetic::tensor(2025, &n, &s), s),
            )
        })
        .collect();
    if config.tie_word_embeddings {
        // Apple's tied checkpoints still store a head; a tied model must not use it.
        let shape = [config.vocab_size, config.hidden_size];
        weights.insert(
            "lm_head.weight".into(),
            TensorData::new(vec![1e3f32; shape[0] * shape[1]], shape),
        );
    }
    let prompt = golden.get("ids").unwrap().into_vec::<i64>().unwrap();
    Qwen2Case {
        golden,
        config,
        weights,
        prompt,
    }
}

pub mod wgpu;
