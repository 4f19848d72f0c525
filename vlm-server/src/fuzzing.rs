//! The body of the `chat_request` fuzz target, a plain function so that `cargo test` replays
//! its corpus on stable (`tests/fuzz_corpora.rs`).

use std::sync::OnceLock;

use vlm_pipeline::Tokenizer;
use vlm_pipeline::prompt::{DEFAULT_SYSTEM, IM_END, IM_START, IMAGE_TOKEN_INDEX, prompt_ids};

use crate::Limits;
use crate::openai::{ChatRequest, prepare};

/// The committed tiny checkpoint's tokenizer (Qwen2's layout, a small vocabulary).
fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/e2e/tiny-fastvlm");
        Tokenizer::from_dir(&dir).expect("the tiny checkpoint's tokenizer")
    })
}

/// A chat request body through the parser and the prompt template: whatever is accepted
/// tokenises with the template's control tokens only (one `<|im_start|>` per turn, the
/// system's and the answer's included, one `<|im_end|>` per closed turn, at most one image).
pub fn chat_request(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<ChatRequest>(data) else {
        return;
    };
    let limits = Limits {
        max_text_bytes: 4096,
        ..Limits::default()
    };
    let Ok(prepared) = prepare(request, &limits) else {
        return;
    };
    let tokenizer = tokenizer();
    let system = prepared.system.as_deref().unwrap_or(DEFAULT_SYSTEM);
    let ids = prompt_ids(
        tokenizer,
        system,
        &prepared.messages,
        prepared.image.is_some(),
    )
    .expect("accepted text tokenises");
    let count = |token: &str| {
        let id = i64::from(tokenizer.token_id(token).expect("control token"));
        ids.iter().filter(|&&i| i == id).count()
    };
    let turns = prepared.messages.len();
    assert_eq!(count(IM_START), turns + 2, "{ids:?}");
    assert_eq!(count(IM_END), turns + 1, "{ids:?}");
    let images = ids.iter().filter(|&&i| i == IMAGE_TOKEN_INDEX).count();
    assert_eq!(images, usize::from(prepared.image.is_some()));
}
