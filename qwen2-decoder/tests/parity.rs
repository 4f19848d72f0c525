//! Qwen2 against transformers' `Qwen2ForCausalLM` (eager, float32) on shrunk configurations:
//! GQA ratios 1, 2 and 7; head_dim 64 and 128; tied and untied heads.
//! Fixtures: `cargo xtask golden` (xtask/python/qwen2_golden.py); weights from the formula.

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use qwen2_decoder::{Convention, DecodeError, Qwen2, Qwen2Config, names};
use vlm_kernels::testing::{Fixture, checkpoint, fixtures, rel_l2};

type Cpu = Flex;

const TOL: f64 = 1e-4;
/// `fixtures/qwen2/{name}.safetensors`: transformers' outputs and the configuration they were
/// made with; the weights come from the formula (seed 2025).
const CASES: [&str; 3] = ["gqa1_hd64_tied", "gqa2_hd128_untied", "gqa7_hd64_tied"];

struct Case {
    config: Qwen2Config,
    model: Qwen2<Cpu>,
    golden: Fixture,
}

fn case(name: &str) -> Case {
    let golden = Fixture::open(&fixtures().join(format!("qwen2/{name}.safetensors")));
    let config: Qwen2Config = serde_json::from_str(golden.metadata("config").unwrap()).unwrap();
    let names = names(Convention::Apple).unwrap();
    let mut weights = checkpoint(2025, &config.checkpoint_tensors(), &names);
    // Apple's tied checkpoints still store a head; a tied model must not use it.
    let shape = [config.vocab_size, config.hidden_size];
    let junk = TensorData::new(vec![1e3f32; shape[0] * shape[1]], shape);
    weights.entry("lm_head.weight".into()).or_insert(junk);
    let model = Qwen2::load(
        &config,
        &names,
        &mut |n| weights.get(n).cloned(),
        &Default::default(),
    )
    .unwrap();
    Case {
        config,
        model,
        golden,
    }
}

fn float<const D: usize>(w: &Fixture, name: &str) -> Tensor<Cpu, D> {
    w.tensor(name)
}

fn ids(w: &Fixture, name: &str) -> Vec<i64> {
    w.ids(name)
}

fn id_tensor(ids: &[i64]) -> Tensor<Cpu, 2, Int> {
    Tensor::from_data(
        TensorData::new(ids.to_vec(), [1, ids.len()]),
        &Default::default(),
    )
}

fn argmax(logits: Tensor<Cpu, 2>) -> i64 {
    logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap()[0]
}

#[test]
fn prefill_logits_match_from_ids_and_from_embeddings() {
    for name in CASES {
        let Case { model, golden, .. } = case(name);
        let prompt = ids(&golden, "ids");
        let mut cache = model
            .new_cache(1, prompt.len(), &Default::default())
            .unwrap();
        let got = model.forward(id_tensor(&prompt), &mut cache).unwrap();
        let err = rel_l2(got, float(&golden, "logits_ids"));
        println!("{name} prefill from ids: rel-L2 {err:.3e}");
        assert!(err <= TOL, "{name} ids: {err:.3e}");

        cache.reset();
        let got = model
            .forward_embeds(float(&golden, "embeds"), &mut cache)
            .unwrap();
        let err = rel_l2(got, float(&golden, "logits_embeds"));
        println!("{name} prefill from embeddings: rel-L2 {err:.3e}");
        assert!(err <= TOL, "{name} embeds: {err:.3e}");
    }
}

#[test]
fn greedy_continuation_matches_and_cached_steps_equal_recomputation() {
    for name in CASES {
        let Case {
            config,
            model,
            golden,
        } = case(name);
        let prompt = ids(&golden, "ids");
        let expected = ids(&golden, "greedy");
        assert!(expected.len() >= 16);
        let device = Default::default();

        // Prefill, then one token per step on the cache.
        let total = prompt.len() + expected.len();
        let mut cache = model.new_cache(1, total, &device).unwrap();
        let mut step_logits = vec![
            model
                .forward_last(model.embed(id_tensor(&prompt)), &mut cache)
                .unwrap(),
        ];
        let mut generated = vec![argmax(step_logits[0].clone())];
        while generated.len() < expected.len() {
            let last = *generated.last().unwrap();
            let logits = model
                .forward_last(model.embed(id_tensor(&[last])), &mut cache)
                .unwrap();
            generated.push(argmax(logits.clone()));
            step_logits.push(logits);
        }
        assert_eq!(
            generated, expected,
            "{name}: greedy ids differ from transformers"
        );
        assert_eq!(cache.len(), total - 1);

        // The same sequence recomputed at once, without a cache of earlier steps.
        let mut sequence = prompt.clone();
        sequence.extend(&generated[..generated.len() - 1]);
        let mut fresh = model.new_cache(1, sequence.len(), &device).unwrap();
        let full = model.forward(id_tensor(&sequence), &mut fresh).unwrap();
        let mut worst = 0.0f64;
        for (step, logits) in step_logits.into_iter().enumerate() {
            let row = full
                .clone()
                .narrow(1, prompt.len() - 1 + step, 1)
                .reshape([1, config.vocab_size]);
            worst = worst.max(rel_l2(logits, row));
        }
        println!(
            "{name}: {} greedy ids match; cached vs recomputed worst rel-L2 {worst:.3e}",
            expected.len()
        );
        assert!(
            worst <= TOL,
            "{name}: cached steps drift from recomputation: {worst:.3e}"
        );
    }
}

#[test]
fn logits_depend_on_the_prompt() {
    let Case { model, golden, .. } = case(CASES[1]);
    let prompt = ids(&golden, "ids");
    let mut other = prompt.clone();
    other.rotate_right(1);
    let run = |p: &[i64]| {
        let mut cache = model.new_cache(1, p.len(), &Default::default()).unwrap();
        model
            .forward_last(model.embed(id_tensor(p)), &mut cache)
            .unwrap()
    };
    let change = rel_l2(run(&other), run(&prompt));
    assert!(
        change > 0.05,
        "last logits barely depend on the prompt: {change:.3e}"
    );
}

#[test]
fn context_limits_are_errors() {
    let Case { model, golden, .. } = case(CASES[0]);
    let device = Default::default();
    assert_eq!(
        model.new_cache(1, 40_000, &device).unwrap_err(),
        DecodeError::ContextFull {
            needed: 40_000,
            capacity: 32_768
        }
    );
    let prompt = ids(&golden, "ids");
    let mut cache = model.new_cache(1, prompt.len() + 1, &device).unwrap();
    model.forward(id_tensor(&prompt), &mut cache).unwrap();
    model.forward(id_tensor(&[1]), &mut cache).unwrap();
    let err = model.forward(id_tensor(&[2]), &mut cache).unwrap_err();
    assert_eq!(
        err,
        DecodeError::ContextFull {
            needed: prompt.len() + 2,
            capacity: prompt.len() + 1
        }
    );
    assert!(err.to_string().contains("context"), "{err}");
}
