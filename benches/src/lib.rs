//! Shared set-up for the criterion benchmarks and `fastvlm-bench`: the backend picked by
//! features, and FastVLM-0.5B's models with random weights from their configurations' `init`
//! (latency does not depend on the values, as long as none is denormal, which `init`'s scales
//! keep away).

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use fastvithd::{FastVitHd, FastVitHdConfig};
use qwen2_decoder::{Qwen2, Qwen2Config};
use vlm_pipeline::fastvlm::{prefill, splice};
use vlm_pipeline::prompt::IMAGE_TOKEN_INDEX;
use vlm_projector::{Projector, ProjectorConfig};

/// The backend these benchmarks run on: CUDA, else wgpu, else the CPU, by compiled features.
#[cfg(feature = "cuda")]
pub type Bench = vlm_pipeline::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Bench = vlm_pipeline::backend::Gpu;
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub type Bench = vlm_pipeline::backend::Cpu;

pub const SEED: u64 = 7;

/// The released FastViTHD with random weights.
pub fn encoder<B: Backend>(device: &B::Device) -> FastVitHd<B> {
    FastVitHdConfig::released()
        .init(device, SEED)
        .expect("the released configuration is valid")
}

/// A synthetic `[1, 3, res, res]` image in [0, 1).
pub fn image<B: Backend>(res: usize, device: &B::Device) -> Tensor<B, 4> {
    Tensor::random(
        [1, 3, res, res],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        device,
    )
}

/// Blocks until the device has finished all queued work.
pub fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("device sync");
}

/// FastVLM's language model of `size` (`0.5b`, `1.5b`, `7b`) with random weights, drawn on
/// the device.
pub fn decoder<B: Backend>(size: &str, device: &B::Device) -> Option<Qwen2<B>> {
    let config = Qwen2Config::fastvlm(size)?;
    Some(config.init(device, SEED).expect("a released configuration"))
}

/// FastVLM-0.5B's `mlp2x_gelu` projector, 3072 → 896, with random weights.
pub fn projector_05b<B: Backend>(device: &B::Device) -> Projector<B> {
    ProjectorConfig::fastvlm(896)
        .init(device, SEED)
        .expect("a released configuration")
}

/// FastVLM-0.5B at one resolution: encoder, projector, language model.
pub struct Pipeline<B: Backend> {
    pub encoder: FastVitHd<B>,
    pub projector: Projector<B>,
    pub decoder: Qwen2<B>,
}

impl<B: Backend> Pipeline<B> {
    pub fn new(device: &B::Device) -> Self {
        Self::new_quantized(device, None)
    }

    /// [`Pipeline::new`] with the language model's weights quantized to `quantization`.
    pub fn new_quantized(
        device: &B::Device,
        quantization: Option<vlm_kernels::Quantization>,
    ) -> Self {
        let decoder = Qwen2Config::fastvlm("0.5b")
            .expect("a released size")
            .init_quantized(
                device,
                SEED,
                vlm_kernels::ops::max_binding_bytes::<B>(device),
                quantization,
            )
            .expect("a released configuration");
        Self {
            encoder: encoder(device),
            projector: projector_05b(device),
            decoder,
        }
    }

    /// Time to first token: image → image tokens → spliced into [`prompt_ids`] → prefill (the
    /// pipeline's own `splice` and `prefill`) → the first id on the host (what a user waits for;
    /// tokenising the prompt takes microseconds and is left out).
    pub fn first_token(&self, pixels: Tensor<B, 4>, device: &B::Device) -> u32 {
        let image = self.projector.forward(self.encoder.tokens(pixels));
        let embeds = splice(&self.decoder, &prompt_ids(), vec![image], device);
        let (logits, _) = prefill(&self.decoder, embeds, 1).expect("context fits");
        let id = logits.argmax(1).into_data().convert::<i64>();
        id.into_vec::<i64>().expect("int ids")[0] as u32
    }

    /// The embeddings of the text ids in `ids` (`[1, n, hidden]`).
    pub fn embed(&self, ids: &[i64], device: &B::Device) -> Tensor<B, 3> {
        self.decoder.embed(Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.to_vec(), [1, ids.len()]),
            device,
        ))
    }
}

/// Text ids around the image placeholder in predict.py's prompt shape: 14 positions before the
/// image (system message, user turn), 10 after ("Describe the image.", assistant turn), so a
/// 1024² image makes 280 positions. Special ids are Qwen2's; word ids are representative
/// (timing does not depend on them).
pub fn prompt_ids() -> Vec<i64> {
    const PREFIX: [i64; 14] = [
        151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
    ];
    const SUFFIX: [i64; 10] = [198, 74785, 279, 2168, 13, 151645, 198, 151644, 77091, 198];
    PREFIX
        .into_iter()
        .chain([IMAGE_TOKEN_INDEX])
        .chain(SUFFIX)
        .collect()
}
