//! The parity checks on wgpu, generic over the float type (`wgpu_parity.rs` runs f32,
//! `wgpu_f16_parity.rs` f16, each in its own process: burn keeps one default float type per
//! device, so two precisions in one process would share whichever was set first).
#![allow(dead_code)]

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use fastvithd::{Convention, FastVitHd, FastVitHdConfig};
use qwen2_decoder::{Qwen2, Qwen2Config};
use vlm_kernels::testing::image as formula_image;
use vlm_pipeline::{FastVlm, GenerationOptions, Message, Request, Role, Weights, image};

use super::{QWEN2_CASES, Qwen2Case, fixtures, qwen2_case, rel_l2};

/// Whether a wgpu adapter exists that computes in `dtype`.
pub fn adapter(dtype: burn::tensor::DType) -> bool {
    vlm_kernels::testing::wgpu_adapter(dtype)
}

/// Qwen2's tensors named as Apple's checkpoints (Hugging Face's) name them.
fn qwen2_names() -> vlm_kernels::loader::NameMap {
    qwen2_decoder::names(Convention::Apple).unwrap()
}

/// FastViTHD's tensors named as Apple's checkpoints name them.
fn fastvithd_names() -> vlm_kernels::loader::NameMap {
    fastvithd::names(Convention::Apple).unwrap()
}

pub fn host<B: Backend, const D: usize>(w: &Weights, name: &str) -> Tensor<B, D> {
    Tensor::from_data(w.get(name).unwrap(), &Default::default())
}

/// The shrunk FastViTHD of `fastvithd_parity` (Apple names, bf16 file) at 2×192² and 160×224.
pub fn fastvithd<B: Backend>(tol: f64, what: &str) {
    let config = FastVitHdConfig::default()
        .with_layers([2, 2, 3, 2, 2])
        .with_embed_dims([8, 16, 32, 64, 128]);
    let weights = Weights::open(&fixtures().join("fastvithd/tiny_apple.safetensors")).unwrap();
    let model = FastVitHd::<B>::load(
        &config,
        &fastvithd_names(),
        &mut |n| weights.get(n),
        &Default::default(),
    )
    .unwrap();
    let io = Weights::open(&fixtures().join("fastvithd/tiny_io.safetensors")).unwrap();
    for (tag, shape) in [("square", [2, 3, 192, 192]), ("wide", [1, 3, 160, 224])] {
        let values = formula_image(2024, &format!("image_{tag}"), shape.iter().product());
        let x = Tensor::<B, 4>::from_data(TensorData::new(values, shape), &Default::default());
        let err = rel_l2(
            model.forward(x),
            host::<B, 4>(&io, &format!("features_{tag}")),
        );
        println!("{what} FastViTHD {tag}: rel-L2 {err:.3e}");
        assert!(err <= tol, "{what} FastViTHD {tag}: {err:.3e} > {tol:e}");
    }
}

/// The three Qwen2 configurations of `qwen2_parity`: prefill logits from ids.
pub fn qwen2<B: Backend>(tol: f64, what: &str) {
    for name in QWEN2_CASES {
        let Qwen2Case {
            golden,
            config,
            weights,
            prompt,
        } = qwen2_case(name);
        let device = Default::default();
        // Small blocks, so the vocabulary splitting that real models need on wgpu runs here.
        let model = Qwen2::<B>::load_blocked(
            &config,
            &qwen2_names(),
            &mut |n| weights.get(n).cloned(),
            &device,
            64 * config.hidden_size * 4,
        )
        .unwrap();
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(prompt.clone(), [1, prompt.len()]),
            &device,
        );
        let mut cache = model.new_cache(1, prompt.len(), &device).unwrap();
        let got = model.forward(ids, &mut cache).unwrap();
        let err = rel_l2(got.clone(), host::<B, 3>(&golden, "logits_ids"));
        println!("{what} Qwen2 {name}: rel-L2 {err:.3e}");
        assert!(err <= tol, "{what} Qwen2 {name}: {err:.3e} > {tol:e}");

        // Batch 2 (the prompt and its reverse) equals each sequence alone: the fused attention
        // kernel must find every (batch, head) slice.
        let (p0, p1) = (
            prefill_alone::<B>(&model, &prompt),
            prefill_alone::<B>(&model, &reversed(&prompt)),
        );
        let err = rel_l2(
            prefill_batch2::<B>(&model, &prompt).0,
            Tensor::cat(vec![p0, p1], 0),
        );
        println!("{what} Qwen2 {name} batch 2 prefill: rel-L2 {err:.3e} against batch 1");
        assert!(
            err <= tol,
            "{what} Qwen2 {name} batch 2 prefill: {err:.3e} > {tol:e}"
        );
    }
}

