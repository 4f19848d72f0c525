//! The whole model: a release directory loaded, an image and a prompt in, text out.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use fastvithd::{FastVitHd, FastVitHdConfig};
use qwen2_decoder::{KvCache, LoadError, Qwen2};
use vlm_projector::Projector;

use crate::config::{ConfigError, FastVlmConfig};
use crate::generate::{self, FinishReason, GenerationOptions, Metrics, Rng, TokenLogprobs};
use crate::image::{ImageError, Rgb8, preprocess};
use crate::prompt::{IMAGE_TOKEN_INDEX, Message, prompt_ids};
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::weights::{Weights, WeightsError};
use vlm_kernels::loader::NameMap;
use vlm_kernels::{Activations, Quantization};

/// Anything that stops a request or a model load, with what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("model directory `{0}` does not exist")]
    NoDirectory(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{part}: {source}")]
    Load {
        /// `vision tower`, `projector` or `language model`.
        part: &'static str,
        #[source]
        source: LoadError,
    },
    #[error("vision tower: no `{0}` in the checkpoint")]
    NoVisionTower(String),
    #[error(
        "vision tower: {count} tensor(s) the network does not use, e.g. `{example}` (blocks missing in between?)"
    )]
    UnusedTensors { count: usize, example: String },
    #[error("the projector takes {config} channels but the vision tower gives {tower}")]
    HiddenMismatch { config: usize, tower: usize },
    #[error(
        "the prompt is {tokens} tokens ({image} of them image tokens); this model accepts at most {limit}"
    )]
    PromptTooLong {
        tokens: usize,
        image: usize,
        limit: usize,
    },
    #[error("the prompt has {markers} `<image>` markers but {images} image(s) were given")]
    ImageCount { markers: usize, images: usize },
    #[error("invalid generation options: {0}")]
    Options(String),
    #[error(transparent)]
    Decode(#[from] qwen2_decoder::DecodeError),
}

/// A request: an optional image, the conversation, and how to generate.
#[derive(Debug, Clone)]
pub struct Request {
    pub image: Option<Rgb8>,
    /// System message; `None` uses the reference's default.
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub options: GenerationOptions,
}

/// What a request produced.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Option<Vec<TokenLogprobs>>,
    pub finish_reason: FinishReason,
    pub metrics: Metrics,
}

/// Streamed while generating.
#[derive(Debug, Clone)]
pub struct TokenEvent<'a> {
    /// The generated token; `None` for the final event that flushes text held back because it
    /// ended in an incomplete character (the stream then equals the decoded answer, which
    /// starts at its first non-whitespace character, as the reference's does).
    pub token: Option<u32>,
    /// Text that became complete with this token (may be empty mid-character or while the
    /// answer has only whitespace so far).
    pub text: &'a str,
}

/// Image features of one image and their projection.
pub struct EncodedImage<B: Backend> {
    /// `[1, tokens, mm_hidden_size]`.
    pub features: Tensor<B, 3>,
    /// `[1, tokens, hidden]`.
    pub projected: Tensor<B, 3>,
}

/// FastVLM: FastViTHD → projector → Qwen2.
pub struct FastVlm<B: Backend> {
    pub config: FastVlmConfig,
    pub encoder: FastVitHd<B>,
    pub projector: Projector<B>,
    pub decoder: Qwen2<B>,
    pub tokenizer: Tokenizer,
    /// Ids that end generation.
    pub stop_ids: Vec<u32>,
    pub device: B::Device,
}

