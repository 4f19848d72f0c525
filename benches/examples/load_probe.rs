//! Times loading a release directory stage by stage: `cargo run --release -p benches --example load_probe -- DIR`.
use std::time::Instant;

use benches::Bench;
use vlm_pipeline::{FastVlm, Tokenizer, Weights};

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: load_probe DIR"));
    let t = Instant::now();
    let w = Weights::open(&dir).unwrap();
    println!("open (mmap + headers): {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut n = 0usize;
    for name in w.names() {
        n += w.get(name).unwrap().num_elements();
    }
    println!(
        "decode all {n} values to f32: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let _ = Tokenizer::from_dir(&dir).unwrap();
    println!("tokenizer: {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let _ = FastVlm::<Bench>::load(&dir, &Default::default()).unwrap();
    println!("full load: {:.2} s", t.elapsed().as_secs_f64());
}
