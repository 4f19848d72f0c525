//! Loader behaviour on in-memory tensors.

use std::collections::HashMap;

use burn::backend::Flex;
use burn::tensor::TensorData;
use qwen2_decoder::{Convention, LoadError, Qwen2, Qwen2Config, names};

fn config(tied: bool) -> Qwen2Config {
    Qwen2Config::new(64, 96, 2, 4, 2, 50).with_tie_word_embeddings(tied)
}

fn tensors(config: &Qwen2Config) -> HashMap<String, TensorData> {
    config
        .checkpoint_tensors()
        .into_iter()
        .map(|(n, s)| {
            let len = s.iter().product::<usize>();
            (n, TensorData::new(vec![0.01f32; len], s))
        })
        .collect()
}

fn load(config: &Qwen2Config, t: &HashMap<String, TensorData>) -> Result<Qwen2<Flex>, LoadError> {
    let names = names(Convention::Apple).unwrap();
    Qwen2::load(
        config,
        &names,
        &mut |n| t.get(n).cloned(),
        &Default::default(),
    )
}

#[test]
fn tied_and_untied_read_exactly_their_tensors() {
    for tied in [true, false] {
        let config = config(tied);
        let t = tensors(&config);
        let mut asked = Vec::new();
        Qwen2::<Flex>::load(
            &config,
            &names(Convention::Apple).unwrap(),
            &mut |n| {
                asked.push(n.to_string());
                t.get(n).cloned()
            },
            &Default::default(),
        )
        .unwrap();
        // Each listed tensor once; beyond them only the probes for MLX-quantized storage
        // (`{name}.scales`), which a float checkpoint answers with nothing.
        let (found, probes): (Vec<&String>, Vec<&String>) =
            asked.iter().partition(|n| t.contains_key(n.as_str()));
        assert!(
            probes.iter().all(|n| n.ends_with(".scales")),
            "asked for tensors the checkpoint does not list: {probes:?}"
        );
        let unique: std::collections::BTreeSet<_> = found.iter().collect();
        assert_eq!(found.len(), t.len());
        assert_eq!(unique.len(), t.len());
        assert_eq!(asked.iter().any(|n| n == "lm_head.weight"), !tied);
    }
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let config = config(false);
    let mut t = tensors(&config);
    t.remove("lm_head.weight");
    assert_eq!(
        load(&config, &t).unwrap_err(),
        LoadError::Missing {
            name: "lm_head.weight".into(),
            expected: vec![50, 64]
        }
    );
    let mut t = tensors(&config);
    t.insert(
        "model.layers.1.self_attn.k_proj.weight".into(),
        TensorData::new(vec![0f32; 64 * 64], [64, 64]),
    );
    assert_eq!(
        load(&config, &t).unwrap_err().to_string(),
        "tensor `model.layers.1.self_attn.k_proj.weight` has shape [64, 64], expected [32, 64]"
    );
}

#[test]
fn inconsistent_config_is_an_error() {
    let bad = Qwen2Config::new(64, 96, 2, 5, 2, 50);
    assert!(matches!(
        load(&bad, &HashMap::new()),
        Err(LoadError::Config(_))
    ));
    let bad = Qwen2Config::new(64, 96, 2, 4, 3, 50);
    assert!(matches!(
        load(&bad, &HashMap::new()),
        Err(LoadError::Config(_))
    ));
}

/// Vocabulary tensors split into blocks (as wgpu's 128 MiB binding cap needs for real models)
/// give the same embeddings and logits as one block.
#[test]
fn vocabulary_blocks_change_nothing() {
    use burn::tensor::{Int, Tensor};
    for tied in [true, false] {
        let config = config(tied);
        // Distinct values per element, so a wrong row or column would show.
        let t: HashMap<String, TensorData> = config
            .checkpoint_tensors()
            .into_iter()
            .map(|(n, s)| {
                let len = s.iter().product::<usize>();
                let salt = n.len() as f32;
                let v = (0..len)
                    .map(|i| ((i as f32 * 0.37 + salt).sin()) * 0.05)
                    .collect();
                (n, TensorData::new(v, s))
            })
            .collect();
        let device = Default::default();
        let whole = load(&config, &t).unwrap();
        // 64-wide rows of 4 bytes: 7 rows per block, 50 rows → 8 blocks, the last one short.
        let blocked = Qwen2::<Flex>::load_blocked(
            &config,
            &names(Convention::Apple).unwrap(),
            &mut |n| t.get(n).cloned(),
            &device,
            7 * 64 * 4,
        )
        .unwrap();
        assert_eq!(blocked.embed_tokens.blocks.len(), 8);
        let ids = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(vec![0i64, 6, 7, 13, 49, 21, 48, 1], [2, 4]),
            &device,
        );
        let a = whole.embed(ids.clone());
        let b = blocked.embed(ids.clone());
        assert_eq!(a.to_data(), b.to_data(), "embeddings differ (tied {tied})");
        // A host-side id's row (a decoding step's input) is the same row, in any block.
        for (i, id) in [0usize, 6, 7, 13, 49].into_iter().enumerate() {
            let want = whole.embed(Tensor::from_data(
                TensorData::new(vec![id as i64], [1, 1]),
                &device,
            ));
            for model in [&whole, &blocked] {
                let row = model.embed_token(id).expect("inside the vocabulary");
                assert_eq!(row.dims(), [1, 1, 64]);
                assert_eq!(row.to_data(), want.to_data(), "row of id {id} ({i})");
            }
        }
        assert!(whole.embed_token(50).is_none() && blocked.embed_token(50).is_none());
        let mut ca = whole.new_cache(2, 8, &device).unwrap();
        let mut cb = blocked.new_cache(2, 8, &device).unwrap();
        let la = whole.forward(ids.clone(), &mut ca).unwrap();
        let lb = blocked.forward(ids, &mut cb).unwrap();
        assert_eq!(la.dims(), [2, 4, 50]);
        la.to_data()
            .assert_approx_eq::<f32>(&lb.to_data(), burn::tensor::Tolerance::absolute(1e-6));
    }
}
