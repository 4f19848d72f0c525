use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::quant::{Activations, QuantizedMatrix};

/// A linear layer, `y = x·W + b`, as the models hold it: the ops layer's fused rows
/// ([`crate::ops::linear_residual`], [`crate::ops::qkv_rotary_append`], …) read it as a whole.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: LinearWeight<B>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

/// A linear layer's weight, at the compute precision or quantized.
// A model holds a few hundred of these, each a handful of tensor handles either way: boxing
// the larger variant would only add an indirection to every product.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum LinearWeight<B: Backend> {
    /// `[in, out]`: PyTorch's `[out, in]` transposed once at load, so that the parameter is
    /// contiguous (a transposed view would be laid out again by every matrix product).
    Dense(Param<Tensor<B, 2>>),
    /// `[out, in]` as MLX stores it (each output's row of packed words contiguous: what a
    /// matrix–vector product reads).
    Quantized(QuantizedMatrix<B>),
}

impl<B: Backend> Linear<B> {
    /// A layer over `weight` `[in, out]` and `bias` `[out]`.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: LinearWeight::Dense(Param::from_tensor(weight)),
            bias: bias.map(Param::from_tensor),
        }
    }

    /// A layer over a quantized `weight` `[out, in]` and `bias` `[out]`.
    pub fn quantized(weight: QuantizedMatrix<B>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: LinearWeight::Quantized(weight),
            bias: bias.map(Param::from_tensor),
        }
    }

    /// The weight `[in, out]` when it is stored at the compute precision.
    pub fn dense(&self) -> Option<Tensor<B, 2>> {
        match &self.weight {
            LinearWeight::Dense(w) => Some(w.val()),
            LinearWeight::Quantized(_) => None,
        }
    }

    /// The quantized weight, if it is one.
    pub fn quantized_weight(&self) -> Option<&QuantizedMatrix<B>> {
        match &self.weight {
            LinearWeight::Dense(_) => None,
            LinearWeight::Quantized(q) => Some(q),
        }
    }

    /// Sets how a quantized weight meets the activations at a decoding step; whether the
    /// weight is quantized (a weight at the compute precision has no such choice).
    pub fn set_activations(&mut self, activations: Activations) -> bool {
        match &mut self.weight {
            LinearWeight::Dense(_) => false,
            LinearWeight::Quantized(q) => {
                q.activations = activations;
                true
            }
        }
    }

    /// Input width.
    pub fn d_input(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[0],
            LinearWeight::Quantized(q) => q.cols(),
        }
    }

    /// Output width.
    pub fn d_output(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[1],
            LinearWeight::Quantized(q) => q.rows(),
        }
    }

    /// `[…, in]` → `[…, out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        match &self.weight {
            LinearWeight::Dense(w) => burn::tensor::module::linear(x, w.val(), bias),
            LinearWeight::Quantized(q) => {
                let y = crate::ops::quantized_matmul(x, q);
                match bias {
                    Some(b) => y + b.unsqueeze(),
                    None => y,
                }
            }
        }
    }
}
