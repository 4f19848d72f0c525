//! Building a model's parameters: from a checkpoint's named tensors ([`Loader`]) or from random
//! values ([`Init`]), through one interface ([`Params`]) that each model's constructor is
//! written against once.
//!
//! A model asks for every tensor by its canonical name (Apple's for FastViTHD and the projector,
//! Hugging Face's Qwen2 names for the decoder) and the shape its configuration implies. A
//! [`NameMap`] turns canonical names into a checkpoint convention's (a prefix and an ordered
//! list of renames, declared as a table per model and convention); [`Loader`] checks what it
//! finds (present, shape, floating-point dtype, not a training-form checkpoint) and hands out
//! row-major f32 values, so that load-time folding happens on the host before upload.

use burn::tensor::{DType, Distribution, Tensor, TensorData, backend::Backend};
use safetensors::Dtype;

use crate::Linear;
use crate::quant::{HostQuantized, Quantization, QuantizedMatrix, ScaleType, quantize};

/// Where a checkpoint's tensors come from: a tensor by its name in the checkpoint, `None` when
/// absent (any float dtype; the loader converts).
pub type Source<'a> = dyn FnMut(&str) -> Option<TensorData> + 'a;

/// A failure to build a model from a set of tensors.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    #[error("missing tensor `{name}` (expected shape {expected:?})")]
    Missing { name: String, expected: Vec<usize> },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {found}, expected a floating-point tensor")]
    DType { name: String, found: String },
    #[error(
        "tensor `{name}` is in training (un-reparameterised) form; this loads the inference form that FastVLM releases"
    )]
    TrainForm { name: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The conventions FastVLM's tensors are named in; each model crate maps the ones that hold
/// its tensors to a [`NameMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Convention {
    /// Apple's PyTorch release (`llava_qwen2`): `model.vision_tower.vision_tower.model.*`,
    /// `model.mm_projector.{0,2}.*`, Qwen2's `model.layers.*`, `lm_head.*`.
    Apple,
    /// A bare timm `fastvit_mci3` state dict (MobileCLIP2 image towers): the vision tower only.
    Timm,
    /// Hugging Face transformers' `fast_vlm` (`FastVlmForConditionalGeneration`):
    /// `model.vision_tower.timm_model.*` in timm's names, `model.multi_modal_projector.linear_{1,2}.*`,
    /// `model.language_model.*`, `lm_head.*`.
    HuggingFace,
    /// mlx-vlm's export (Apple's `model_export`, `--only-llm`): `multi_modal_projector.linear_{0,2}.*`,
    /// `language_model.model.*`, `language_model.lm_head.*`; no vision tower.
    Mlx,
}

/// Canonical tensor names → the names of one checkpoint convention: the renames applied in
/// order, then the prefix. A rename `("^a.", "b.")` rewrites the start of a name, `(".a$", ".b")`
/// its end, and `(".a.", ".b.")` every occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameMap {
    prefix: String,
    renames: &'static [(&'static str, &'static str)],
    training_forms: &'static [(&'static str, &'static str)],
}

impl NameMap {
    /// Canonical names after `prefix`, renamed by `renames`.
    pub fn new(
        prefix: impl Into<String>,
        renames: &'static [(&'static str, &'static str)],
    ) -> Self {
        Self {
            prefix: prefix.into(),
            renames,
            training_forms: &[],
        }
    }

    /// Canonical names as they are, after `prefix`.
    pub fn prefixed(prefix: impl Into<String>) -> Self {
        Self::new(prefix, &[])
    }

    /// With `(inference, training)` name fragments: a missing tensor whose resolved name
    /// contains `inference` is reported as a training-form checkpoint when the name with
    /// `training` in its place is present.
    pub fn with_training_forms(self, forms: &'static [(&'static str, &'static str)]) -> Self {
        Self {
            training_forms: forms,
            ..self
        }
    }

