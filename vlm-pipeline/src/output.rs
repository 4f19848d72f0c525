//! What a front end writes: the JSON of one prediction, image features as safetensors, and
//! files written whole or not at all.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Serialize;

use crate::fastvlm::{EncodedImage, Generation};
use crate::generate::{FinishReason, Metrics};
use crate::tokenizer::Tokenizer;

/// One prediction as JSON (`vlm-cli predict --json`): the answer, its ids, the optional
/// log-probabilities with each token's text, why it stopped, and the timings.
#[derive(Debug, Clone, Serialize)]
pub struct PredictionJson {
    pub text: String,
    pub token_ids: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<LogprobJson>>,
    pub finish_reason: FinishReason,
    pub metrics: Metrics,
}

/// A generated token, its log-probability and the most likely alternatives at its step.
#[derive(Debug, Clone, Serialize)]
pub struct LogprobJson {
    pub token: u32,
    pub token_text: String,
    pub logprob: f32,
    pub top_logprobs: Vec<AlternativeJson>,
}

/// One alternative at a step.
#[derive(Debug, Clone, Serialize)]
pub struct AlternativeJson {
    pub token: u32,
    pub token_text: String,
    pub logprob: f32,
}

impl PredictionJson {
    /// The JSON of `generation`, each token's text decoded by `tokenizer`.
    pub fn new(generation: Generation, tokenizer: &Tokenizer) -> Self {
        let text_of = |id: u32| tokenizer.decode(&[id], false).unwrap_or_default();
        Self {
            text: generation.text,
            token_ids: generation.token_ids,
            logprobs: generation.logprobs.map(|steps| {
                steps
                    .into_iter()
                    .map(|s| LogprobJson {
                        token: s.token,
                        token_text: text_of(s.token),
                        logprob: s.logprob,
                        top_logprobs: s
                            .top
                            .into_iter()
                            .map(|(token, logprob)| AlternativeJson {
                                token,
                                token_text: text_of(token),
                                logprob,
                            })
                            .collect(),
                    })
                    .collect()
            }),
            finish_reason: generation.finish_reason,
            metrics: generation.metrics,
        }
    }
}

/// A file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write `{}`: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes through a temporary file in the same directory, then renames: a reader never sees
/// half a file, and a failure leaves nothing behind.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    let error = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let tmp = dir.join(format!(".{}.partial", name.to_string_lossy()));
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            error(e)
        })
}

impl<B: Backend> EncodedImage<B> {
    /// A safetensors file of `image_features` `[tokens, mm_hidden_size]` and `projected`
    /// `[tokens, hidden]`, both f32 whatever the compute precision.
    pub fn to_safetensors(self) -> Result<Vec<u8>, safetensors::SafeTensorError> {
        let tensors = [
            ("image_features", self.features),
            ("projected", self.projected),
        ]
        .map(|(name, t)| {
            let [_, tokens, width] = t.dims();
            let bytes: Vec<u8> = t
                .into_data()
                .iter::<f32>()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (name, vec![tokens, width], bytes)
        });
        let mut views = Vec::with_capacity(tensors.len());
        for (name, shape, bytes) in &tensors {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytes,
            )?;
            views.push((*name, view));
        }
        safetensors::serialize(views, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_leave_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomically(&path, b"abc").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        let missing = dir.path().join("no/such/dir/out.bin");
        let e = write_atomically(&missing, b"x").unwrap_err();
        assert!(e.to_string().contains("no/such/dir/out.bin"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
