//! Times the parts of one decoding step of a 0.5B-shaped Qwen2 (random weights).
use std::time::Instant;

use benches::{Bench, SEED};
use burn::tensor::{Int, Tensor, TensorData};
use qwen2_decoder::Qwen2Config;

fn main() {
    let device = Default::default();
    let config = Qwen2Config::fastvlm("0.5b").expect("a released size");
    let t = Instant::now();
    let model = config.init::<Bench>(&device, SEED).unwrap();
    println!("load {:.1} s", t.elapsed().as_secs_f64());
    let mut cache = model.new_cache(1, 64, &device).unwrap();
    let ids = Tensor::<Bench, 2, Int>::from_data(TensorData::new(vec![1i64; 8], [1, 8]), &device);
    let t = Instant::now();
    let _ = model
        .forward_last(model.embed(ids), &mut cache)
        .unwrap()
        .into_data();
    println!("prefill 8: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    for _ in 0..3 {
        let id = Tensor::<Bench, 2, Int>::from_data(TensorData::new(vec![5i64], [1, 1]), &device);
        let t = Instant::now();
        let e = model.embed(id);
        let _ = e.clone().into_data();
        let t_embed = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let h = model.hidden(e, &mut cache).unwrap();
        let _ = h.clone().into_data();
        let t_layers = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let l = model.logits(h);
        let _ = l.into_data();
        let t_head = t.elapsed().as_secs_f64() * 1e3;
        println!("step: embed {t_embed:.1} ms, layers {t_layers:.1} ms, head {t_head:.1} ms");
    }
}
