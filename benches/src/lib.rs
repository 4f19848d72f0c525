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

/// FastVLM-0.5B's language model (Qwen2-0.5B: 24 layers, 896 wide, 14 heads over 2 KV heads,
/// tied head) with synthetic weights.
pub fn decoder_05b<B: Backend>(device: &B::Device) -> qwen2_decoder::Qwen2<B> {
    let config = qwen2_shape("0.5b").expect("a known shape");
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        config.checkpoint_tensors().into_iter().collect();
    let mut source = |n: &str| {
        shapes
            .get(n)
            .map(|s| TensorData::new(synthetic::tensor(SEED, n, s), s.clone()))
    };
    // Vocabulary blocks as the pipeline stores them on this backend.
    let block = vlm_pipeline::fastvlm::vocab_block_bytes::<B>(device);
    qwen2_decoder::Qwen2::load_blocked(&config, "", &mut source, device, block)
        .expect("synthetic weights match the configuration")
}

/// FastVLM-0.5B's `mlp2x_gelu` projector, 3072 → 896, with synthetic weights.
pub fn projector_05b<B: Backend>(device: &B::Device) -> vlm_projector::Projector<B> {
    let shapes = [
        ("model.mm_projector.0.weight", vec![896, 3072]),
        ("model.mm_projector.0.bias", vec![896]),
        ("model.mm_projector.2.weight", vec![896, 896]),
        ("model.mm_projector.2.bias", vec![896]),
    ];
    vlm_projector::Projector::load(
        vlm_projector::ProjectorKind::MlpGelu { depth: 2 },
        3072,
        896,
        "model.mm_projector.",
        &mut |n| {
            let (_, s) = shapes.iter().find(|(name, _)| *name == n)?;
            Some(TensorData::new(synthetic::tensor(SEED, n, s), s.clone()))
        },
        device,
    )
    .expect("synthetic weights match the configuration")
}

/// FastVLM-0.5B at one resolution: encoder, projector, language model.
pub struct Pipeline<B: Backend> {
    pub encoder: FastVitHd<B>,
    pub projector: vlm_projector::Projector<B>,
    pub decoder: qwen2_decoder::Qwen2<B>,
}

impl<B: Backend> Pipeline<B> {
    pub fn new(device: &B::Device) -> Self {
        Self {
            encoder: encoder(device),
            projector: projector_05b(device),
            decoder: decoder_05b(device),
        }
    }

    /// Time to first token: image → image tokens → spliced after `prefix` and before `suffix`
    /// text ids → prefill → the first id on the host (what a user waits for; tokenising the
    /// prompt takes microseconds and is left out).
    pub fn first_token(
        &self,
        pixels: Tensor<B, 4>,
        prefix: &[i64],
        suffix: &[i64],
        device: &B::Device,
    ) -> u32 {
        let image = self.projector.forward(self.encoder.tokens(pixels));
        let text = |ids: &[i64]| {
            self.decoder
                .embed(Tensor::<B, 2, burn::tensor::Int>::from_data(
                    TensorData::new(ids.to_vec(), [1, ids.len()]),
                    device,
                ))
        };
        let embeds = Tensor::cat(vec![text(prefix), image, text(suffix)], 1);
        let n = embeds.dims()[1];
        let mut cache = self
            .decoder
            .new_cache(1, n + 1, device)
            .expect("context fits");
        let logits = self
            .decoder
            .forward_last(embeds, &mut cache)
            .expect("context fits");
        let id = logits.argmax(1).into_data().convert::<i64>();
        id.into_vec::<i64>().expect("int ids")[0] as u32
    }
}

/// Text ids around the image in predict.py's prompt shape: 14 positions before the image (system
/// message, user turn), 10 after ("Describe the image.", assistant turn), so a 1024² image makes
/// 280 positions. Special ids are Qwen2's; word ids are representative (timing does not depend
/// on them).
pub const PROMPT_PREFIX: [i64; 14] = [
    151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
];
pub const PROMPT_SUFFIX: [i64; 10] = [198, 74785, 279, 2168, 13, 151645, 198, 151644, 77091, 198];

/// A Qwen2 of `config`'s shape with weights drawn on the device (burn's initialisers, RMS norm
/// weights of one): for timing shapes too large to generate on the host, such as the 7B. The
/// vocabulary tables are stored in blocks of at most `max_block_bytes` (at f32), as
/// [`qwen2_decoder::Qwen2::load_blocked`] does.
pub fn decoder_random<B: Backend>(
    config: &qwen2_decoder::Qwen2Config,
    max_block_bytes: usize,
    device: &B::Device,
) -> qwen2_decoder::Qwen2<B> {
    use burn::module::Param;
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;
    use qwen2_decoder::vocab::rows_per_block;
    use qwen2_decoder::{
        LmHead, Qwen2, Qwen2Attention, Qwen2DecoderLayer, Qwen2Mlp, RmsNorm, RotaryEmbedding,
        TokenEmbedding,
    };

    let (h, i) = (config.hidden_size, config.intermediate_size);
    let head_dim = config.head_dim();
    let kv = config.num_key_value_heads * head_dim;
    let vocab = config.vocab_size;
    let rows = rows_per_block(h, max_block_bytes);
    let linear = |d_in: usize, d_out: usize, bias: bool| {
        LinearConfig::new(d_in, d_out)
            .with_bias(bias)
            .init::<B>(device)
    };
    let norm = || RmsNorm {
        weight: Param::from_tensor(Tensor::ones([h], device)),
        eps: config.rms_norm_eps,
    };
    let blocks = |shape: &dyn Fn(usize) -> [usize; 2]| -> Vec<Tensor<B, 2>> {
        (0..vocab)
            .step_by(rows)
            .map(|start| {
                Tensor::random(
                    shape(rows.min(vocab - start)),
                    Distribution::Normal(0.0, 0.02),
                    device,
                )
            })
            .collect()
    };
    let layers = (0..config.num_hidden_layers)
        .map(|_| Qwen2DecoderLayer {
            input_layernorm: norm(),
            self_attn: Qwen2Attention {
                q_proj: linear(h, h, true),
                k_proj: linear(h, kv, true),
                v_proj: linear(h, kv, true),
                o_proj: linear(h, h, false),
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim,
            },
            post_attention_layernorm: norm(),
            mlp: Qwen2Mlp {
                gate_proj: linear(h, i, false),
                up_proj: linear(h, i, false),
                down_proj: linear(i, h, false),
            },
        })
        .collect();
    Qwen2 {
        embed_tokens: TokenEmbedding::new(blocks(&|r| [r, h])),
        layers,
        norm: norm(),
        lm_head: (!config.tie_word_embeddings).then(|| LmHead::new(blocks(&|c| [h, c]))),
        rope: RotaryEmbedding {
            head_dim,
            theta: config.rope_theta,
        },
        max_position_embeddings: config.max_position_embeddings,
    }
}

/// Qwen2's released shapes by name (`0.5b`, `1.5b`, `7b`), as FastVLM's language models.
pub fn qwen2_shape(name: &str) -> Option<qwen2_decoder::Qwen2Config> {
    use qwen2_decoder::Qwen2Config;
    Some(match name {
        "0.5b" => Qwen2Config::new(896, 4864, 24, 14, 2, 151936).with_tie_word_embeddings(true),
        "1.5b" => Qwen2Config::new(1536, 8960, 28, 12, 2, 151936).with_tie_word_embeddings(true),
        "7b" => Qwen2Config::new(3584, 18944, 28, 28, 4, 152064),
        _ => return None,
    })
}
