//! Shared set-up for the criterion benchmarks: the backend picked by features and models with
//! synthetic weights (latency does not depend on the values, but realistic magnitudes keep
//! denormals out).

use burn::tensor::{Tensor, TensorData, backend::Backend};
use fastvithd::{FastVitHd, FastVitHdConfig, WeightNaming};
use vlm_pipeline::synthetic;

/// The backend these benchmarks run on: CUDA, else wgpu, else the CPU, by compiled features.
#[cfg(feature = "cuda")]
pub type Bench = vlm_pipeline::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Bench = vlm_pipeline::backend::Gpu;
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub type Bench = vlm_pipeline::backend::Cpu;

pub const SEED: u64 = 7;

/// The released FastViTHD with synthetic weights.
pub fn encoder<B: Backend>(device: &B::Device) -> FastVitHd<B> {
    let config = FastVitHdConfig::released();
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        config.checkpoint_tensors().into_iter().collect();
    let naming = WeightNaming::Apple {
        prefix: String::new(),
    };
    FastVitHd::load(
        &config,
        &naming,
        &mut |name| {
            let shape = shapes.get(name)?;
            Some(TensorData::new(
                synthetic::tensor(SEED, name, shape),
                shape.clone(),
            ))
        },
        device,
    )
    .expect("synthetic weights match the configuration")
}

/// A synthetic `[1, 3, res, res]` image.
pub fn image<B: Backend>(res: usize, device: &B::Device) -> Tensor<B, 4> {
    let values = synthetic::image(SEED, "bench", 3 * res * res);
    Tensor::from_data(TensorData::new(values, [1, 3, res, res]), device)
}

/// Blocks until the device has finished all queued work.
pub fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("device sync");
}
