//! The Qwen2 byte-level BPE tokenizer, from `tokenizer.json` or from the slow-tokenizer files
//! Apple's release directories ship (`vocab.json`, `merges.txt`, `added_tokens.json`,
//! `tokenizer_config.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// Qwen2's pre-tokenisation pattern (`tokenization_qwen2.py`).
pub const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Tokens only the prompt template may produce.
const CONTROL_TOKENS: [&str; 4] = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>"];

/// A tokenizer that cannot be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("no tokenizer in `{0}`: expected `tokenizer.json`, or `vocab.json` and `merges.txt`")]
    NotFound(PathBuf),
    #[error("cannot read `{path}`: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Invalid(String),
}

/// The Qwen2 tokenizer with its special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads `tokenizer.json` from `dir` when present, else assembles the slow-tokenizer files.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let inner =
                tokenizers::Tokenizer::from_file(&json).map_err(|e| TokenizerError::Read {
                    path: json.clone(),
                    reason: e.to_string(),
                })?;
            return Ok(Self::text_only(inner));
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if !vocab.is_file() || !merges.is_file() {
            return Err(TokenizerError::NotFound(dir.to_path_buf()));
        }
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| TokenizerError::Read {
                path: vocab.clone(),
                reason: e.to_string(),
            })?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_normalizer(Some(NFC));
        let split = Split::new(
            SplitPattern::Regex(QWEN2_SPLIT.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Invalid(e.to_string()))?;
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));

        // Added tokens in id order, so each gets the id the files give it.
        for (id, (content, special)) in added_tokens(dir)? {
            let token = AddedToken::from(content.clone(), special);
            if special {
                inner.add_special_tokens(&[token]);
            } else {
                inner.add_tokens(&[token]);
            }
            let got = inner.token_to_id(&content);
            if got != Some(id) {
                return Err(TokenizerError::Invalid(format!(
                    "added token `{content}` should have id {id} but the vocabulary gives {got:?}"
                )));
            }
        }
        Ok(Self::text_only(inner))
    }

    /// `inner` set to read special tokens spelled in text as plain text. The template's control
    /// tokens, and `<image>` where a vocabulary has it, count as special even where a
    /// `tokenizer.json` lists them as ordinary added tokens.
    fn text_only(mut inner: tokenizers::Tokenizer) -> Self {
        for control in CONTROL_TOKENS {
            if inner.token_to_id(control).is_some() {
                inner.add_special_tokens(&[AddedToken::from(control, true)]);
            }
        }
        inner.set_encode_special_tokens(true);
        Self { inner }
    }

    /// Token ids of `text` as plain text: special tokens written in it (`<|im_start|>`) are
    /// tokenised as their characters, never as the control token (see [`crate::prompt`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Invalid(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, without special tokens when `skip_special` (the reference's `batch_decode`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Invalid(e.to_string()))
    }

    /// The id of a token given by its text, if it is one token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of one token (byte-level pieces shown as the vocabulary writes them).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// `len(tokenizer)`: regular plus added tokens. Logits at or above it are never produced
    /// (the reference truncates the embedding to this size).
    pub fn len(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// id → (content, special) from `tokenizer_config.json`'s `added_tokens_decoder`, else from
/// `added_tokens.json` (all special, as Qwen2's control tokens are).
fn added_tokens(dir: &Path) -> Result<BTreeMap<u32, (String, bool)>, TokenizerError> {
    let read = |path: PathBuf| -> Result<Option<Value>, TokenizerError> {
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| TokenizerError::Read {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TokenizerError::Read {
                path,
                reason: e.to_string(),
            })
    };
    let mut out = BTreeMap::new();
    if let Some(config) = read(dir.join("tokenizer_config.json"))?
        && let Some(decoder) = config
            .get("added_tokens_decoder")
            .and_then(Value::as_object)
    {
        for (id, token) in decoder {
            let id: u32 = id.parse().map_err(|_| {
                TokenizerError::Invalid(format!("added token id `{id}` is not a number"))
            })?;
            let content = token
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let special = token
                .get("special")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            out.insert(id, (content.to_string(), special));
        }
    }
    if let Some(added) = read(dir.join("added_tokens.json"))? {
        for (content, id) in added.as_object().into_iter().flatten() {
            let id = id.as_u64().ok_or_else(|| {
                TokenizerError::Invalid(format!("added token `{content}` has no numeric id"))
            })?;
            out.entry(id as u32).or_insert((content.clone(), true));
        }
    }
    Ok(out)
}
