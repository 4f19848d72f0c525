//! Helpers shared by the parity tests.
#![allow(dead_code)]

use std::collections::HashMap;

use burn::tensor::TensorData;
use qwen2_decoder::{Convention, Qwen2Config, names};
pub use vlm_kernels::testing::{fixtures, rel_l2};
use vlm_pipeline::Weights;

pub type Cpu = burn::backend::Flex;

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
    let names = names(Convention::Apple).unwrap();
    let weights: HashMap<String, TensorData> =
        vlm_kernels::testing::checkpoint(2025, &config.checkpoint_tensors(), &names);
    let prompt = golden.get("ids").unwrap().into_vec::<i64>().unwrap();
    Qwen2Case {
        golden,
        config,
        weights,
        prompt,
    }
}

pub mod wgpu;
