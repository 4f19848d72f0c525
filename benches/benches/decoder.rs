//! `projector`, `decoder/prefill/{64,280,1024}` and `decoder/step` on FastVLM-0.5B-shaped weights
//! (random, from the configurations' `init`), device sync inside the timed region.

use std::time::Duration;

use benches::{Bench, decoder, projector_05b, sync};
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let model = decoder::<Bench>("0.5b", &device).expect("a released size");
    let projector = projector_05b::<Bench>(&device);

    let mut group = c.benchmark_group("decoder");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    let features =
        Tensor::<Bench, 3>::random([1, 256, 3072], Distribution::Normal(0.0, 0.1), &device);
    group.bench_function("projector", |b| {
        b.iter(|| {
            let y = projector.forward(features.clone());
            sync::<Bench>(&device);
            y
        })
    });
    for n in [64, 280, 1024] {
        let embeds =
            Tensor::<Bench, 3>::random([1, n, 896], Distribution::Normal(0.0, 0.05), &device);
        group.bench_function(format!("prefill/{n}"), |b| {
            b.iter(|| {
                let mut cache = model.new_cache(1, n + 1, &device).unwrap();
                let logits = model.forward_last(embeds.clone(), &mut cache).unwrap();
                sync::<Bench>(&device);
                logits
            })
        });
    }
    // One token after a 280-position prompt (a 1024² image and a short question).
    let prompt =
        Tensor::<Bench, 3>::random([1, 280, 896], Distribution::Normal(0.0, 0.05), &device);
    let mut cache = model.new_cache(1, 280 + 4096, &device).unwrap();
    let _ = model.forward_last(prompt, &mut cache).unwrap();
    group.bench_function("step", |b| {
        b.iter(|| {
            if cache.len() + 1 >= cache.capacity() {
                cache.reset();
            }
            // The sampled id is on the host: its embedding row is a view, as in the pipeline.
            let embed = model.embed_token(872).expect("id in the vocabulary");
            let logits = model.forward_last(embed, &mut cache).unwrap();
            logits.argmax(1).into_data()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
