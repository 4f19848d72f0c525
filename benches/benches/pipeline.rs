//! `pipeline/ttft_1024`: FastVLM-0.5B-shaped (random weights) time to first token for a 1024²
//! image and predict.py's prompt shape (280 positions): encoder, projector, prefill, first id.

use std::time::Duration;

use benches::{Bench, Pipeline, image};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let pipeline = Pipeline::<Bench>::new(&device);
    let pixels = image::<Bench>(1024, &device);
    // Kernel compilation and autotuning stay out of the timings.
    let _ = pipeline.first_token(pixels.clone(), &device);
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    group.bench_function("ttft_1024", |b| {
        b.iter(|| pipeline.first_token(pixels.clone(), &device))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
