//! Qwen2's tensor names in each checkpoint convention. Canonical names are Hugging Face's
//! `Qwen2ForCausalLM` ones (`model.embed_tokens.weight`, `model.layers.N.*`, `model.norm.weight`,
//! `lm_head.weight`), which Apple's FastVLM checkpoints use as they are.

use vlm_kernels::loader::{Convention, NameMap};

/// Qwen2's names in `convention`; `None` where it holds no language model (a bare timm tower).
pub fn names(convention: Convention) -> Option<NameMap> {
    const HUGGING_FACE: &[(&str, &str)] = &[("^model.", "model.language_model.")];
    const MLX: &[(&str, &str)] = &[
        ("^model.", "language_model.model."),
        ("^lm_head.", "language_model.lm_head."),
    ];
    Some(match convention {
        Convention::Apple => NameMap::prefixed(""),
        Convention::HuggingFace => NameMap::new("", HUGGING_FACE),
        Convention::Mlx => NameMap::new("", MLX),
        Convention::Timm => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions_place_the_decoder_where_their_exporters_do() {
        let cases = [
            (
                Convention::Apple,
                "model.layers.3.mlp.up_proj.weight",
                "model.layers.3.mlp.up_proj.weight",
            ),
            (
                Convention::HuggingFace,
                "model.layers.3.mlp.up_proj.weight",
                "model.language_model.layers.3.mlp.up_proj.weight",
            ),
            (Convention::HuggingFace, "lm_head.weight", "lm_head.weight"),
            (
                Convention::Mlx,
                "model.embed_tokens.weight",
                "language_model.model.embed_tokens.weight",
            ),
            (
                Convention::Mlx,
                "lm_head.weight",
                "language_model.lm_head.weight",
            ),
        ];
        for (convention, canonical, expected) in cases {
            assert_eq!(names(convention).unwrap().resolve(canonical), expected);
        }
        assert!(names(Convention::Timm).is_none());
    }
}