pub fn reversed(ids: &[i64]) -> Vec<i64> {
    ids.iter().rev().copied().collect()
}

pub fn ids<B: Backend>(values: Vec<i64>, batch: usize) -> Tensor<B, 2, Int> {
    let n = values.len() / batch;
    Tensor::from_data(TensorData::new(values, [batch, n]), &Default::default())
}

/// Logits of `prompt` alone, `[1, n, vocab]`.
pub fn prefill_alone<B: Backend>(model: &Qwen2<B>, prompt: &[i64]) -> Tensor<B, 3> {
    let mut cache = model
        .new_cache(1, prompt.len() + 1, &Default::default())
        .unwrap();
    model.forward(ids(prompt.to_vec(), 1), &mut cache).unwrap()
}

/// `prompt` and its reverse as one batch: the prefill logits and the cache after it.
pub fn prefill_batch2<B: Backend>(
    model: &Qwen2<B>,
    prompt: &[i64],
) -> (Tensor<B, 3>, qwen2_decoder::KvCache<B>) {
    let mut cache = model
        .new_cache(2, prompt.len() + 1, &Default::default())
        .unwrap();
    let both: Vec<i64> = prompt.iter().copied().chain(reversed(prompt)).collect();
    (model.forward(ids(both, 2), &mut cache).unwrap(), cache)
}

/// Shapes where burn 0.21's CubeCL reshape went wrong (a view with a unit axis gaining a
/// dimension), checked against flex: FastViTHD at 2×64² (stage 4 sees one token per image) and a
/// one-token Qwen2 prefill with grouped keys (one cached position), then a step.
pub fn edges<B: Backend>(tol: f64, what: &str) {
    let config = FastVitHdConfig::default()
        .with_layers([2, 2, 3, 2, 2])
        .with_embed_dims([8, 16, 32, 64, 128]);
    let weights = Weights::open(&fixtures().join("fastvithd/tiny_apple.safetensors")).unwrap();
    let flex = FastVitHd::<super::Cpu>::load(
        &config,
        &fastvithd_names(),
        &mut |n| weights.get(n),
        &Default::default(),
    )
    .unwrap();
    let model = FastVitHd::<B>::load(
        &config,
        &fastvithd_names(),
        &mut |n| weights.get(n),
        &Default::default(),
    )
    .unwrap();
    let shape = [2, 3, 64, 64];
    let pixels = TensorData::new(formula_image(7, "edge", shape.iter().product()), shape);
    let want = flex.forward(Tensor::from_data(pixels.clone(), &Default::default()));
    let got = model.forward(Tensor::<B, 4>::from_data(pixels, &Default::default()));
    let err = rel_l2(on_cpu(got), want);
    println!("{what} FastViTHD 2×64² against flex: rel-L2 {err:.3e}");
    assert!(err <= tol, "{what} FastViTHD 2×64²: {err:.3e} > {tol:e}");

    let Qwen2Case {
        config,
        weights,
        prompt,
        ..
    } = qwen2_case("gqa7_hd64_tied");
    fn run<C: Backend>(
        config: &Qwen2Config,
        weights: &HashMap<String, TensorData>,
        prompt: &[i64],
    ) -> Vec<Tensor<C, 3>> {
        let device = Default::default();
        let model = Qwen2::<C>::load(
            config,
            &qwen2_names(),
            &mut |n| weights.get(n).cloned(),
            &device,
        )
        .unwrap();
        let mut cache = model.new_cache(1, 2, &device).unwrap();
        let prefill = model.forward(ids(vec![prompt[1]], 1), &mut cache).unwrap();
        let step = model.forward(ids(vec![prompt[0]], 1), &mut cache).unwrap();
        vec![prefill, step]
    }
    for ((tag, got), want) in ["prefill", "step"]
        .iter()
        .zip(run::<B>(&config, &weights, &prompt))
        .zip(run::<super::Cpu>(&config, &weights, &prompt))
    {
        let err = rel_l2(on_cpu(got), want);
        println!("{what} Qwen2 one-token {tag} against flex: rel-L2 {err:.3e}");
        assert!(
            err <= tol,
            "{what} Qwen2 one-token {tag}: {err:.3e} > {tol:e}"
        );
    }
}

