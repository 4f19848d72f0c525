use std::str::FromStr;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use vlm_kernels::activation::gelu;

/// The projector architectures LLaVA names in `mm_projector_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectorKind {
    /// `linear`: one Linear.
    Linear,
    /// `mlp{depth}x_gelu`: Linear, then (GELU, Linear) × (depth − 1); FastVLM uses depth 2.
    MlpGelu { depth: usize },
}

impl FromStr for ProjectorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "linear" {
            return Ok(Self::Linear);
        }
        s.strip_prefix("mlp")
            .and_then(|r| r.strip_suffix("x_gelu"))
            .and_then(|d| d.parse::<usize>().ok())
            .filter(|&depth| depth >= 1)
            .map(|depth| Self::MlpGelu { depth })
            .ok_or_else(|| {
                format!("unsupported mm_projector_type `{s}` (expected `linear` or `mlpNx_gelu`)")
            })
    }
}

impl ProjectorKind {
    /// Number of Linear layers.
    pub fn depth(self) -> usize {
        match self {
            Self::Linear => 1,
            Self::MlpGelu { depth } => depth,
        }
    }
}

/// A failure to build the projector from tensors.
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
}

/// Linear layers with exact (erf) GELU between them.
#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    pub layers: Vec<Linear<B>>,
}

impl<B: Backend> Projector<B> {
    /// Loads `{prefix}{2i}.weight` / `.bias` for each Linear (PyTorch `nn.Sequential` indices:
    /// the GELUs sit at the odd positions). FastVLM's prefix is `model.mm_projector.`.
    pub fn load(
        kind: ProjectorKind,
        in_features: usize,
        hidden: usize,
        prefix: &str,
        source: &mut dyn FnMut(&str) -> Option<TensorData>,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let mut layers = Vec::with_capacity(kind.depth());
        for i in 0..kind.depth() {
            let d_in = if i == 0 { in_features } else { hidden };
            let name = format!("{prefix}{}", 2 * i);
            let weight = fetch(source, &format!("{name}.weight"), &[hidden, d_in])?;
            let bias = fetch(source, &format!("{name}.bias"), &[hidden])?;
            let mut linear = LinearConfig::new(d_in, hidden).init(device);
            // burn keeps `[in, out]`; transposed on the host so the parameter is contiguous.
            let mut in_out = vec![0.0f32; weight.len()];
            for o in 0..hidden {
                for i in 0..d_in {
                    in_out[i * hidden + o] = weight[o * d_in + i];
                }
            }
            linear.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(in_out, [d_in, hidden]),
                device,
            ));
            linear.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(bias, [hidden]),
                device,
            )));
            layers.push(linear);
        }
        Ok(Self { layers })
    }

    /// `[batch, tokens, in_features]` → `[batch, tokens, hidden]`.
    pub fn forward(&self, features: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut x = features;
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                x = gelu(x);
            }
            x = layer.forward(x);
        }
        x
    }
}

fn fetch(
    source: &mut dyn FnMut(&str) -> Option<TensorData>,
    name: &str,
    expected: &[usize],
) -> Result<Vec<f32>, LoadError> {
    let data = source(name).ok_or_else(|| LoadError::Missing {
        name: name.to_string(),
        expected: expected.to_vec(),
    })?;
    if data.shape.as_slice() != expected {
        return Err(LoadError::Shape {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: data.shape.to_vec(),
        });
    }
    if !matches!(
        data.dtype,
        DType::F32 | DType::F16 | DType::BF16 | DType::F64
    ) {
        return Err(LoadError::DType {
            name: name.to_string(),
            found: format!("{:?}", data.dtype),
        });
    }
    Ok(data
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 above"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llava_projector_names() {
        assert_eq!(
            "mlp2x_gelu".parse(),
            Ok(ProjectorKind::MlpGelu { depth: 2 })
        );
        assert_eq!("linear".parse(), Ok(ProjectorKind::Linear));
        assert_eq!(
            "mlp3x_gelu"
                .parse::<ProjectorKind>()
                .map(ProjectorKind::depth),
            Ok(3)
        );
        assert!(
            "identity"
                .parse::<ProjectorKind>()
                .unwrap_err()
                .contains("identity")
        );
        assert!("mlp0x_gelu".parse::<ProjectorKind>().is_err());
    }
}
