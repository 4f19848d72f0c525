//! Loading Hugging Face Qwen2 tensors (`model.embed_tokens`, `model.layers.N.*`, `model.norm`,
//! `lm_head`) into the model.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

/// A failure to build the model from a set of tensors.
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
    #[error("invalid Qwen2 configuration: {0}")]
    Config(String),
}

/// Hands out tensors by name, checked against their expected shape, as f32 host values.
pub(crate) struct WeightLoader<'a, B: Backend> {
    source: &'a mut dyn FnMut(&str) -> Option<TensorData>,
    prefix: &'a str,
    pub(crate) device: B::Device,
}

impl<'a, B: Backend> WeightLoader<'a, B> {
    pub(crate) fn new(
        source: &'a mut dyn FnMut(&str) -> Option<TensorData>,
        prefix: &'a str,
        device: &B::Device,
    ) -> Self {
        Self {
            source,
            prefix,
            device: device.clone(),
        }
    }

    pub(crate) fn host(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>, LoadError> {
        let full = format!("{}{name}", self.prefix);
        let data = (self.source)(&full).ok_or_else(|| LoadError::Missing {
            name: full.clone(),
            expected: expected.to_vec(),
        })?;
        if data.shape.as_slice() != expected {
            return Err(LoadError::Shape {
                name: full,
                expected: expected.to_vec(),
                found: data.shape.to_vec(),
            });
        }
        if !matches!(
            data.dtype,
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            return Err(LoadError::DType {
                name: full,
                found: format!("{:?}", data.dtype),
            });
        }
        Ok(data
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32 above"))
    }

    pub(crate) fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        let values = self.host(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }

    /// A linear layer from PyTorch's `[out, in]` weight.
    pub(crate) fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>, LoadError> {
        // burn keeps `[in, out]`: transpose on the host so the parameter is contiguous (a
        // transposed view would be re-laid-out by every matmul).
        let out_in = self.host(&format!("{name}.weight"), &[d_out, d_in])?;
        let weight: Tensor<B, 2> = Tensor::from_data(
            TensorData::new(transpose(&out_in, d_out, d_in), [d_in, d_out]),
            &self.device,
        );
        let bias = if bias {
            Some(Param::from_tensor(
                self.tensor(&format!("{name}.bias"), [d_out])?,
            ))
        } else {
            None
        };
        let mut linear = LinearConfig::new(d_in, d_out)
            .with_bias(bias.is_some())
            .init(&self.device);
        linear.weight = Param::from_tensor(weight);
        linear.bias = bias;
        Ok(linear)
    }
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}
