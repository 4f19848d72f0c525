//! Weights stored at 8 or 4 bits: MLX's affine group quantization, as Apple's `model_export`
//! and mlx-community store FastVLM's language model.
//!
//! A matrix `[rows, cols]` (PyTorch's `[out, in]`) is cut along each row into groups of
//! `group_size` values; each group keeps a `scale` and a `bias` and each value an unsigned
//! integer `q` of `bits` bits, with `w ≈ scale·q + bias`. The integers of a row are packed
//! little-end first into `u32` words (`32 / bits` per word), so a file's `{name}.weight` is
//! `[rows, cols·bits/32]` `uint32` and `{name}.scales`, `{name}.biases` are
//! `[rows, cols/group_size]`.
//!
//! [`quantize`] is `mlx.core.quantize`'s arithmetic step for step (f32 throughout, scales and
//! biases rounded to the source's dtype at the end), so that a release quantized here and one
//! quantized by mlx-vlm hold the same words (checked against MLX in `tests/quant.rs`).

use burn::module::{Module, Param, ParamId};
use burn::tensor::{
    DType, ElementConversion, Int, Tensor, TensorCreationOptions, TensorData, backend::Backend,
};

/// A quantization scheme: bits per value and values per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quantization {
    /// 4 or 8.
    pub bits: usize,
    /// Values per scale and bias along a row: 32, 64 or 128 (MLX's choices; 64 its default).
    pub group_size: usize,
}

impl Quantization {
    /// 8 bits, groups of 64 (mlx-vlm's `-q --q-bits 8`).
    pub const Q8: Self = Self {
        bits: 8,
        group_size: 64,
    };
    /// 4 bits, groups of 64 (mlx-vlm's `-q --q-bits 4`, Apple's FastVLM-7B-int4).
    pub const Q4: Self = Self {
        bits: 4,
        group_size: 64,
    };

    /// Values per packed word.
    pub fn per_word(self) -> usize {
        32 / self.bits
    }

    /// The largest integer a value takes.
    pub fn max_level(self) -> u32 {
        (1 << self.bits) - 1
    }

    /// Whether this crate runs the scheme: 4 or 8 bits, groups of 32, 64 or 128.
    pub fn check(self) -> Result<(), String> {
        if !matches!(self.bits, 4 | 8) {
            return Err(format!(
                "{}-bit weights are not supported (4 or 8)",
                self.bits
            ));
        }
        if !matches!(self.group_size, 32 | 64 | 128) {
            return Err(format!(
                "quantization groups of {} are not supported (32, 64 or 128)",
                self.group_size
            ));
        }
        Ok(())
    }

    /// Whether a row of `cols` values splits into whole groups (and so whole words).
    pub fn fits(self, cols: usize) -> bool {
        cols > 0 && cols.is_multiple_of(self.group_size)
    }
}

impl std::str::FromStr for Quantization {
    type Err = String;

    /// `q8` or `q4` (groups of 64, as MLX's exports), or `q8g32`, `q4g128`, … for another
    /// group size.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "unknown quantization `{text}`: use q8 or q4 (optionally g32/g64/g128, e.g. q4g32)"
            )
        };
        let rest = text.strip_prefix('q').ok_or_else(bad)?;
        let (bits, group) = match rest.split_once('g') {
            Some((bits, group)) => (bits, group.parse::<usize>().map_err(|_| bad())?),
            None => (rest, 64),
        };
        let scheme = Quantization {
            bits: bits.parse().map_err(|_| bad())?,
            group_size: group,
        };
        scheme.check().map_err(|e| format!("{e} (`{text}`)"))?;
        Ok(scheme)
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.group_size {
            64 => write!(f, "q{}", self.bits),
            g => write!(f, "q{}g{g}", self.bits),
        }
    }
}

/// What a quantized product multiplies the weights with at a decoding step (up to four input
/// rows on the CPU, `flex::MATVEC_ROWS`; prefills and the GPU backends always take the f32
/// activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Activations {
    /// The activations as they are, in f32 arithmetic: the product is
    /// dequantize-then-f32-product's up to rounding.
    #[default]
    F32,
    /// The activations rounded to int8 per block of 32 values (one f32 scale each, as
    /// llama.cpp's quantized types round theirs) and multiplied by the weights' integers in
    /// integer dot products (AVX-512 VNNI, AVX2): fewer instructions per weight, at the price of
    /// that rounding (its own row in BENCHMARKS.md's quality table).
    Int8,
}

impl std::str::FromStr for Activations {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "f32" => Ok(Self::F32),
            "int8" | "i8" => Ok(Self::Int8),
            _ => Err(format!(
                "unknown activations `{text}`: use f32 (exact) or int8 (rounded per block of 32)"
            )),
        }
    }
}

impl std::fmt::Display for Activations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        })
    }
}