impl<B: Backend> FastVlm<B> {
    /// Loads a release directory (`config.json`, `model.safetensors` or an index with shards,
    /// tokenizer files), converting stored bf16/f16 weights to the backend's float type.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, PipelineError> {
        Self::load_with_progress(dir, device, &mut |_| {})
    }

    /// [`FastVlm::load`], reporting the fraction of the checkpoint's tensors loaded so far
    /// (0 to 1) as it goes: for a progress bar while multi-gigabyte weights are converted.
    pub fn load_with_progress(
        dir: &Path,
        device: &B::Device,
        progress: &mut dyn FnMut(f32),
    ) -> Result<Self, PipelineError> {
        Self::load_with(dir, device, None, progress)
    }

    /// [`FastVlm::load_with_progress`] with the language model's linear layers and vocabulary
    /// tables quantized to `quantization` as they load (MLX's affine scheme; the vision tower
    /// and the projector stay at the compute precision). A release stored quantized (MLX's
    /// layout, tensors with `.scales`) loads as stored with or without it.
    pub fn load_with(
        dir: &Path,
        device: &B::Device,
        quantization: Option<Quantization>,
        progress: &mut dyn FnMut(f32),
    ) -> Result<Self, PipelineError> {
        if !dir.is_dir() {
            return Err(PipelineError::NoDirectory(dir.to_path_buf()));
        }
        let mut config = FastVlmConfig::from_dir(dir)?;
        let weights = Weights::open(dir)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        let names = |part: &'static str, map: Option<NameMap>| {
            map.ok_or(PipelineError::Load {
                part,
                source: LoadError::Config(format!(
                    "{:?} checkpoints do not hold one",
                    config.convention
                )),
            })
        };
        let vision = names("vision tower", fastvithd::names(config.convention))?;
        let projector_names = names("projector", vlm_projector::names(config.convention))?;
        let decoder_names = names("language model", qwen2_decoder::names(config.convention))?;

        let shape_of = |n: &str| weights.shape(n).map(<[usize]>::to_vec);
        config.encoder = FastVitHdConfig::from_checkpoint(&vision, &shape_of).ok_or_else(|| {
            PipelineError::NoVisionTower(vision.resolve("patch_embed.0.reparam_conv.weight"))
        })?;
        if config.encoder.out_channels() != config.projector.in_features {
            return Err(PipelineError::HiddenMismatch {
                config: config.projector.in_features,
                tower: config.encoder.out_channels(),
            });
        }

        let mut used = HashSet::new();
        let total = weights.names().len().max(1);
        progress(0.0);
        let mut source = |name: &str| {
            used.insert(name.to_string());
            progress(used.len() as f32 / total as f32);
            weights.get(name)
        };
        let part = |part| move |source| PipelineError::Load { part, source };
        let encoder = FastVitHd::load(&config.encoder, &vision, &mut source, device)
            .map_err(part("vision tower"))?;
        let projector = Projector::load(&config.projector, &projector_names, &mut source, device)
            .map_err(part("projector"))?;
        let decoder = Qwen2::load_quantized(
            &config.decoder,
            &decoder_names,
            &mut source,
            device,
            quantization,
        )
        .map_err(part("language model"))?;
        let unused: Vec<&str> = weights
            .names()
            .into_iter()
            .filter(|n| n.starts_with(vision.prefix()) && !used.contains(*n))
            .filter(|n| !n.ends_with("num_batches_tracked") && !n.contains("head.proj"))
            .collect();
        if let Some(example) = unused.first() {
            return Err(PipelineError::UnusedTensors {
                count: unused.len(),
                example: example.to_string(),
            });
        }

        let mut stop_ids: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_id(t))
            .collect();
        if let Some(eos) = config.eos_token_id
            && !stop_ids.contains(&eos)
        {
            stop_ids.push(eos);
        }
        progress(1.0);
        Ok(Self {
            config,
            encoder,
            projector,
            decoder,
            tokenizer,
            stop_ids,
            device: device.clone(),
        })
    }

    /// Sets how the language model's quantized matrices meet the activations at a decoding
    /// step ([`Activations`]); the number of quantized matrices it applies to (none for weights
    /// at the compute precision).
    pub fn set_activations(&mut self, activations: Activations) -> usize {
        self.decoder.set_activations(activations)
    }

    /// The reference's pixels for `image`: `[1, 3, size, size]`.
    pub fn pixels(&self, image: &Rgb8) -> Tensor<B, 4> {
        let s = self.config.image_size;
        let planes = preprocess(image, s, self.config.aspect_ratio);
        Tensor::from_data(TensorData::new(planes, [1, 3, s, s]), &self.device)
    }

    /// Pixels `[1, 3, s, s]` → features and projected image tokens.
    pub fn encode_pixels(&self, pixels: Tensor<B, 4>) -> EncodedImage<B> {
        let features = self.encoder.tokens(pixels);
        let projected = self.projector.forward(features.clone());
        EncodedImage {
            features,
            projected,
        }
    }

    /// Usable vocabulary: the tokenizer's, capped by the embedding rows.
    fn vocab_len(&self) -> usize {
        self.tokenizer.len().min(self.config.decoder.vocab_size)
    }

    /// Runs a tiny request (a 32×32 black image, two greedy tokens) so that kernel compilation
    /// and autotuning happen now rather than in the first user's request.
    pub fn warm_up(&self) -> Result<(), PipelineError> {
        let request = Request {
            image: Some(Rgb8 {
                width: 32,
                height: 32,
                data: vec![0; 32 * 32 * 3],
            }),
            system: None,
            messages: vec![Message {
                role: crate::prompt::Role::User,
                content: "Hi".into(),
            }],
            options: GenerationOptions {
                temperature: 0.0,
                max_new_tokens: 2,
                ..Default::default()
            },
        };
        self.generate(&request, &mut |_| ControlFlow::Continue(()))
            .map(|_| ())
    }

    /// The request's prompt as input embeddings `[1, positions, hidden]` (template ids with the
    /// image's projected tokens spliced in) and its length; `metrics` gets the preprocessing,
    /// encoding and token counts, timed from `start`.
    fn prompt_embeds(
        &self,
        request: &Request,
        metrics: &mut Metrics,
        start: Instant,
    ) -> Result<(Tensor<B, 3>, usize), PipelineError> {
        let system = request
            .system
            .as_deref()
            .unwrap_or(crate::prompt::DEFAULT_SYSTEM);
        let ids = prompt_ids(
            &self.tokenizer,
            system,
            &request.messages,
            request.image.is_some(),
        )?;
        let markers = ids.iter().filter(|&&i| i == IMAGE_TOKEN_INDEX).count();
        let images = usize::from(request.image.is_some());
        if markers != images {
            return Err(PipelineError::ImageCount { markers, images });
        }

        let image = request.image.as_ref().map(|img| {
            let pixels = self.pixels(img);
            metrics.preprocess_ms = ms(start);
            let t = Instant::now();
            let encoded = self.encode_pixels(pixels);
            let projected = encoded.projected;
            let _ = B::sync(&self.device);
            metrics.encode_ms = ms(t);
            projected
        });
        let image_tokens = image.as_ref().map_or(0, |p| p.dims()[1]);
        let total = ids.len() - markers + image_tokens;
        metrics.prompt_tokens = total;
        metrics.image_tokens = image_tokens;
        let limit = self
            .config
            .max_length
            .min(self.config.decoder.max_position_embeddings);
        if total > limit {
            return Err(PipelineError::PromptTooLong {
                tokens: total,
                image: image_tokens,
                limit,
            });
        }

        let embeds = splice(
            &self.decoder,
            &ids,
            image.into_iter().collect(),
            &self.device,
        );
        Ok((embeds, total))
    }

    /// Teacher forcing: the log-probabilities `[continuation.len(), vocab]` the model gives each
    /// token of `continuation` after the request's prompt and the tokens before it, computed as
    /// generation computes them (the prompt in one forward, then one decoding step per token,
    /// so that a step's own kernels are the ones measured). For comparing models on the same
    /// text (a quantized one against its f32 original); the vocabulary is the usable one.
    pub fn continuation_logprobs(
        &self,
        request: &Request,
        continuation: &[u32],
    ) -> Result<Vec<Vec<f32>>, PipelineError> {
        let mut metrics = Metrics::default();
        let (prompt, total) = self.prompt_embeds(request, &mut metrics, Instant::now())?;
        let n = continuation.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let vocab = self.vocab_len();
        let mut cache = self.decoder.new_cache(1, total + n, &self.device)?;
        let mut rows = Vec::with_capacity(n);
        let mut logits = self.decoder.forward_last(prompt, &mut cache)?;
        // Each step's logits, then the step on the token teacher forcing feeds (none after
        // the last).
        for (step, &id) in continuation.iter().enumerate() {
            let values = logits
                .narrow(1, 0, vocab)
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| PipelineError::Options(format!("logits: {e:?}")))?;
            rows.push(log_softmax(&values));
            if step + 1 == n {
                break;
            }
            let embed = self.decoder.embed_token(id as usize).ok_or_else(|| {
                PipelineError::Options(format!("token id {id} is past the vocabulary"))
            })?;
            logits = self.decoder.forward_last(embed, &mut cache)?;
        }
        Ok(rows)
    }

    /// Runs a request, calling `on_token` for every generated token as it comes; `on_token`
    /// returning `Break` stops generation (finish reason `Cancelled`), e.g. when the client left.
    pub fn generate(
        &self,
        request: &Request,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<Generation, PipelineError> {
        let options = &request.options;
        options.validate().map_err(PipelineError::Options)?;
        let start = Instant::now();
        let mut metrics = Metrics::default();

        let (embeds, total) = self.prompt_embeds(request, &mut metrics, start)?;

        let max_new = options
            .max_new_tokens
            .min(self.config.decoder.max_position_embeddings - total);
        let t = Instant::now();
        let (mut logits, mut cache) = prefill(&self.decoder, embeds, max_new.max(1))?;
        let vocab = self.vocab_len();
        let mut rng = Rng::new(options.seed);
        let mut token_ids = Vec::new();
        let mut all_logprobs = options.logprobs.map(|_| Vec::new());
        let mut finish_reason = FinishReason::Length;
        let mut emitted = 0usize;
        let mut started = false;
        let mut decode_start = None;
        while token_ids.len() < max_new {
            let token = self.pick(logits, vocab, options, &mut rng, all_logprobs.as_mut());
            if token_ids.is_empty() {
                metrics.prefill_ms = ms(t);
                metrics.ttft_ms = ms(start);
                decode_start = Some(Instant::now());
            }
            if self.stop_ids.contains(&token) {
                finish_reason = FinishReason::Stop;
                if let Some(lp) = all_logprobs.as_mut() {
                    lp.pop();
                }
                break;
            }
            token_ids.push(token);
            // Emit only text that is complete (no dangling half of a multi-byte character),
            // from where the answer starts: the reference strips its leading whitespace.
            let text = self.tokenizer.decode(&token_ids, true)?;
            let ready = if text.ends_with('\u{FFFD}') {
                emitted
            } else {
                text.len()
            };
            if !started {
                emitted = ready - text[..ready].trim_start().len();
                started = emitted < ready;
            }
            let flow = on_token(TokenEvent {
                token: Some(token),
                text: text.get(emitted..ready).unwrap_or(""),
            });
            emitted = emitted.max(ready);
            if flow.is_break() {
                finish_reason = FinishReason::Cancelled;
                break;
            }
            if token_ids.len() == max_new {
                break;
            }
            // The id is on the host already (sampled there): its row is a view, no lookup.
            let next = match self.decoder.embed_token(token as usize) {
                Some(row) => row,
                None => self.decoder.embed(Tensor::<B, 2, Int>::from_data(
                    TensorData::new(vec![token as i64], [1, 1]),
                    &self.device,
                )),
            };
            logits = self.decoder.forward_last(next, &mut cache)?;
        }
        metrics.generated_tokens = token_ids.len();
        let full = self.tokenizer.decode(&token_ids, true)?;
        if let Some(rest) = full.get(emitted..).filter(|r| !r.is_empty())
            && finish_reason != FinishReason::Cancelled
        {
            let _ = on_token(TokenEvent {
                token: None,
                text: rest,
            });
        }
        if let Some(d) = decode_start {
            metrics.decode_ms = ms(d);
            if token_ids.len() > 1 {
                metrics.decode_tokens_per_s =
                    (token_ids.len() - 1) as f64 / (metrics.decode_ms / 1e3);
            }
        }
        let text = full.trim().to_string();
        Ok(Generation {
            text,
            token_ids,
            logprobs: all_logprobs,
            finish_reason,
            metrics,
        })
    }

    /// Picks the next token from `[1, vocab]` logits restricted to the usable vocabulary.
    fn pick(
        &self,
        logits: Tensor<B, 2>,
        vocab: usize,
        options: &GenerationOptions,
        rng: &mut Rng,
        logprobs: Option<&mut Vec<TokenLogprobs>>,
    ) -> u32 {
        let logits = logits.narrow(1, 0, vocab);
        if options.greedy() && logprobs.is_none() {
            // Only the id crosses to the host.
            let id = logits.argmax(1).into_data().convert::<i64>();
            return id.into_vec::<i64>().expect("argmax is an int tensor")[0] as u32;
        }
        let host = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("float logits");
        let token = generate::sample(&host, options, rng);
        if let Some(lp) = logprobs {
            lp.push(generate::logprobs(
                &host,
                token,
                options.logprobs.unwrap_or(0),
            ));
        }
        token
    }
}

