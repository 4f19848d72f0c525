//! FastViTHD against timm `fastvit_mci3` (inference form, exact softmax attention).
//! Fixtures: `cargo xtask golden` (xtask/python/fastvithd_golden.py).

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use fastvithd::{Convention, FastVitHd, FastVitHdConfig, LoadError, names};
use vlm_kernels::loader::NameMap;
use vlm_kernels::testing::{self as formula, Fixture, fixtures, rel_l2};

type Cpu = Flex;

/// f32 tolerance for every parity check (rel-L2 over the whole output).
const TOL: f64 = 1e-4;
const SEED: u64 = 2024;

fn tiny_config() -> FastVitHdConfig {
    FastVitHdConfig::default()
        .with_layers([2, 2, 3, 2, 2])
        .with_embed_dims([8, 16, 32, 64, 128])
}

fn fixture(file: &str) -> Fixture {
    Fixture::open(&fixtures().join("fastvithd").join(file))
}

fn load(file: &str, convention: Convention) -> Result<FastVitHd<Cpu>, LoadError> {
    let weights = fixture(file);
    let names = names(convention).unwrap();
    FastVitHd::load(
        &tiny_config(),
        &names,
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
    let io = fixture("tiny_io.safetensors");
    for tag in ["square", "wide"] {
        let expected = io.tensor::<Cpu, 4>(&format!("features_{tag}"));
        let err = rel_l2(model.forward(image(tag)), expected);
        println!("{what} {tag}: rel-L2 {err:.3e}");
        assert!(err <= TOL, "{what} {tag}: rel-L2 {err:.3e} > {TOL:e}");
    }
}

#[test]
fn tiny_apple_bf16_matches_timm_at_two_resolutions() {
    let model = load("tiny_apple.safetensors", Convention::Apple).unwrap();
    check_tiny(&model, "apple bf16");
}

#[test]
fn tiny_timm_names_load_through_the_same_table() {
    let model = load("tiny_timm.safetensors", Convention::Timm).unwrap();
    check_tiny(&model, "timm f16");
}

#[test]
fn tokens_are_the_row_major_map_and_depend_on_the_image() {
    let model = load("tiny_apple.safetensors", Convention::Apple).unwrap();
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
    let names = NameMap::prefixed("");
    let weights = formula::checkpoint(SEED, &config.checkpoint_tensors(), &names);
    let model = FastVitHd::<Cpu>::load(
        &config,
        &names,
        &mut |n| weights.get(n).cloned(),
        &Default::default(),
    )
    .unwrap();
    drop(weights);
    let expected = fixture("released_256.safetensors").tensor::<Cpu, 4>("features");
    let got = model.forward(image("released"));
    assert_eq!(got.dims(), [1, 3072, 4, 4]);
    let err = rel_l2(got, expected);
    println!("released 256: rel-L2 {err:.3e}");
    assert!(err <= TOL, "released 256: rel-L2 {err:.3e} > {TOL:e}");
}

#[test]
fn shrunk_config_is_read_off_the_checkpoint() {
    for (file, convention) in [
        ("tiny_apple.safetensors", Convention::Apple),
        ("tiny_timm.safetensors", Convention::Timm),
    ] {
        let weights = fixture(file);
        let shape_of = |n: &str| weights.get(n).map(|d| d.shape.to_vec());
        let names = names(convention).unwrap();
        assert_eq!(
            FastVitHdConfig::from_checkpoint(&names, &shape_of),
            Some(tiny_config()),
            "{file}"
        );
    }
}

/// Random weights from `init` keep the activations alive through the whole released network:
/// finite, not vanishing, and different for different images.
#[test]
fn initialised_network_depends_on_its_input() {
    let model = FastVitHdConfig::released()
        .init::<Cpu>(&Default::default(), 5)
        .unwrap();
    let square = image("square")
        .narrow(0, 0, 1)
        .narrow(2, 0, 128)
        .narrow(3, 0, 128);
    let wide = image("wide").narrow(2, 0, 128).narrow(3, 0, 128);
    let (a, b) = (model.forward(square), model.forward(wide));
    assert_eq!(a.dims(), [1, 3072, 2, 2]);
    let scale = a.clone().abs().mean().into_scalar();
    assert!(scale.is_finite() && scale > 1e-3, "mean |feature| {scale}");
    let change = rel_l2(a, b);
    assert!(
        change > 0.05,
        "output barely depends on the input: {change:.3e}"
    );
}
