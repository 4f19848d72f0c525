//! The parity checks again on wgpu (in CI: Mesa's lavapipe, a Vulkan driver on the CPU), f32
//! within the CPU tolerance (rel-L2 ≤ 1e-4) against the same references (timm, transformers,
//! the tiny release checkpoint). f16 is `wgpu_f16_parity.rs`.
//!
//! Without a Vulkan adapter the tests fail under CI (`CI` set; `.ci/run` installs
//! `mesa-vulkan-drivers`) and are skipped with a notice elsewhere.

mod common;

use burn::backend::Wgpu;
use burn::tensor::{DType, Tensor, TensorData};
use common::wgpu::*;
use common::{Qwen2Case, qwen2_case, rel_l2};
use qwen2_decoder::{Convention, Qwen2, names};

/// wgpu without burn's fusion in front: the ops layer's CubeCL kernels launched directly rather
/// than as custom operations of the fusion stream.
type Bare = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

#[test]
fn wgpu_f32_matches_the_references() {
    if !adapter(DType::F32) {
        return;
    }
    fastvithd::<Wgpu<f32>>(1e-4, "wgpu f32");
    qwen2::<Wgpu<f32>>(1e-4, "wgpu f32");
    edges::<Wgpu<f32>>(1e-4, "wgpu f32");
    e2e::<Wgpu<f32>>(1e-4, "wgpu f32", true);
}

/// A decoding step at batch 2 after a batch-2 prefill, against each sequence alone.
///
/// On burn 0.21's wgpu backend the second sequence's step logits are wrong (rel-L2 0.64 on
/// lavapipe) while the prefill and the first sequence match; the attention kernel, the cache
/// write and the rotary embedding each pass in isolation. With `qwen2_decoder`'s own
/// decoding-step attention kernel in place of burn's the error is unchanged (0.636), so burn's
/// attention is not the cause. FastVLM only decodes at batch 1.
#[test]
#[ignore = "burn 0.21 wgpu: the second sequence of a batch-2 decoding step is wrong (issue #5)"]
fn wgpu_f32_batch2_decoding_step() {
    if !adapter(DType::F32) {
        return;
    }
    type B = Wgpu<f32>;
    let Qwen2Case {
        config,
        weights,
        prompt,
        ..
    } = qwen2_case("gqa1_hd64_tied");
    let model = Qwen2::<B>::load(
        &config,
        &names(Convention::Apple).unwrap(),
        &mut |n| weights.get(n).cloned(),
        &Default::default(),
    )
    .unwrap();
    let step_alone = |p: &[i64]| {
        let mut cache = model
            .new_cache(1, p.len() + 1, &Default::default())
            .unwrap();
        model.forward(ids(p.to_vec(), 1), &mut cache).unwrap();
        model.forward(ids(vec![p[0]], 1), &mut cache).unwrap()
    };
    let want = Tensor::cat(vec![step_alone(&prompt), step_alone(&reversed(&prompt))], 0);
    let (_, mut cache) = prefill_batch2::<B>(&model, &prompt);
    let got = model
        .forward(ids(vec![prompt[0], reversed(&prompt)[0]], 2), &mut cache)
        .unwrap();
    let err = rel_l2(got, want);
    assert!(err <= 1e-4, "batch 2 step: rel-L2 {err:.3e}");
}

/// Decoding steps (`Qwen2DecoderLayer::step`: the ops layer's fused rows and one-kernel
/// attention on CubeCL backends) against the same steps on the CPU: three steps after a 300-position prompt, so the cache spans
/// more than one of the kernel's 256-position chunks, for each fixture's head layout (kv groups
/// of 1, 2 and 7; head_dim 64 and 128), through burn's fusion and on the bare CubeCL backend.
#[test]
fn wgpu_decode_attention_matches_burn() {
    use burn::backend::Flex;
    use vlm_kernels::ops::uses_cubecl_kernels;

    if !adapter(DType::F32) {
        return;
    }
    assert!(uses_cubecl_kernels::<Wgpu<f32>>() && uses_cubecl_kernels::<Bare>());
    assert!(!uses_cubecl_kernels::<Flex>());

    for name in common::QWEN2_CASES {
        let case = qwen2_case(name);
        let prompt: Vec<i64> = case.prompt.iter().copied().cycle().take(300).collect();
        let want = decoding_steps::<Flex>(&case, &prompt, None);
        for (backend, got) in [
            ("fused", decoding_steps::<Wgpu<f32>>(&case, &prompt, None)),
            ("bare", decoding_steps::<Bare>(&case, &prompt, None)),
        ] {
            for (i, (got, want)) in got.into_iter().zip(&want).enumerate() {
                let cpu = Default::default();
                let err = rel_l2(
                    Tensor::<Flex, 2>::from_data(got, &cpu),
                    Tensor::<Flex, 2>::from_data(want.clone(), &cpu),
                );
                assert!(
                    err <= 1e-4,
                    "{name} step {i} on {backend}: rel-L2 {err:.3e}"
                );
            }
        }
        // The steps depend on what is cached: another prompt, other logits.
        let other = decoding_steps::<Wgpu<f32>>(&case, &reversed(&prompt), None);
        let cpu = Default::default();
        let moved = rel_l2(
            Tensor::<Flex, 2>::from_data(other[0].clone(), &cpu),
            Tensor::<Flex, 2>::from_data(want[0].clone(), &cpu),
        );
        assert!(
            moved > 1e-3,
            "{name}: step logits ignore the cache (rel-L2 {moved:.3e})"
        );
    }
}

/// Decoding steps of a quantized Qwen2 (q8 and q4: every linear layer and the vocabulary table,
/// so the ops layer's row kernels read the packed words) against the same quantized model on
/// the CPU (flex's kernels, which hold to the dequantized product within 1e-6), for each
/// fixture's head layout, through burn's fusion and on the bare CubeCL backend.
#[test]
fn wgpu_quantized_decoding_steps_match_flex() {
    use burn::backend::Flex;
    use vlm_kernels::Quantization;

    if !adapter(DType::F32) {
        return;
    }

    let cpu = Default::default();
    let logits = |data: &TensorData| Tensor::<Flex, 2>::from_data(data.clone(), &cpu);
    for name in common::QWEN2_CASES {
        let case = qwen2_case(name);
        let prompt: Vec<i64> = case.prompt.iter().copied().cycle().take(40).collect();
        let mut by_scheme = Vec::new();
        for scheme in [Quantization::Q8, Quantization::Q4] {
            let want = decoding_steps::<Flex>(&case, &prompt, Some(scheme));
            for (backend, got) in [
                (
                    "fused",
                    decoding_steps::<Wgpu<f32>>(&case, &prompt, Some(scheme)),
                ),
                ("bare", decoding_steps::<Bare>(&case, &prompt, Some(scheme))),
            ] {
                for (i, (got, want)) in got.iter().zip(&want).enumerate() {
                    let err = rel_l2(logits(got), logits(want));
                    assert!(
                        err <= 1e-5,
                        "{name} {scheme} step {i} on {backend}: rel-L2 {err:.3e}"
                    );
                }
            }
            by_scheme.push(want);
        }
        // The schemes differ: the steps read the quantized weights, not a copy at f32.
        let apart = rel_l2(logits(&by_scheme[0][0]), logits(&by_scheme[1][0]));
        assert!(apart > 1e-4, "{name}: q8 and q4 agree to {apart:.3e}");
    }
}
