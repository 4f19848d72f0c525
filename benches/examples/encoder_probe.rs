//! Where FastViTHD's CPU time goes: per stage at 1024², and single ops at stage 2's shape
//! (384 channels at 64×64). `cargo run --release -p benches --example encoder_probe`.
use std::time::Instant;

use benches::{Bench, encoder, image, sync};
use burn::tensor::activation::gelu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};

fn time<T>(label: &str, reps: usize, mut f: impl FnMut() -> T) {
    let device = Default::default();
    let _ = f();
    sync::<Bench>(&device);
    let t = Instant::now();
    for _ in 0..reps {
        let _ = f();
    }
    sync::<Bench>(&device);
    println!(
        "{label:<44} {:>9.1} ms",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
}

fn main() {
    let device = Default::default();
    let model = encoder::<Bench>(&device);
    let x = image::<Bench>(1024, &device);

    let mut h = x.clone();
    let t = Instant::now();
    for block in &model.stem {
        h = block.forward(h);
    }
    let _ = h.clone().into_data();
    println!("{:<44} {:>9.1} ms", "stem", t.elapsed().as_secs_f64() * 1e3);
    for (i, stage) in model.stages.iter().enumerate() {
        let t = Instant::now();
        h = stage.forward(h);
        let _ = h.clone().into_data();
        println!(
            "{:<44} {:>9.1} ms",
            format!("stage {i} -> {:?}", h.dims()),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let t = Instant::now();
    let _ = model.conv_exp.forward(h).into_data();
    println!(
        "{:<44} {:>9.1} ms",
        "conv_exp",
        t.elapsed().as_secs_f64() * 1e3
    );

    let c = 384;
    let x = Tensor::<Bench, 4>::random([1, c, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    let dw3 = Tensor::<Bench, 4>::random([c, 1, 3, 3], Distribution::Normal(0.0, 0.3), &device);
    let dw7 = Tensor::<Bench, 4>::random([c, 1, 7, 7], Distribution::Normal(0.0, 0.1), &device);
    let pw = Tensor::<Bench, 4>::random([4 * c, c, 1, 1], Distribution::Normal(0.0, 0.05), &device);
    let bias = Tensor::<Bench, 1>::zeros([c], &device);
    time("depthwise 3x3, 384 @ 64x64", 5, || {
        conv2d(
            x.clone(),
            dw3.clone(),
            Some(bias.clone()),
            ConvOptions::new([1, 1], [1, 1], [1, 1], c),
        )
    });
    time("depthwise 7x7, 384 @ 64x64", 5, || {
        conv2d(
            x.clone(),
            dw7.clone(),
            Some(bias.clone()),
            ConvOptions::new([1, 1], [3, 3], [1, 1], c),
        )
    });
    time("1x1 conv 384->1536 @ 64x64 (conv2d)", 5, || {
        conv2d(
            x.clone(),
            pw.clone(),
            None,
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        )
    });
    let w2 = pw.clone().reshape([4 * c, c]);
    time("1x1 conv 384->1536 @ 64x64 (matmul)", 5, || {
        w2.clone().matmul(x.clone().reshape([c, 64 * 64]))
    });
    let big =
        Tensor::<Bench, 4>::random([1, 4 * c, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    time("gelu on [1, 1536, 64, 64] (burn)", 5, || gelu(big.clone()));
    time(
        "gelu on [1, 1536, 64, 64] (vlm_kernels::activation)",
        5,
        || vlm_kernels::activation::gelu(big.clone()),
    );
    time("add on [1, 384, 64, 64]", 5, || x.clone() + x.clone());
}