    /// The prefix in front of every name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The checkpoint's name for the tensor canonically named `name`.
    pub fn resolve(&self, name: &str) -> String {
        let mut out = name.to_string();
        for (from, to) in self.renames {
            if let Some(from) = from.strip_prefix('^') {
                if let Some(rest) = out.strip_prefix(from) {
                    out = format!("{to}{rest}");
                }
            } else if let Some(from) = from.strip_suffix('$') {
                if let Some(head) = out.strip_suffix(from) {
                    out = format!("{head}{to}");
                }
            } else {
                out = out.replace(from, to);
            }
        }
        format!("{}{out}", self.prefix)
    }
}

/// What a model's constructor draws its parameters from: a checkpoint ([`Loader`]) or random
/// values ([`Init`]). Names are canonical, shapes PyTorch's.
pub trait Params<B: Backend> {
    /// The device the parameters go to.
    fn device(&self) -> &B::Device;

    /// The values of `name`, row-major f32, after checking its shape (on the host, for folding).
    fn host(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError>;

    /// `name` as a device tensor.
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        let values = self.host(name, &shape)?;
        Ok(upload(values, shape, self.device()))
    }

    /// A linear layer from PyTorch's `{name}.weight` `[out, in]` and, with `bias`,
    /// `{name}.bias` `[out]`.
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>, LoadError> {
        if let Some(weight) = self.stored_quantized(name, d_out, d_in)? {
            let bias = match bias {
                true => Some(self.tensor(&format!("{name}.bias"), [d_out])?),
                false => None,
            };
            return Ok(Linear::quantized(
                QuantizedMatrix::upload(&weight, self.device()),
                bias,
            ));
        }
        let weight = self.host(&format!("{name}.weight"), &[d_out, d_in])?;
        let bias = match bias {
            true => Some(self.tensor(&format!("{name}.bias"), [d_out])?),
            false => None,
        };
        Ok(linear_from(weight, d_in, d_out, bias, self.device()))
    }

    /// The scheme that [`Params::linear_quantizable`] and [`Params::table_quantizable`]
    /// quantize floating-point weights to (`None`: they stay at the compute precision).
    fn quantization(&self) -> Option<Quantization> {
        None
    }