pub fn on_cpu<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<super::Cpu, D> {
    Tensor::from_data(t.into_data().convert::<f32>(), &Default::default())
}

/// The tiny release-layout FastVLM: features, projection and (f32) the greedy ids.
pub fn e2e<B: Backend>(tol: f64, what: &str, ids_equal: bool) {
    let e2e = fixtures().join("e2e");
    let model = FastVlm::<B>::load(&e2e.join("tiny-fastvlm"), &Default::default()).unwrap();
    let reference = Weights::open(&e2e.join("reference.safetensors")).unwrap();
    let img = image::load(&e2e.join("images/wide.png")).unwrap();
    let encoded = model.encode_pixels(model.pixels(&img));
    for (name, got) in [
        ("image_features", encoded.features),
        ("projected", encoded.projected),
    ] {
        let err = rel_l2(got.squeeze_dim::<2>(0), host::<B, 2>(&reference, name));
        println!("{what} e2e {name}: rel-L2 {err:.3e}");
        assert!(err <= tol, "{what} e2e {name}: {err:.3e} > {tol:e}");
    }
    let request = Request {
        image: Some(img),
        system: None,
        messages: vec![Message {
            role: Role::User,
            content: "Describe the image.".into(),
        }],
        options: GenerationOptions {
            temperature: 0.0,
            max_new_tokens: 24,
            ..Default::default()
        },
    };
    let out = model
        .generate(&request, &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap();
    let expected = super::token_ids(&reference, "generated_ids");
    let agree = out
        .token_ids
        .iter()
        .zip(&expected)
        .take_while(|(a, b)| a == b)
        .count();
    println!(
        "{what} e2e: first {agree} of {} greedy ids agree",
        expected.len()
    );
    if ids_equal {
        assert_eq!(out.token_ids, expected);
    } else {
        assert!(!out.token_ids.is_empty());
    }
}

/// Logits `[1, vocab]` of three decoding steps after `prompt` through `case`'s model, with every
/// linear layer and vocabulary table quantized where `scheme` says (checked: the decoding-step
/// kernels then read packed words).
pub fn decoding_steps<B: Backend>(
    case: &Qwen2Case,
    prompt: &[i64],
    scheme: Option<vlm_kernels::Quantization>,
) -> Vec<TensorData> {
    let device = Default::default();
    let mut model = Qwen2::<B>::load_quantized(
        &case.config,
        &qwen2_names(),
        &mut |n| case.weights.get(n).cloned(),
        &device,
        scheme,
    )
    .unwrap();
    let embeds = model.embed(ids(prompt.to_vec(), 1));
    if scheme.is_some() {
        let layers = case.config.num_hidden_layers;
        let tables = if case.config.tie_word_embeddings {
            1
        } else {
            2
        };
        assert_eq!(
            model.set_activations(vlm_kernels::Activations::F32),
            7 * layers + tables,
            "every linear layer and vocabulary table quantized"
        );
        let q = model.layers[0].self_attn.q_proj.quantized_weight().unwrap();
        assert_eq!(
            q.scales.val().dtype(),
            embeds.dtype(),
            "scales and offsets at the compute precision, as the row kernels read them"
        );
    }
    let mut cache = model.new_cache(1, prompt.len() + 3, &device).unwrap();
    model.forward_last(embeds, &mut cache).unwrap();
    [prompt[3], prompt[1], prompt[4]]
        .into_iter()
        .map(|id| {
            let embeds = model.embed(ids(vec![id], 1));
            model.forward_last(embeds, &mut cache).unwrap().into_data()
        })
        .collect()
}
