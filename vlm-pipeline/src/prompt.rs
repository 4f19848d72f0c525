//! The `qwen_2` conversation template and tokenisation around the `<image>` placeholder.

use crate::tokenizer::{Tokenizer, TokenizerError};

/// The placeholder the reference puts in the token ids where the image tokens go.
pub const IMAGE_TOKEN_INDEX: i64 = -200;
/// The text marker of the image in a prompt.
pub const IMAGE_MARKER: &str = "<image>";
/// The reference's default system message (`conv_qwen_2`).
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// The `qwen_2` template: `<|im_start|>system\n{system}<|im_end|>\n`, then each message as
/// `<|im_start|>{role}\n{text}<|im_end|>\n`, then `<|im_start|>assistant\n` to answer.
/// `predict.py` puts `<image>\n` before the first user text when there is an image, unless a
/// message already places the `<image>` marker.
pub fn qwen2_prompt(system: &str, messages: &[Message], with_image: bool) -> String {
    let mut out = format!("<|im_start|>system\n{system}<|im_end|>\n");
    let mut image_placed = !with_image || messages.iter().any(|m| m.content.contains(IMAGE_MARKER));
    for m in messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        out.push_str(&format!("<|im_start|>{role}\n"));
        if !image_placed && m.role == Role::User {
            if !m.content.contains(IMAGE_MARKER) {
                out.push_str(IMAGE_MARKER);
                out.push('\n');
            }
            image_placed = true;
        }
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

/// Token ids of `prompt` with [`IMAGE_TOKEN_INDEX`] for each `<image>`: each text chunk is
/// tokenised on its own (`tokenizer_image_token`), so no BPE merge crosses the marker.
pub fn tokenize_with_image(
    tokenizer: &Tokenizer,
    prompt: &str,
) -> Result<Vec<i64>, TokenizerError> {
    let mut ids = Vec::new();
    for (i, chunk) in prompt.split(IMAGE_MARKER).enumerate() {
        if i > 0 {
            ids.push(IMAGE_TOKEN_INDEX);
        }
        ids.extend(tokenizer.encode(chunk)?.into_iter().map(i64::from));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matches_predict_py() {
        let messages = [Message {
            role: Role::User,
            content: "Describe the image.".into(),
        }];
        assert_eq!(
            qwen2_prompt(DEFAULT_SYSTEM, &messages, true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            qwen2_prompt("Be brief.", &messages, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
