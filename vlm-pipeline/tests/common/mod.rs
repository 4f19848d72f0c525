//! Helpers shared by the parity tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Tensor, backend::Backend};

pub type Cpu = burn::backend::Flex;

/// The committed golden fixtures (`cargo xtask golden` writes them).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// ‖a − b‖ / ‖b‖ over all elements.
pub fn rel_l2<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.into_data().convert::<f64>().into_vec::<f64>().unwrap();
    let b = b.into_data().convert::<f64>().into_vec::<f64>().unwrap();
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}
pub mod wgpu;