/// A quantized matrix on the host: what [`quantize`] makes and a file stores.
#[derive(Debug, Clone, PartialEq)]
pub struct HostQuantized {
    pub scheme: Quantization,
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols / per_word]`.
    pub packed: Vec<u32>,
    /// `[rows, cols / group_size]`.
    pub scales: Vec<f32>,
    /// `[rows, cols / group_size]`.
    pub biases: Vec<f32>,
}

/// How the scales and biases are stored: MLX keeps them in the source matrix's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleType {
    F32,
    F16,
    BF16,
}

impl ScaleType {
    /// The scale type of a matrix stored as `dtype` (f32 for anything but f16 and bf16).
    pub fn of(dtype: DType) -> Self {
        match dtype {
            DType::F16 => Self::F16,
            DType::BF16 => Self::BF16,
            _ => Self::F32,
        }
    }

    fn round(self, v: f32) -> f32 {
        match self {
            Self::F32 => v,
            Self::F16 => half::f16::from_f32(v).to_f32(),
            Self::BF16 => half::bf16::from_f32(v).to_f32(),
        }
    }
}

/// `values` `[rows, cols]` row-major quantized by `scheme`, as `mlx.core.quantize` does:
/// per group, the edge (the extreme of larger magnitude) is kept exactly as `scale·q₀ + bias`,
/// `scale = ±max((max − min)/levels, 1e-7)` nudged so that the edge lands on a level, and each
/// value is `clip(round_half_even((w − bias)/scale), 0, levels)`. Scales and biases end rounded
/// to `stored`.
///
/// # Panics
/// When `values` is not `rows · cols` long or `cols` is not a multiple of the group size (the
/// loader checks both first).
pub fn quantize(
    values: &[f32],
    rows: usize,
    cols: usize,
    scheme: Quantization,
    stored: ScaleType,
) -> HostQuantized {
    assert_eq!(values.len(), rows * cols, "quantize: values for the shape");
    assert!(scheme.fits(cols), "quantize: whole groups per row");
    let (gs, per) = (scheme.group_size, scheme.per_word());
    let levels = scheme.max_level() as f32;
    let groups = rows * cols / gs;
    let mut packed = vec![0u32; rows * cols / per];
    let mut scales = Vec::with_capacity(groups);
    let mut biases = Vec::with_capacity(groups);
    for (g, (group, words)) in values
        .chunks_exact(gs)
        .zip(packed.chunks_exact_mut(gs / per))
        .enumerate()
    {
        debug_assert!(g < groups);
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in group {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let below = lo.abs() > hi.abs();
        let mut scale = ((hi - lo) / levels).max(1e-7);
        if !below {
            scale = -scale;
        }
        let edge = if below { lo } else { hi };
        let q0 = (edge / scale).round_ties_even();
        let (scale, bias) = match q0 != 0.0 {
            true => (edge / q0, edge),
            false => (scale, 0.0),
        };
        for (word, chunk) in words.iter_mut().zip(group.chunks_exact(per)) {
            *word = chunk.iter().enumerate().fold(0u32, |acc, (j, &v)| {
                let q = ((v - bias) / scale).round_ties_even().clamp(0.0, levels) as u32;
                acc | (q << (j * scheme.bits))
            });
        }
        scales.push(stored.round(scale));
        biases.push(stored.round(bias));
    }
    HostQuantized {
        scheme,
        rows,
        cols,
        packed,
        scales,
        biases,
    }
}

impl HostQuantized {
    /// Checks that the three arrays have the lengths of a `[rows, cols]` matrix under the
    /// scheme.
    pub fn check(&self) -> Result<(), String> {
        self.scheme.check()?;
        if !self.scheme.fits(self.cols) {
            return Err(format!(
                "{} columns do not split into groups of {}",
                self.cols, self.scheme.group_size
            ));
        }
        let words = self.rows * self.cols / self.scheme.per_word();
        let groups = self.rows * self.cols / self.scheme.group_size;
        if self.packed.len() != words || self.scales.len() != groups || self.biases.len() != groups
        {
            return Err(format!(
                "a {}×{} matrix at {} bits in groups of {} has {words} words and {groups} scales and biases",
                self.rows, self.cols, self.scheme.bits, self.scheme.group_size
            ));
        }
        Ok(())
    }

    /// The matrix `[rows, cols]` back in f32: `scale·q + bias` (one rounding, as MLX's
    /// `dequantize` computes it: the product, then the sum).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        dequantize_rows(
            self.scheme,
            &self.packed,
            &self.scales,
            &self.biases,
            &mut out,
        );
        out
    }
}

/// Dequantizes whole rows: `packed`, `scales`, `biases` of some rows into `out` (their values,
/// row-major).
pub fn dequantize_rows(
    scheme: Quantization,
    packed: &[u32],
    scales: &[f32],
    biases: &[f32],
    out: &mut [f32],
) {
    let (gs, per, bits) = (scheme.group_size, scheme.per_word(), scheme.bits);
    let mask = scheme.max_level();
    for (g, (values, words)) in out
        .chunks_exact_mut(gs)
        .zip(packed.chunks_exact(gs / per))
        .enumerate()
    {
        let (s, b) = (scales[g], biases[g]);
        for (chunk, &word) in values.chunks_exact_mut(per).zip(words) {
            for (j, v) in chunk.iter_mut().enumerate() {
                *v = ((word >> (j * bits)) & mask) as f32 * s + b;
            }
        }
    }
}

/// A quantized matrix `[rows, cols]` on the device (PyTorch's `[out, in]` for a linear layer,
/// `[vocab, hidden]` for a vocabulary table), run through [`crate::ops::quantized_matmul`].
#[derive(Module, Debug)]
pub struct QuantizedMatrix<B: Backend> {
    /// `[rows, cols · bits / 32]`, `u32` words.
    pub packed: Param<Tensor<B, 2, Int>>,
    /// `[rows, cols / group_size]`.
    pub scales: Param<Tensor<B, 2>>,
    /// `[rows, cols / group_size]`.
    pub biases: Param<Tensor<B, 2>>,
    pub bits: usize,
    pub group_size: usize,
    /// How a decoding step's product meets the activations (not stored: a run-time choice).
    pub activations: Activations,
}

impl<B: Backend> QuantizedMatrix<B> {
    /// Uploads a host matrix (checked by the caller: [`HostQuantized::check`]).
    pub fn upload(q: &HostQuantized, device: &B::Device) -> Self {
        let words = q.cols / q.scheme.per_word();
        let groups = q.cols / q.scheme.group_size;
        let packed = Tensor::from_data(
            TensorData::new(q.packed.clone(), [q.rows, words]),
            TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
        );
        let floats =
            |v: &[f32]| Tensor::from_data(TensorData::new(v.to_vec(), [q.rows, groups]), device);
        Self {
            packed: Param::initialized(ParamId::new(), packed),
            scales: Param::from_tensor(floats(&q.scales)),
            biases: Param::from_tensor(floats(&q.biases)),
            bits: q.scheme.bits,
            group_size: q.scheme.group_size,
            activations: Activations::F32,
        }
    }

    /// The same matrix multiplied with `activations` at a decoding step.
    pub fn with_activations(mut self, activations: Activations) -> Self {
        self.activations = activations;
        self
    }

    /// The scheme.
    pub fn scheme(&self) -> Quantization {
        Quantization {
            bits: self.bits,
            group_size: self.group_size,
        }
    }

    /// Rows (outputs of a linear layer).
    pub fn rows(&self) -> usize {
        self.scales.dims()[0]
    }

    /// Columns (inputs of a linear layer).
    pub fn cols(&self) -> usize {
        self.scales.dims()[1] * self.group_size
    }

    /// The matrix `[rows, cols]` at the backend's float dtype, through burn's ops.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        dequantize_tensors(
            self.scheme(),
            self.packed.val(),
            self.scales.val(),
            self.biases.val(),
        )
    }

    /// Rows `ids` `[n]` dequantized, `[n, cols]`.
    pub fn select_rows(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        dequantize_tensors(
            self.scheme(),
            self.packed.val().select(0, ids.clone()),
            self.scales.val().select(0, ids.clone()),
            self.biases.val().select(0, ids),
        )
    }

    /// Row `row` dequantized, `[1, cols]`.
    pub fn row(&self, row: usize) -> Tensor<B, 2> {
        dequantize_tensors(
            self.scheme(),
            self.packed.val().narrow(0, row, 1),
            self.scales.val().narrow(0, row, 1),
            self.biases.val().narrow(0, row, 1),
        )
    }

    /// The device tensors back on the host.
    pub fn to_host(&self) -> HostQuantized {
        let packed = self.packed.val().into_data();
        let packed = match packed.dtype {
            DType::U32 => packed.into_vec::<u32>().unwrap_or_default(),
            _ => packed
                .convert::<i64>()
                .into_vec::<i64>()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v as u32)
                .collect(),
        };
        let floats = |t: Tensor<B, 2>| {
            t.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default()
        };
        HostQuantized {
            scheme: self.scheme(),
            rows: self.rows(),
            cols: self.cols(),
            packed,
            scales: floats(self.scales.val()),
            biases: floats(self.biases.val()),
        }
    }
}

/// `scale·q + bias` through burn's integer and float ops (any backend): each word shifted by
/// every value's offset and masked, then scaled per group.
fn dequantize_tensors<B: Backend>(
    scheme: Quantization,
    packed: Tensor<B, 2, Int>,
    scales: Tensor<B, 2>,
    biases: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let rows = packed.dims()[0];
    let groups = scales.dims()[1];
    let per = scheme.per_word();
    let device = packed.device();
    let shifts: Vec<i64> = (0..per).map(|j| (j * scheme.bits) as i64).collect();
    let shifts = Tensor::<B, 1, Int>::from_data(TensorData::new(shifts, [per]), &device)
        .cast(packed.dtype())
        .reshape([1, 1, per]);
    let levels = packed
        .unsqueeze_dim::<3>(2)
        .bitwise_right_shift(shifts)
        .bitwise_and_scalar((scheme.max_level() as i64).elem())
        .float()
        .reshape([rows, groups, scheme.group_size]);
    let values = levels * scales.unsqueeze_dim(2) + biases.unsqueeze_dim(2);
    values.reshape([rows, groups * scheme.group_size])
}
