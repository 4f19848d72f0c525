//! The whole pipeline against the reference (`cargo xtask golden` → xtask/python/e2e_golden.py):
//! preprocessing of several image kinds, and a tiny FastVLM checkpoint in Apple's release
//! layout — tokenizer ids, image features, greedy ids and top-5 log-probabilities.

mod common;

use std::path::PathBuf;

use burn::tensor::Tensor;
use common::{Cpu, fixtures, rel_l2};
use vlm_pipeline::prompt::{DEFAULT_SYSTEM, prompt_ids};
use vlm_pipeline::{
    AspectRatio, FastVlm, GenerationOptions, Message, Request, Role, Weights, image,
};

fn e2e() -> PathBuf {
    fixtures().join("e2e")
}

#[test]
fn preprocessing_matches_pillow_for_every_image_kind() {
    let reference = Weights::open(&e2e().join("pixels.safetensors")).unwrap();
    let mut checked = 0;
    for name in [
        "wide.png",
        "gray.png",
        "rgba.png",
        "palette.png",
        "gray16.png",
        "photo.jpg",
    ] {
        let img = image::load(&e2e().join("images").join(name)).unwrap();
        for size in [96, 40] {
            let expected = reference
                .get(&format!("{name}@{size}"))
                .unwrap()
                .into_vec::<i64>()
                .unwrap();
            let got = image::preprocess(&img, size, AspectRatio::Pad);
            // Reference is HWC uint8; ours is CHW in [0, 1].
            let mut worst = 0.0f64;
            for y in 0..size {
                for x in 0..size {
                    for c in 0..3 {
                        let e = expected[(y * size + x) * 3 + c] as f64 / 255.0;
                        let g = got[c * size * size + y * size + x] as f64;
                        worst = worst.max((e - g).abs());
                    }
                }
            }
            println!(
                "{name} @ {size}: max |pixel difference| {:.3}/255",
                worst * 255.0
            );
            // Every kind decodes to Pillow's bytes (JPEG too: tests/jpeg.rs), so resizing must
            // be bit-exact.
            assert!(
                worst * 255.0 < 1e-3,
                "{name} @ {size}: {:.3}/255 off",
                worst * 255.0
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

fn load() -> FastVlm<Cpu> {
    FastVlm::load(&e2e().join("tiny-fastvlm"), &Default::default()).unwrap()
}

#[test]
fn prompt_ids_match_the_reference_tokenizer() {
    let model = load();
    let reference = Weights::open(&e2e().join("reference.safetensors")).unwrap();
    let expected = reference
        .get("prompt_ids")
        .unwrap()
        .into_vec::<i64>()
        .unwrap();
    let messages = [Message {
        role: Role::User,
        content: "Describe the image.".into(),
    }];
    assert_eq!(
        prompt_ids(&model.tokenizer, DEFAULT_SYSTEM, &messages, true).unwrap(),
        expected
    );
}

#[test]
fn tiny_checkpoint_matches_the_reference_end_to_end() {
    let model = load();
    let reference = Weights::open(&e2e().join("reference.safetensors")).unwrap();
    let img = image::load(&e2e().join("images/wide.png")).unwrap();

    let encoded = model.encode_pixels(model.pixels(&img));
    for (name, got) in [
        ("image_features", encoded.features),
        ("projected", encoded.projected),
    ] {
        let expected: Tensor<Cpu, 2> =
            Tensor::from_data(reference.get(name).unwrap(), &Default::default());
        let err = rel_l2(got.squeeze_dim::<2>(0), expected);
        println!("{name}: rel-L2 {err:.3e}");
        assert!(err <= 1e-4, "{name}: rel-L2 {err:.3e}");
    }

    let request = Request {
        image: Some(img.clone()),
        system: None,
        messages: vec![Message {
            role: Role::User,
            content: "Describe the image.".into(),
        }],
        options: GenerationOptions {
            temperature: 0.0,
            max_new_tokens: 24,
            logprobs: Some(5),
            ..Default::default()
        },
    };
    let mut streamed = Vec::new();
    let out = model
        .generate(&request, &mut |e| {
            streamed.extend(e.token);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    let expected_ids = common::token_ids(&reference, "generated_ids");
    assert_eq!(out.token_ids, expected_ids);
    assert_eq!(streamed, expected_ids);
    assert_eq!(out.text, reference.metadata()["text"]);

    let top_ids = reference.get("top_ids").unwrap().into_vec::<i64>().unwrap();
    let top_lp = reference
        .get("top_logprobs")
        .unwrap()
        .into_vec::<f32>()
        .unwrap();
    let chosen = reference
        .get("chosen_logprobs")
        .unwrap()
        .into_vec::<f32>()
        .unwrap();
    let steps = out.logprobs.unwrap();
    assert_eq!(steps.len(), expected_ids.len());
    let mut worst = 0.0f32;
    for (s, step) in steps.iter().enumerate() {
        assert_eq!(step.top.len(), 5);
        worst = worst.max((step.logprob - chosen[s]).abs());
        for (k, (id, lp)) in step.top.iter().enumerate() {
            assert_eq!(*id as i64, top_ids[s * 5 + k], "step {s} rank {k}");
            worst = worst.max((lp - top_lp[s * 5 + k]).abs());
        }
    }
    println!(
        "{} greedy ids match; worst top-5 logprob difference {worst:.2e}",
        steps.len()
    );
    assert!(worst <= 1e-3, "logprobs differ by {worst}");
    assert!(out.metrics.ttft_ms > 0.0 && out.metrics.image_tokens == 16);
}

#[test]
fn different_images_give_different_answers() {
    let model = load();
    let a = image::load(&e2e().join("images/wide.png")).unwrap();
    let b = image::load(&e2e().join("images/photo.jpg")).unwrap();
    let pa = model.encode_pixels(model.pixels(&a)).projected;
    let pb = model.encode_pixels(model.pixels(&b)).projected;
    let change = rel_l2(pa, pb);
    assert!(
        change > 0.05,
        "projected image tokens barely depend on the image: {change:.3e}"
    );
}

/// The same tiny checkpoint in Hugging Face's `fast_vlm` layout, written by transformers itself
/// (`save_pretrained`: nested `text_config`/`vision_config`, `rope_parameters`, timm's names
/// under `model.vision_tower.timm_model.`, `model.language_model.*`): recognised by its config,
/// loaded through the Hugging Face name maps, and equal to transformers' own outputs for it
/// (projected image tokens of a formula image, logits of a fixed id sequence), and to the
/// Apple-layout checkpoint it was made from.
#[test]
fn hugging_face_layout_matches_transformers() {
    use burn::tensor::{Int, TensorData};
    use qwen2_decoder::Convention;

    let model = FastVlm::<Cpu>::load(&e2e().join("tiny-fastvlm-hf"), &Default::default()).unwrap();
    let config = &model.config;
    assert_eq!(config.convention, Convention::HuggingFace);
    assert_eq!(
        (config.image_size, config.aspect_ratio),
        (256, AspectRatio::CenterCrop)
    );
    assert_eq!(config.decoder.rope_theta, 1e6);
    let reference = Weights::open(&e2e().join("reference_hf.safetensors")).unwrap();
    let device = Default::default();

    let values = vlm_kernels::testing::image(77, "hf", 3 * 256 * 256);
    let pixels = Tensor::<Cpu, 4>::from_data(TensorData::new(values, [1, 3, 256, 256]), &device);
    let projected = model.encode_pixels(pixels.clone()).projected;
    let expected = Tensor::<Cpu, 3>::from_data(reference.get("projected").unwrap(), &device);
    let err = rel_l2(projected.clone(), expected);
    println!("Hugging Face layout, projected image tokens: rel-L2 {err:.3e}");
    assert!(err <= 1e-4, "projected: {err:.3e}");
    let apple = load().encode_pixels(pixels).projected;
    assert!(rel_l2(projected, apple) <= 1e-6);

    let ids = reference.get("ids").unwrap();
    let n = ids.shape[1];
    let ids = Tensor::<Cpu, 2, Int>::from_data(ids, &device);
    let mut cache = model.decoder.new_cache(1, n, &device).unwrap();
    let logits = model.decoder.forward(ids, &mut cache).unwrap();
    let expected = Tensor::<Cpu, 3>::from_data(reference.get("logits").unwrap(), &device);
    let err = rel_l2(logits, expected);
    println!("Hugging Face layout, logits: rel-L2 {err:.3e}");
    assert!(err <= 1e-4, "logits: {err:.3e}");
}
