use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::Linear;
use vlm_kernels::loader::{Convention, LoadError, Loader, NameMap, Params, Source};
use vlm_kernels::ops;

use crate::ProjectorConfig;

/// The projector's names in `convention`; canonical names are the `nn.Sequential` indices of
/// LLaVA's projector (`0.weight`, `2.bias`, …: the GELUs sit at the odd positions). `None`
/// where the convention holds no projector (a bare timm tower).
pub fn names(convention: Convention) -> Option<NameMap> {
    const HUGGING_FACE: &[(&str, &str)] = &[("^0.", "linear_1."), ("^2.", "linear_2.")];
    const MLX: &[(&str, &str)] = &[("^0.", "linear_0."), ("^2.", "linear_2.")];
    Some(match convention {
        Convention::Apple => NameMap::prefixed("model.mm_projector."),
        Convention::HuggingFace => NameMap::new("model.multi_modal_projector.", HUGGING_FACE),
        Convention::Mlx => NameMap::new("multi_modal_projector.", MLX),
        Convention::Timm => return None,
    })
}

/// Linear layers with exact (erf) GELU between them.
#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    pub layers: Vec<Linear<B>>,
}

impl<B: Backend> Projector<B> {
    /// Builds the projector from a checkpoint's tensors, named as `names` says.
    pub fn load(
        config: &ProjectorConfig,
        names: &NameMap,
        source: &mut Source<'_>,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        Self::build(config, &mut Loader::new(source, names, device))
    }

    /// Builds the projector from `params` (a checkpoint, or random values).
    pub fn build(config: &ProjectorConfig, params: &mut impl Params<B>) -> Result<Self, LoadError> {
        config.validate().map_err(LoadError::Config)?;
        let hidden = config.hidden;
        let layers = (0..config.kind.depth())
            .map(|i| {
                let d_in = if i == 0 { config.in_features } else { hidden };
                params.linear(&(2 * i).to_string(), d_in, hidden, config.bias)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { layers })
    }

    /// `[batch, tokens, in_features]` → `[batch, tokens, hidden]`.
    pub fn forward(&self, features: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut x = features;
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                x = ops::gelu(x);
            }
            x = layer.forward(x);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use burn::backend::Flex;
    use burn::tensor::TensorData;

    use super::*;
    use crate::ProjectorKind;

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

    #[test]
    fn config_deserialises_from_apples_config_json_with_llava_defaults() {
        let config: ProjectorConfig = serde_json::from_str(
            r#"{"mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 3072, "hidden_size": 896, "vocab_size": 9}"#,
        )
        .unwrap();
        assert_eq!(config, ProjectorConfig::fastvlm(896));
        let bare: ProjectorConfig = serde_json::from_str(r#"{"hidden_size": 64}"#).unwrap();
        assert_eq!(
            (bare.kind, bare.in_features, bare.bias),
            (ProjectorKind::Linear, 3072, true)
        );
        let err = serde_json::from_str::<ProjectorConfig>(
            r#"{"hidden_size": 8, "mm_projector_type": "qformer"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("qformer"), "{err}");
    }

    /// The same weights load under every convention's names and give the same projection.
    #[test]
    fn every_convention_names_the_same_layers() {
        type B = Flex;
        let config = ProjectorConfig {
            in_features: 6,
            ..ProjectorConfig::fastvlm(4)
        };
        let reference = config.init::<B>(&Default::default(), 1).unwrap();
        let x = Tensor::<B, 3>::from_data(
            TensorData::new(
                (0..12).map(|i| i as f32 / 7.0).collect::<Vec<_>>(),
                [1, 2, 6],
            ),
            &Default::default(),
        );
        let expected = reference.forward(x.clone()).into_data();
        for convention in [Convention::Apple, Convention::HuggingFace, Convention::Mlx] {
            let names = names(convention).unwrap();
            let mut tensors = HashMap::new();
            for (i, layer) in reference.layers.iter().enumerate() {
                // Stored as PyTorch does, `[out, in]`.
                let weight = layer.dense().expect("dense").transpose().into_data();
                let bias = layer.bias.as_ref().unwrap().val().into_data();
                tensors.insert(names.resolve(&format!("{}.weight", 2 * i)), weight);
                tensors.insert(names.resolve(&format!("{}.bias", 2 * i)), bias);
            }
            let loaded = Projector::<B>::load(
                &config,
                &names,
                &mut |n| tensors.get(n).cloned(),
                &Default::default(),
            )
            .unwrap();
            loaded
                .forward(x.clone())
                .into_data()
                .assert_approx_eq::<f32>(&expected, Default::default());
        }
        assert!(names(Convention::Timm).is_none());
        assert_eq!(
            names(Convention::HuggingFace).unwrap().resolve("2.bias"),
            "model.multi_modal_projector.linear_2.bias"
        );
    }
}
