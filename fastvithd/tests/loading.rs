//! Loader behaviour and load-time folding, on in-memory tensors.

use std::collections::HashMap;

use burn::backend::Flex;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use fastvithd::{Convention, FastVitHd, FastVitHdConfig, LoadError, fold_batch_norm, names};
use vlm_kernels::Depthwise;

type B = Flex;

fn tiny() -> FastVitHdConfig {
    FastVitHdConfig::default()
        .with_layers([1, 1, 1, 1, 1])
        .with_embed_dims([4, 8, 16, 32, 64])
}

/// Deterministic non-trivial values (a small LCG), so folding and shapes are really exercised.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn checkpoint(config: &FastVitHdConfig, prefix: &str) -> HashMap<String, TensorData> {
    config
        .checkpoint_tensors()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let mut v = values(shape.iter().product(), i as u64);
            if name.ends_with("running_var") {
                v.iter_mut().for_each(|x| *x = x.abs() + 0.5);
            }
            (format!("{prefix}{name}"), TensorData::new(v, shape))
        })
        .collect()
}

fn load(
    config: &FastVitHdConfig,
    tensors: &HashMap<String, TensorData>,
) -> Result<FastVitHd<B>, LoadError> {
    FastVitHd::load(
        config,
        &names(Convention::Apple).unwrap(),
        &mut |n| tensors.get(n).cloned(),
        &Default::default(),
    )
}

#[test]
fn loads_exactly_the_listed_tensors() {
    let config = tiny();
    let tensors = checkpoint(&config, fastvithd::APPLE_PREFIX);
    let mut asked = Vec::new();
    FastVitHd::<B>::load(
        &config,
        &names(Convention::Apple).unwrap(),
        &mut |n| {
            asked.push(n.to_string());
            tensors.get(n).cloned()
        },
        &Default::default(),
    )
    .unwrap();
    // Besides the listed tensors, a linear asks only whether its weight is stored quantized
    // (`{name}.scales`, MLX's convention), which a float checkpoint answers with nothing.
    let (mut found, probes): (Vec<String>, Vec<String>) =
        asked.into_iter().partition(|n| tensors.contains_key(n));
    assert!(
        probes.iter().all(|n| n.ends_with(".scales")),
        "asked for tensors the checkpoint does not list: {probes:?}"
    );
    let mut listed: Vec<String> = tensors.keys().cloned().collect();
    listed.sort();
    found.sort();
    assert_eq!(found, listed);
}

#[test]
fn released_config_has_the_published_parameter_count() {
    let config = FastVitHdConfig::released();
    let params: usize = config
        .checkpoint_tensors()
        .iter()
        .filter(|(name, _)| !name.contains("running_"))
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum();
    // 125.07 M with head.proj (3072 × 768), 122.71 M without (reference §1.4).
    assert_eq!(params, 122_714_208);
    assert_eq!(params + 3072 * 768, 125_073_504);
    assert_eq!(config.out_channels(), 3072);
    assert_eq!(FastVitHdConfig::grid(1024, 1024), (16, 16));
    assert_eq!(FastVitHdConfig::grid(1000, 700), (16, 11));
}

#[test]
fn missing_tensor_is_named() {
    let config = tiny();
    let mut tensors = checkpoint(&config, fastvithd::APPLE_PREFIX);
    let name = format!("{}network.4.0.convffn.fc1.weight", fastvithd::APPLE_PREFIX);
    tensors.remove(&name);
    let err = load(&config, &tensors).unwrap_err();
    assert_eq!(
        err,
        LoadError::Missing {
            name: name.clone(),
            expected: vec![64, 16, 1, 1]
        }
    );
    assert!(err.to_string().contains(&name), "{err}");
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let config = tiny();
    let mut tensors = checkpoint(&config, fastvithd::APPLE_PREFIX);
    let name = format!(
        "{}network.7.0.token_mixer.qkv.weight",
        fastvithd::APPLE_PREFIX
    );
    tensors.insert(name.clone(), TensorData::new(values(96 * 31, 1), [96, 31]));
    let err = load(&config, &tensors).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("tensor `{name}` has shape [96, 31], expected [96, 32]")
    );
}

#[test]
fn integer_tensor_is_rejected_by_name() {
    let config = tiny();
    let mut tensors = checkpoint(&config, fastvithd::APPLE_PREFIX);
    let name = format!("{}conv_exp.reparam_conv.bias", fastvithd::APPLE_PREFIX);
    tensors.insert(name.clone(), TensorData::new(vec![1i64; 128], [128]));
    assert!(matches!(load(&config, &tensors), Err(LoadError::DType { name: n, .. }) if n == name));
}

