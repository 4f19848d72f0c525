//! Where FastViTHD's CPU time goes: per stage at 1024², and single ops at stage 2's shape
//! (384 channels at 64×64). `cargo run --release -p benches --example encoder_probe`
//! (`-- --system-allocator` leaves glibc's allocation thresholds as they are).
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
    if std::env::args().all(|a| a != "--system-allocator") {
        vlm_pipeline::backend::keep_freed_memory();
    }
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
    let mut input = x.clone();
    for (i, block) in model.stem.iter().enumerate() {
        time(
            &format!("stem block {i} {:?}", block.reparam_conv.weight.dims()),
            3,
            || block.forward(input.clone()),
        );
        input = block.forward(input);
    }
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
    let _ = model.conv_exp.forward(h.clone()).into_data();
    println!(
        "{:<44} {:>9.1} ms",
        "conv_exp",
        t.elapsed().as_secs_f64() * 1e3
    );

    // The first RepMixer block of stages 0–2, part by part.
    for (s, (c, side)) in [(96, 256), (192, 128), (384, 64)].into_iter().enumerate() {
        let block = &model.stages[s].repmixer_blocks[0];
        let ffn = &block.convffn;
        let x =
            Tensor::<Bench, 4>::random([1, c, side, side], Distribution::Normal(0.0, 1.0), &device);
        let hidden = Tensor::<Bench, 4>::random(
            [1, 4 * c, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let label = |part: &str| format!("stage {s} block: {part}");
        time(&label("whole"), 3, || block.forward(x.clone()));
        time(&label("token mixer (dw 3x3)"), 3, || {
            vlm_kernels::ops::conv2d(&block.token_mixer, x.clone(), false)
        });
        time(&label("convffn dw 7x7"), 3, || {
            vlm_kernels::ops::conv2d(&ffn.conv, x.clone(), false)
        });
        time(&label("fc1 (matmul + bias)"), 3, || {
            ffn.fc1.forward(x.clone())
        });
        let w1 = ffn.fc1.weight.val().unsqueeze::<3>();
        time(&label("fc1 matmul alone"), 3, || {
            w1.clone().matmul(x.clone().reshape([1, c, side * side]))
        });
        time(&label("gelu"), 3, || vlm_kernels::ops::gelu(hidden.clone()));
        time(&label("fc2 (matmul + bias)"), 3, || {
            ffn.fc2.forward(hidden.clone())
        });
        time(&label("residual add"), 3, || x.clone() + x.clone());
    }

    // Stage 3's first attention block (768 channels, 32×32 = 1024 tokens), part by part.
    let block = &model.stages[3].attention_blocks[0];
    let a = Tensor::<Bench, 4>::random([1, 768, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    time("stage 3 block: whole", 3, || block.forward(a.clone()));
    time("stage 3 block: norm", 3, || block.norm.forward(a.clone()));
    time("stage 3 block: token mixer (attention)", 3, || {
        block.token_mixer.forward(a.clone())
    });
    let tokens = a.clone().reshape([1, 768, 1024]).swap_dims(1, 2);
    time("stage 3 block: qkv on the transposed view", 3, || {
        block.token_mixer.qkv.forward(tokens.clone())
    });
    let q = Tensor::<Bench, 4>::random([1, 24, 1024, 32], Distribution::Normal(0.0, 1.0), &device);
    time("stage 3 block: attention 24x1024x32 (burn)", 3, || {
        burn::tensor::module::attention(
            q.clone(),
            q.clone(),
            q.clone(),
            None,
            None,
            Default::default(),
        )
    });
    time("stage 3 block: attention 24x1024x32 (ours)", 3, || {
        vlm_kernels::flex::attention(q.clone(), q.clone(), q.clone(), false).ok()
    });
    time("stage 3 block: convffn", 3, || {
        block.convffn.forward(a.clone())
    });
    let wide =
        Tensor::<Bench, 4>::random([1, 3072, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    time("stage 3 block: fc1", 3, || {
        block.convffn.fc1.forward(a.clone())
    });
    time("stage 3 block: fc2", 3, || {
        block.convffn.fc2.forward(wide.clone())
    });
    time("stage 3 block: gelu 3072x32x32", 3, || {
        vlm_kernels::ops::gelu(wide.clone())
    });

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
    time("gelu on [1, 1536, 64, 64] (vlm_kernels::ops)", 5, || {
        vlm_kernels::ops::gelu(big.clone())
    });
    time("add on [1, 384, 64, 64]", 5, || x.clone() + x.clone());
}
