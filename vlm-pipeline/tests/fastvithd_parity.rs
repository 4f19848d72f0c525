//! FastViTHD against timm `fastvit_mci3` (inference form, exact softmax attention).
//! Fixtures: `cargo xtask golden` (xtask/python/fastvithd_golden.py).

mod common;

use std::collections::HashMap;

use burn::tensor::{Tensor, TensorData};
use common::{Cpu, fixtures, rel_l2};
use fastvithd::{FastVitHd, FastVitHdConfig, LoadError, WeightNaming};
use vlm_pipeline::{Weights, synthetic as formula};

/// f32 tolerance for every parity check (rel-L2 over the whole output).
const TOL: f64 = 1e-4;
const SEED: u64 = 2024;

fn tiny_config() -> FastVitHdConfig {
    FastVitHdConfig::new()
        .with_layers([2, 2, 3, 2, 2])
        .with_embed_dims([8, 16, 32, 64, 128])
}

fn tiny_io() -> Weights {
    Weights::open(&fixtures().join("fastvithd/tiny_io.safetensors")).unwrap()
}

fn tensor<const D: usize>(w: &Weights, name: &str) -> Tensor<Cpu, D> {
    Tensor::from_data(w.get(name).unwrap(), &Default::default())
}

fn load(file: &str, naming: WeightNaming) -> Result<FastVitHd<Cpu>, LoadError> {
    let weights = Weights::open(&fixtures().join("fastvithd").join(file)).unwrap();
    FastVitHd::load(
        &tiny_config(),
        &naming,
        &mut |n| weights.get(n),
        &Default::default(),
    )
}

/// The formula image the generator fed timm, `[batch, 3, h, w]`.
fn image(tag: &str) -> Tensor<Cpu, 4> {
    let shape = match tag {
        "square" => [2, 3, 192, 192],
        "wide" => [1, 3, 160, 224],
        _ => [1, 3, 256, 256],
    };
    let values = formula::image(SEED, &format!("image_{tag}"), shape.iter().product());
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn check_tiny(model: &FastVitHd<Cpu>, what: &str) {
    let io = tiny_io();
    for tag in ["square", "wide"] {
        let image = image(tag);
        let expected = tensor::<4>(&io, &format!("features_{tag}"));
        let got = model.forward(image);
        let err = rel_l2(got, expected);
        println!("{what} {tag}: rel-L2 {err:.3e}");
        assert!(err <= TOL, "{what} {tag}: rel-L2 {err:.3e} > {TOL:e}");
    }
}

#[test]
fn tiny_apple_bf16_matches_timm_at_two_resolutions() {
    let model = load("tiny_apple.safetensors", WeightNaming::default()).unwrap();
    check_tiny(&model, "apple bf16");
}

#[test]
fn tiny_timm_names_load_through_the_same_table() {
    let model = load(
        "tiny_timm.safetensors",
        WeightNaming::Timm {
            prefix: String::new(),
        },
    )
    .unwrap();
    check_tiny(&model, "timm f16");
}

#[test]
fn tokens_are_the_row_major_map_and_depend_on_the_image() {
    let model = load("tiny_apple.safetensors", WeightNaming::default()).unwrap();
    let images = image("square");
    let map = model.forward(images.clone());
    assert_eq!(map.dims(), [2, 256, 3, 3]);
    let tokens = model.tokens(images);
    assert_eq!(tokens.dims(), [2, 9, 256]);
    // Token t of image b is the pixel (t / 3, t % 3) of the map.
    let (b, t) = (1, 5);
    let token = tokens
        .clone()
        .narrow(0, b, 1)
        .narrow(1, t, 1)
        .reshape([256]);
    let pixel = map
        .clone()
        .narrow(0, b, 1)
        .narrow(2, t / 3, 1)
        .narrow(3, t % 3, 1)
        .reshape([256]);
    assert!(rel_l2(token, pixel) == 0.0);
    // The two images of the batch give clearly different features.
    let first = map.clone().narrow(0, 0, 1);
    let second = map.narrow(0, 1, 1);
    let change = rel_l2(first, second);
    assert!(
        change > 0.05,
        "output barely depends on the input: {change:.3e}"
    );
}

#[test]
fn released_config_matches_timm_at_256() {
    let config = FastVitHdConfig::released();
    let weights: HashMap<String, TensorData> = config
        .checkpoint_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let values = formula::tensor(SEED, &name, &shape);
            (name, TensorData::new(values, shape))
        })
        .collect();
    let naming = WeightNaming::Apple {
        prefix: String::new(),
    };
    let model = FastVitHd::<Cpu>::load(
        &config,
        &naming,
        &mut |n| weights.get(n).cloned(),
        &Default::default(),
    )
    .unwrap();
    drop(weights);
    let image = image("released");
    let expected: Tensor<Cpu, 4> = tensor(
        &Weights::open(&fixtures().join("fastvithd/released_256.safetensors")).unwrap(),
        "features",
    );
    let got = model.forward(image);
    assert_eq!(got.dims(), [1, 3072, 4, 4]);
    let err = rel_l2(got, expected);
    println!("released 256: rel-L2 {err:.3e}");
    assert!(err <= TOL, "released 256: rel-L2 {err:.3e} > {TOL:e}");
}

#[test]
fn shrunk_config_is_read_off_the_checkpoint() {
    let weights = Weights::open(&fixtures().join("fastvithd/tiny_apple.safetensors")).unwrap();
    let shape_of = |n: &str| weights.shape(n).map(<[usize]>::to_vec);
    let config = FastVitHdConfig::from_checkpoint(&WeightNaming::default(), &shape_of).unwrap();
    assert_eq!(config, tiny_config());
    let timm = Weights::open(&fixtures().join("fastvithd/tiny_timm.safetensors")).unwrap();
    let shape_of = |n: &str| timm.shape(n).map(<[usize]>::to_vec);
    let naming = WeightNaming::Timm {
        prefix: String::new(),
    };
    assert_eq!(
        FastVitHdConfig::from_checkpoint(&naming, &shape_of),
        Some(tiny_config())
    );
}