#[test]
fn training_form_checkpoint_is_recognised() {
    let config = tiny();
    let mut tensors = checkpoint(&config, fastvithd::APPLE_PREFIX);
    let name = format!(
        "{}patch_embed.0.reparam_conv.weight",
        fastvithd::APPLE_PREFIX
    );
    let data = tensors.remove(&name).unwrap();
    tensors.insert(name.replace("reparam_conv", "rbr_conv.0.conv"), data);
    assert!(matches!(
        load(&config, &tensors),
        Err(LoadError::TrainForm { .. })
    ));
}

#[test]
fn inconsistent_config_is_an_error_not_a_panic() {
    let config = tiny().with_embed_dims([4, 8, 16, 33, 66]);
    let err = load(&config, &HashMap::new()).unwrap_err();
    assert!(matches!(err, LoadError::Config(_)), "{err}");
}

#[test]
fn batch_norm_folds_into_the_depthwise_conv() {
    let device = Default::default();
    let c = 3;
    let x = Tensor::<B, 4>::from_data(TensorData::new(values(c * 64, 7), [1, c, 8, 8]), &device);
    let w = values(c * 49, 8);
    let (gamma, beta) = (values(c, 9), values(c, 10));
    let mean = values(c, 11);
    let var: Vec<f32> = values(c, 12).iter().map(|v| v.abs() + 0.1).collect();
    let options = || ConvOptions::new([1, 1], [3, 3], [1, 1], c);
    let weight = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [c, 1, 7, 7]), &device);
    let vec1 = |v: &[f32]| {
        Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [c]), &device).reshape([1, c, 1, 1])
    };

    // Reference: conv, then eval-mode BatchNorm.
    let y = conv2d(x.clone(), weight(w.clone()), None, options());
    let expected = (y - vec1(&mean)) / (vec1(&var) + 1e-5).sqrt() * vec1(&gamma) + vec1(&beta);

    let mut folded = w;
    let bias = fold_batch_norm(&mut folded, &gamma, &beta, &mean, &var, 1e-5);
    let bias = Tensor::<B, 1>::from_data(TensorData::new(bias, [c]), &device);
    let got = conv2d(x, weight(folded), Some(bias), options());

    let diff = (got - expected.clone()).abs().max().into_scalar();
    let scale = expected.abs().max().into_scalar();
    assert!(
        diff <= 1e-5 * scale,
        "folded BN differs by {diff} (scale {scale})"
    );
}

/// Every spatial convolution of the network but the stem's first is per-channel, so all of them
/// take the ops layer's per-channel convolution (`vlm_kernels::ops::depthwise_conv2d`); the
/// geometry it reads off each module is that of `mci.py`.
#[test]
fn spatial_convolutions_take_the_per_channel_kernel() {
    let config = tiny();
    let model = load(&config, &checkpoint(&config, fastvithd::APPLE_PREFIX)).unwrap();
    let opts = |kernel, stride, multiplier, gelu| {
        Some(Depthwise {
            kernel,
            stride,
            padding: kernel / 2,
            multiplier,
            gelu,
        })
    };
    assert_eq!(Depthwise::of(&model.stem[0].reparam_conv, true), None);
    assert_eq!(
        Depthwise::of(&model.stem[1].reparam_conv, true),
        opts(3, 2, 1, true)
    );
    for stage in &model.stages {
        for block in &stage.repmixer_blocks {
            assert_eq!(
                Depthwise::of(&block.token_mixer, false),
                opts(3, 1, 1, false)
            );
            assert_eq!(
                Depthwise::of(&block.convffn.conv, false),
                opts(7, 1, 1, false)
            );
        }
        for block in &stage.attention_blocks {
            assert_eq!(
                Depthwise::of(&block.convffn.conv, false),
                opts(7, 1, 1, false)
            );
        }
        if let Some(down) = &stage.downsample {
            assert_eq!(Depthwise::of(&down.large_kernel, true), opts(7, 2, 2, true));
        }
        if let Some(pos) = &stage.pos_emb {
            assert_eq!(
                Depthwise::of(&pos.reparam_conv, false),
                opts(7, 1, 1, false)
            );
        }
    }
    assert_eq!(
        Depthwise::of(&model.conv_exp.reparam_conv, false),
        opts(3, 1, 2, false)
    );
}