    /// A matrix `[rows, cols]` the checkpoint stores quantized, in MLX's layout
    /// (`{name}.weight` `uint32`, `{name}.scales`, `{name}.biases`); `None` when it stores
    /// `{name}.weight` in floating point.
    fn stored_quantized(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<HostQuantized>, LoadError> {
        let _ = (name, rows, cols);
        Ok(None)
    }

    /// The values of `name` and the floating-point type they are stored in (the type
    /// quantization rounds scales to).
    fn host_typed(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<(Vec<f32>, ScaleType), LoadError> {
        Ok((self.host(name, shape)?, ScaleType::F32))
    }

    /// `{name}.weight` `[rows, cols]` as stored, quantized by `scheme` now.
    fn quantize_now(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        scheme: Quantization,
    ) -> Result<HostQuantized, LoadError> {
        let (values, stored) = self.host_typed(&format!("{name}.weight"), &[rows, cols])?;
        Ok(quantize(&values, rows, cols, scheme, stored))
    }

    /// The matrix `{name}.weight` `[rows, cols]` quantized: as stored, or quantized now by
    /// [`Params::quantization`] when its rows split into whole groups; `None` otherwise.
    fn quantized(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<HostQuantized>, LoadError> {
        if let Some(stored) = self.stored_quantized(name, rows, cols)? {
            return Ok(Some(stored));
        }
        match self.quantization() {
            Some(scheme) if scheme.fits(cols) => {
                Ok(Some(self.quantize_now(name, rows, cols, scheme)?))
            }
            _ => Ok(None),
        }
    }

    /// [`Params::linear`], quantized where the checkpoint stores it so or
    /// [`Params::quantization`] asks for it.
    fn linear_quantizable(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>, LoadError> {
        let Some(weight) = self.quantized(name, d_out, d_in)? else {
            return self.linear(name, d_in, d_out, bias);
        };
        let bias = match bias {
            true => Some(self.tensor(&format!("{name}.bias"), [d_out])?),
            false => None,
        };
        Ok(Linear::quantized(
            QuantizedMatrix::upload(&weight, self.device()),
            bias,
        ))
    }

    /// A `[rows, cols]` table (`{name}.weight`) quantized as [`Params::quantized`] decides, in
    /// row blocks of at most `block_rows` rows; `None` when it stays at the compute precision.
    fn table_quantizable(
        &mut self,
        name: &str,
        [rows, cols]: [usize; 2],
        block_rows: usize,
    ) -> Result<Option<Vec<QuantizedMatrix<B>>>, LoadError> {
        let Some(table) = self.quantized(name, rows, cols)? else {
            return Ok(None);
        };
        let (words, groups) = (
            cols / table.scheme.per_word(),
            cols / table.scheme.group_size,
        );
        let device = self.device().clone();
        Ok(Some(
            (0..rows)
                .step_by(block_rows.max(1))
                .map(|start| {
                    let end = (start + block_rows.max(1)).min(rows);
                    let block = HostQuantized {
                        scheme: table.scheme,
                        rows: end - start,
                        cols,
                        packed: table.packed[start * words..end * words].to_vec(),
                        scales: table.scales[start * groups..end * groups].to_vec(),
                        biases: table.biases[start * groups..end * groups].to_vec(),
                    };
                    QuantizedMatrix::upload(&block, &device)
                })
                .collect(),
        ))
    }

    /// A `[rows, cols]` table in row blocks of at most `block_rows` rows, each `[rows_k, cols]`,
    /// or, when `transposed`, each block transposed to a contiguous `[cols, rows_k]`.
    fn table(
        &mut self,
        name: &str,
        [rows, cols]: [usize; 2],
        block_rows: usize,
        transposed: bool,
    ) -> Result<Vec<Tensor<B, 2>>, LoadError> {
        let values = self.host(name, &[rows, cols])?;
        let device = self.device().clone();
        Ok(values
            .chunks(block_rows.max(1) * cols)
            .map(|block| {
                let n = block.len() / cols;
                match transposed {
                    true => upload(transpose(block, n, cols), [cols, n], &device),
                    false => upload(block.to_vec(), [n, cols], &device),
                }
            })
            .collect())
    }
}

/// A safetensors tensor's values as burn data: floating-point tensors (f64, f32, f16, bf16) as
/// f32, integer and bool tensors as i64, so that a model sees one float type and the loader
/// rejects the others by name. Other types (8-bit floats, unsigned words) come back as `Err`
/// with their type.
pub fn tensor_data(view: &safetensors::tensor::TensorView<'_>) -> Result<TensorData, Dtype> {
    let data = stored_tensor_data(view)?;
    Ok(match data.dtype {
        DType::F16 | DType::BF16 => data.convert::<f32>(),
        _ => data,
    })
}

/// [`tensor_data`] with f16 and bf16 kept as they are stored (half the memory until the loader
/// converts them, and the stored type known: quantization keeps scales in it) and `uint32` as
/// `u32` (MLX's packed quantized weights).
pub fn stored_tensor_data(view: &safetensors::tensor::TensorView<'_>) -> Result<TensorData, Dtype> {
    use safetensors::Dtype as S;
    let shape = view.shape().to_vec();
    let bytes = view.data();
    Ok(match view.dtype() {
        S::F32 => TensorData::new(decode(bytes, f32::from_le_bytes), shape),
        S::F16 => TensorData::new(decode(bytes, half::f16::from_le_bytes), shape),
        S::BF16 => TensorData::new(decode(bytes, half::bf16::from_le_bytes), shape),
        S::U32 => TensorData::new(decode(bytes, u32::from_le_bytes), shape),
        S::F64 => TensorData::new(
            decode(bytes, |b: [u8; 8]| f64::from_le_bytes(b) as f32),
            shape,
        ),
        S::I64 => TensorData::new(decode(bytes, i64::from_le_bytes), shape),
        S::I32 => TensorData::new(
            decode(bytes, |b: [u8; 4]| i32::from_le_bytes(b) as i64),
            shape,
        ),
        S::BOOL | S::U8 => {
            TensorData::new(bytes.iter().map(|&b| b as i64).collect::<Vec<_>>(), shape)
        }
        other => return Err(other),
    })
}

/// Little-endian values of `N` bytes each.
fn decode<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

/// Host values as a device tensor of the backend's float type.
pub fn upload<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A linear layer from host values in PyTorch's `[out, in]` layout, stored `[in, out]`.
pub fn linear_from<B: Backend>(
    weight_out_in: Vec<f32>,
    d_in: usize,
    d_out: usize,
    bias: Option<Tensor<B, 1>>,
    device: &B::Device,
) -> Linear<B> {
    let weight = upload(
        transpose(&weight_out_in, d_out, d_in),
        [d_in, d_out],
        device,
    );
    Linear::new(weight, bias)
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// A model's parameters from a checkpoint: every tensor fetched through a [`NameMap`] and
/// checked (present, of the expected shape, floating-point) before it is converted.
pub struct Loader<'a, B: Backend> {
    source: &'a mut Source<'a>,
    names: &'a NameMap,
    device: B::Device,
    quantization: Option<Quantization>,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub fn new(source: &'a mut Source<'a>, names: &'a NameMap, device: &B::Device) -> Self {
        Self {
            source,
            names,
            device: device.clone(),
            quantization: None,
        }
    }

    /// Quantizing the weights the model allows to `scheme` as they load.
    pub fn with_quantization(self, scheme: Option<Quantization>) -> Self {
        Self {
            quantization: scheme,
            ..self
        }
    }

    /// The tensor `name` (canonical) with its resolved name, checked to be present and of
    /// `shape`.
    fn fetch(&mut self, name: &str, shape: &[usize]) -> Result<(String, TensorData), LoadError> {
        let full = self.names.resolve(name);
        let Some(data) = (self.source)(&full) else {
            if let Some(train) = self.training_form(&full) {
                return Err(LoadError::TrainForm { name: train });
            }
            return Err(LoadError::Missing {
                name: full,
                expected: shape.to_vec(),
            });
        };
        if data.shape.as_slice() != shape {
            return Err(LoadError::Shape {
                name: full,
                expected: shape.to_vec(),
                found: data.shape.to_vec(),
            });
        }
        Ok((full, data))
    }

    /// A fetched tensor's values as f32, refused unless it is floating-point.
    fn floats(full: String, data: TensorData) -> Result<Vec<f32>, LoadError> {
        if !matches!(
            data.dtype,
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            return Err(LoadError::DType {
                name: full,
                found: format!("{:?}", data.dtype),
            });
        }
        data.convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| LoadError::DType {
                name: full,
                found: format!("{e:?}"),
            })
    }

    /// The training-form tensor standing where `full` (missing) would be, if the checkpoint
    /// has one.
    fn training_form(&mut self, full: &str) -> Option<String> {
        let forms = self.names.training_forms;
        if !forms.iter().any(|(inference, _)| full.contains(inference)) {
            return None;
        }
        let train = forms
            .iter()
            .fold(full.to_string(), |name, (inference, training)| {
                name.replace(inference, training)
            });
        (self.source)(&train).is_some().then_some(train)
    }
}

impl<B: Backend> Params<B> for Loader<'_, B> {
    fn device(&self) -> &B::Device {
        &self.device
    }

    fn host(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (full, data) = self.fetch(name, shape)?;
        Self::floats(full, data)
    }

    fn host_typed(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<(Vec<f32>, ScaleType), LoadError> {
        let (full, data) = self.fetch(name, shape)?;
        let stored = ScaleType::of(data.dtype);
        Ok((Self::floats(full, data)?, stored))
    }

    fn quantization(&self) -> Option<Quantization> {
        self.quantization
    }

    /// Block by block of rows, so that a vocabulary table (7B: 545 M values) is never whole in
    /// f32 beside its stored copy; each row's groups are quantized alone, so the blocks join
    /// into the whole matrix's quantization.
    fn quantize_now(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        scheme: Quantization,
    ) -> Result<HostQuantized, LoadError> {
        let (full, data) = self.fetch(&format!("{name}.weight"), &[rows, cols])?;
        let stored = ScaleType::of(data.dtype);
        let width = data.dtype.size();
        if !matches!(
            data.dtype,
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) || data.as_bytes().len() != rows * cols * width
        {
            return Err(LoadError::DType {
                name: full,
                found: format!("{:?}", data.dtype),
            });
        }
        let (words, groups) = (cols / scheme.per_word(), cols / scheme.group_size);
        let mut whole = HostQuantized {
            scheme,
            rows,
            cols,
            packed: Vec::with_capacity(rows * words),
            scales: Vec::with_capacity(rows * groups),
            biases: Vec::with_capacity(rows * groups),
        };
        // About 16 MiB of f32 at a time.
        let block = ((4 << 20) / cols.max(1)).max(1);
        for start in (0..rows).step_by(block) {
            let end = (start + block).min(rows);
            let bytes = &data.as_bytes()[start * cols * width..end * cols * width];
            let part = TensorData::from_bytes_vec(bytes.to_vec(), [end - start, cols], data.dtype);
            let values = Self::floats(full.clone(), part)?;
            let q = quantize(&values, end - start, cols, scheme, stored);
            whole.packed.extend_from_slice(&q.packed);
            whole.scales.extend_from_slice(&q.scales);
            whole.biases.extend_from_slice(&q.biases);
        }
        Ok(whole)
    }

    fn stored_quantized(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<HostQuantized>, LoadError> {
        let scales_name = format!("{name}.scales");
        let Some(scales) = (self.source)(&self.names.resolve(&scales_name)) else {
            return Ok(None);
        };
        let full = self.names.resolve(&format!("{name}.weight"));
        let [scale_rows, groups] = *scales.shape.as_slice() else {
            return Err(LoadError::Config(format!(
                "`{}` has shape {:?}, expected [rows, groups]",
                self.names.resolve(&scales_name),
                scales.shape
            )));
        };
        let Some(words) = (self.source)(&full) else {
            return Err(LoadError::Missing {
                name: full,
                expected: vec![rows, 0],
            });
        };
        let word_cols = words.shape.get(1).copied().unwrap_or(0);
        // Bits and group size follow from the shapes: cols / words values per word, cols /
        // groups values per group (as MLX's `dequantize` checks them).
        let scheme = (word_cols > 0
            && groups > 0
            && cols.is_multiple_of(word_cols)
            && cols.is_multiple_of(groups))
        .then(|| Quantization {
            bits: 32 / (cols / word_cols).max(1),
            group_size: cols / groups,
        });
        let Some(scheme) = scheme.filter(|s| s.check().is_ok() && s.per_word() * word_cols == cols)
        else {
            return Err(LoadError::Config(format!(
                "`{full}` is quantized as {:?} words with {groups} groups per row, which is no 4- or 8-bit scheme for {cols} columns",
                words.shape
            )));
        };
        let expected = [rows, word_cols];
        if words.shape.as_slice() != expected || scale_rows != rows {
            return Err(LoadError::Shape {
                name: full,
                expected: expected.to_vec(),
                found: words.shape.to_vec(),
            });
        }
        if words.dtype != DType::U32 {
            return Err(LoadError::DType {
                name: full,
                found: format!("{:?} (quantized weights are uint32)", words.dtype),
            });
        }
        let packed = words.into_vec::<u32>().map_err(|e| LoadError::DType {
            name: full.clone(),
            found: format!("{e:?}"),
        })?;
        let scales = Self::floats(self.names.resolve(&scales_name), scales)?;
        let (_, biases) = self.fetch(&format!("{name}.biases"), &[rows, groups])?;
        let biases = Self::floats(self.names.resolve(&format!("{name}.biases")), biases)?;
        let q = HostQuantized {
            scheme,
            rows,
            cols,
            packed,
            scales,
            biases,
        };
        q.check().map_err(LoadError::Config)?;
        Ok(Some(q))
    }
}

/// How [`Init`] draws one tensor: uniform in `offset ± scale`, plus one at the centre of every
/// `k×k` kernel when `centre` (the identity a re-parameterised per-channel mixer carries).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    pub scale: f32,
    pub offset: f32,
    pub centre: bool,
}

impl Draw {
    /// Uniform in `±scale`.
    pub fn uniform(scale: f64) -> Self {
        Self {
            scale: scale as f32,
            offset: 0.0,
            centre: false,
        }
    }

    /// Uniform in `offset ± scale`.
    pub fn around(offset: f64, scale: f64) -> Self {
        Self {
            scale: scale as f32,
            offset: offset as f32,
            centre: false,
        }
    }

    /// He-style: uniform in `±√(gain / fan_in)`, `fan_in` the product of all axes but the first.
    pub fn fan_in(shape: &[usize], gain: f64) -> Self {
        let fan_in: usize = match shape {
            [] => 1,
            [n] => *n,
            [_, rest @ ..] => rest.iter().product(),
        };
        Self::uniform((gain / fan_in.max(1) as f64).sqrt())
    }

    /// With one added at the centre of every kernel.
    pub fn centred(self) -> Self {
        Self {
            centre: true,
            ..self
        }
    }
}

/// A model's parameters drawn at random, with magnitudes a model gives per tensor (`rule`) so
/// that activations stay in range through a deep network: for tests and benchmarks, whose
/// timings do not depend on the values as long as none is denormal.
///
/// Plain draws go straight to the device (a 7B-shaped model never passes through the host);
/// draws with a centre, and values a constructor folds on the host, come from a seeded
/// SplitMix64 stream per tensor name.
pub struct Init<B: Backend> {
    device: B::Device,
    seed: u64,
    rule: fn(&str, &[usize]) -> Draw,
    quantization: Option<Quantization>,
}

impl<B: Backend> Init<B> {
    /// Random parameters on `device` drawn by `rule`; `seed` seeds the backend's generator and
    /// the host streams.
    pub fn new(device: &B::Device, seed: u64, rule: fn(&str, &[usize]) -> Draw) -> Self {
        B::seed(device, seed);
        Self {
            device: device.clone(),
            seed,
            rule,
            quantization: None,
        }
    }

    /// Quantizing the weights the model allows to `scheme` (drawn on the host first).
    pub fn with_quantization(self, scheme: Option<Quantization>) -> Self {
        Self {
            quantization: scheme,
            ..self
        }
    }

    fn device_draw<const D: usize>(&self, draw: Draw, shape: [usize; D]) -> Tensor<B, D> {
        let (low, high) = (draw.offset - draw.scale, draw.offset + draw.scale);
        Tensor::random(
            shape,
            Distribution::Uniform(low as f64, high as f64),
            &self.device,
        )
    }
}

impl<B: Backend> Params<B> for Init<B> {
    fn device(&self) -> &B::Device {
        &self.device
    }

    fn quantization(&self) -> Option<Quantization> {
        self.quantization
    }

    fn host(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let draw = (self.rule)(name, shape);
        let n: usize = shape.iter().product();
        let kernel = match shape {
            [.., h, w] => h * w,
            _ => 1,
        };
        let mut state = self.seed ^ fnv1a64(name);
        Ok((0..n)
            .map(|i| {
                let v = draw.offset + draw.scale * (2.0 * unit(&mut state) - 1.0);
                if draw.centre && i % kernel == kernel / 2 {
                    v + 1.0
                } else {
                    v
                }
            })
            .collect())
    }

    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        let draw = (self.rule)(name, &shape);
        if draw.centre {
            let values = self.host(name, &shape)?;
            return Ok(upload(values, shape, &self.device));
        }
        Ok(self.device_draw(draw, shape))
    }

    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>, LoadError> {
        let draw = (self.rule)(&format!("{name}.weight"), &[d_out, d_in]);
        let weight = self.device_draw(draw, [d_in, d_out]);
        let bias = match bias {
            true => Some(self.tensor(&format!("{name}.bias"), [d_out])?),
            false => None,
        };
        Ok(Linear::new(weight, bias))
    }

    fn table(
        &mut self,
        name: &str,
        [rows, cols]: [usize; 2],
        block_rows: usize,
        transposed: bool,
    ) -> Result<Vec<Tensor<B, 2>>, LoadError> {
        let draw = (self.rule)(name, &[rows, cols]);
        let block_rows = block_rows.max(1);
        Ok((0..rows)
            .step_by(block_rows)
            .map(|start| {
                let n = block_rows.min(rows - start);
                let shape = if transposed { [cols, n] } else { [n, cols] };
                self.device_draw(draw, shape)
            })
            .collect())
    }
}

fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// SplitMix64's next value as a uniform f32 in [0, 1).
fn unit(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (2.0f32).powi(-24)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENAMES: &[(&str, &str)] = &[("^a.", "x."), (".b.", ".y."), (".c$", ".z")];

    #[test]
    fn renames_apply_in_order_then_the_prefix() {
        let names = NameMap::new("p.", RENAMES);
        assert_eq!(names.resolve("a.b.c"), "p.x.y.z");
        assert_eq!(names.resolve("q.a.b.c.d"), "p.q.a.y.c.d");
        assert_eq!(NameMap::prefixed("").resolve("a.b"), "a.b");
    }

    #[test]
    fn loader_names_missing_misshaped_integer_and_training_form_tensors() {
        type B = burn::backend::Flex;
        let names = NameMap::prefixed("m.").with_training_forms(&[("reparam", "rbr.0")]);
        let mut source = |name: &str| match name {
            "m.w" => Some(TensorData::new(vec![1.0f32, 2.0], [2])),
            "m.ints" => Some(TensorData::new(vec![1i64, 2], [2])),
            "m.k.rbr.0.weight" => Some(TensorData::new(vec![0.0f32], [1])),
            _ => None,
        };
        let mut loader = Loader::<B>::new(&mut source, &names, &Default::default());
        assert_eq!(loader.host("w", &[2]), Ok(vec![1.0, 2.0]));
        assert_eq!(
            loader.host("w", &[3]),
            Err(LoadError::Shape {
                name: "m.w".into(),
                expected: vec![3],
                found: vec![2]
            })
        );
        assert!(matches!(
            loader.host("ints", &[2]),
            Err(LoadError::DType { .. })
        ));
        assert_eq!(
            loader.host("nothing", &[1]),
            Err(LoadError::Missing {
                name: "m.nothing".into(),
                expected: vec![1]
            })
        );
        assert_eq!(
            loader.host("k.reparam.weight", &[1]),
            Err(LoadError::TrainForm {
                name: "m.k.rbr.0.weight".into()
            })
        );
    }

    #[test]
    fn linear_layers_are_stored_input_major() {
        type B = burn::backend::Flex;
        let names = NameMap::prefixed("");
        let mut source = |name: &str| match name {
            // PyTorch [out = 3, in = 2].
            "l.weight" => Some(TensorData::new(vec![1.0f32, 2., 3., 4., 5., 6.], [3, 2])),
            "l.bias" => Some(TensorData::new(vec![0.5f32, 0., -0.5], [3])),
            _ => None,
        };
        let mut loader = Loader::<B>::new(&mut source, &names, &Default::default());
        let linear = loader.linear("l", 2, 3, true).unwrap();
        assert_eq!((linear.d_input(), linear.d_output()), (2, 3));
        let y = linear.forward(Tensor::<B, 2>::from_data(
            [[1.0f32, 1.0]],
            &Default::default(),
        ));
        y.into_data()
            .assert_eq(&TensorData::from([[3.5f32, 7.0, 10.5]]), false);
    }

    #[test]
    fn init_draws_within_the_rule_and_centres_kernels() {
        type B = burn::backend::Flex;
        let rule = |name: &str, _: &[usize]| match name {
            "mixer" => Draw::uniform(0.1).centred(),
            _ => Draw::around(1.0, 0.25),
        };
        let mut init = Init::<B>::new(&Default::default(), 3, rule);
        let mixer = init.host("mixer", &[2, 1, 3, 3]).unwrap();
        for (i, v) in mixer.iter().enumerate() {
            let centre = if i % 9 == 4 { 1.0 } else { 0.0 };
            assert!((v - centre).abs() <= 0.1, "{i}: {v}");
        }
        assert_ne!(mixer, init.host("other", &[2, 1, 3, 3]).unwrap());
        assert_eq!(mixer, init.host("mixer", &[2, 1, 3, 3]).unwrap());
        let t: Tensor<B, 2> = init.tensor("norm", [4, 50]).unwrap();
        let values = t.into_data().into_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| (0.75..=1.25).contains(v)));
        assert!(values.iter().any(|v| (v - values[0]).abs() > 1e-3));
    }
}
