//! `encoder/{res}`: FastViTHD forward latency per input resolution, device sync included.
//! Resolutions default to 256,512,768,1024,1536; `FASTVLM_BENCH_RES=1024` narrows them.

use std::time::Duration;

use benches::{Bench, encoder, image, sync};
use criterion::{Criterion, criterion_group, criterion_main};

fn resolutions() -> Vec<usize> {
    std::env::var("FASTVLM_BENCH_RES")
        .ok()
        .map(|s| s.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![256, 512, 768, 1024, 1536])
}

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let model = encoder::<Bench>(&device);
    let mut group = c.benchmark_group("encoder");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for res in resolutions() {
        let x = image::<Bench>(res, &device);
        // The first call of a shape set pays for kernel compilation and autotuning.
        let _ = model.forward(x.clone());
        sync::<Bench>(&device);
        group.bench_function(res.to_string(), |b| {
            b.iter(|| {
                let y = model.forward(x.clone());
                sync::<Bench>(&device);
                y
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