/// Token ids `ids` with an [`IMAGE_TOKEN_INDEX`] placeholder per image → input embeddings
/// `[1, n, hidden]`: the text pieces embedded, image `i`'s tokens `[1, tokens, hidden]` in place
/// of placeholder `i` (the reference's `prepare_inputs_labels_for_multimodal`).
///
/// # Panics
/// When the placeholders and the images differ in number (callers count them first).
pub fn splice<B: Backend>(
    decoder: &Qwen2<B>,
    ids: &[i64],
    images: Vec<Tensor<B, 3>>,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut images = images.into_iter();
    let mut pieces = Vec::new();
    for (i, chunk) in ids.split(|&t| t == IMAGE_TOKEN_INDEX).enumerate() {
        if i > 0 {
            pieces.push(images.next().expect("one image per placeholder"));
        }
        if !chunk.is_empty() {
            let t = Tensor::<B, 2, Int>::from_data(
                TensorData::new(chunk.to_vec(), [1, chunk.len()]),
                device,
            );
            pieces.push(decoder.embed(t));
        }
    }
    assert!(images.next().is_none(), "one placeholder per image");
    Tensor::cat(pieces, 1)
}

/// The prefill: `embeds` `[1, n, hidden]` through the language model into a cache with room
/// for `new_tokens` more positions; the last position's logits `[1, vocab]` and the cache.
pub fn prefill<B: Backend>(
    decoder: &Qwen2<B>,
    embeds: Tensor<B, 3>,
    new_tokens: usize,
) -> Result<(Tensor<B, 2>, KvCache<B>), qwen2_decoder::DecodeError> {
    let n = embeds.dims()[1];
    let mut cache = decoder.new_cache(1, n + new_tokens, &embeds.device())?;
    let logits = decoder.forward_last(embeds, &mut cache)?;
    Ok((logits, cache))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// `log softmax(row)`, the sum in f64.
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let log_sum = row
        .iter()
        .map(|&v| ((v - max) as f64).exp())
        .sum::<f64>()
        .ln();
    row.iter()
        .map(|&v| ((v - max) as f64 - log_sum) as f32)
        .collect()
}
