//! The parity checks again on wgpu (in CI: Mesa's lavapipe, a Vulkan driver on the CPU), f32
//! within the CPU tolerance (rel-L2 ≤ 1e-4) against the same references (timm, transformers,
//! the tiny release checkpoint). f16 is `wgpu_f16_parity.rs`.
//!
//! Without a Vulkan adapter the tests fail under CI (`CI` set; `.ci/run` installs
//! `mesa-vulkan-drivers`) and are skipped with a notice elsewhere.

mod common;

use burn::backend::Wgpu;
use burn::tensor::{DType, Tensor};
use common::wgpu::*;
use common::{Qwen2Case, qwen2_case, rel_l2};
use qwen2_decoder::Qwen2;

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
/// write and the rotary embedding each pass in isolation. FastVLM only decodes at batch 1.
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
        "",
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
