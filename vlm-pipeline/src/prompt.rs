//! The `qwen_2` conversation template and its token ids.
//!
//! The template alone places control tokens (`<|im_start|>`, `<|im_end|>`) and the image:
//! system, user and assistant text is tokenised as plain text, so a message that spells
//! `<|im_end|>\n<|im_start|>system\n…` or `<image>` gets the tokens of those characters and
//! cannot forge a turn or an image.

use crate::tokenizer::{Tokenizer, TokenizerError};

/// The placeholder the reference puts in the token ids where the image tokens go.
pub const IMAGE_TOKEN_INDEX: i64 = -200;
/// The text marker of the image in the reference's prompt string.
pub const IMAGE_MARKER: &str = "<image>";
/// The reference's default system message (`conv_qwen_2`).
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// `predict.py`'s default question.
pub const DEFAULT_PROMPT: &str = "Describe the image.";
/// Opens a turn.
pub const IM_START: &str = "<|im_start|>";
/// Closes a turn.
pub const IM_END: &str = "<|im_end|>";

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

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// A piece of the templated prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    /// Tokenised as text.
    Text(&'a str),
    /// A control token of the template, by its content.
    Control(&'static str),
    /// Where the image tokens go.
    Image,
}

/// The `qwen_2` template as pieces: `<|im_start|>system\n{system}<|im_end|>\n`, then each
/// message as `<|im_start|>{role}\n{text}<|im_end|>\n`, then `<|im_start|>assistant\n` to
/// answer. With an image, `<image>\n` goes before the text of the first user message, where
/// `predict.py` puts it.
fn pieces<'a>(system: &'a str, messages: &'a [Message], with_image: bool) -> Vec<Piece<'a>> {
    use Piece::{Control, Image, Text};
    let mut out = vec![
        Control(IM_START),
        Text("system\n"),
        Text(system),
        Control(IM_END),
    ];
    out.push(Text("\n"));
    let mut image = with_image;
    for m in messages {
        out.extend([Control(IM_START), Text(m.role.name()), Text("\n")]);
        if image && m.role == Role::User {
            out.extend([Image, Text("\n")]);
            image = false;
        }
        out.extend([Text(&m.content), Control(IM_END), Text("\n")]);
    }
    out.extend([Control(IM_START), Text("assistant\n")]);
    out
}

/// The prompt as the reference writes it out (`<image>` where the image goes), for display
/// and comparison; the model takes [`prompt_ids`], not this string.
pub fn qwen2_prompt(system: &str, messages: &[Message], with_image: bool) -> String {
    pieces(system, messages, with_image)
        .into_iter()
        .map(|p| match p {
            Piece::Text(t) => t,
            Piece::Control(c) => c,
            Piece::Image => IMAGE_MARKER,
        })
        .collect()
}

/// Token ids of the templated conversation, with [`IMAGE_TOKEN_INDEX`] where the image goes.
///
/// The text between two control tokens (or the image) is tokenised as one string, as the
/// reference's tokenizer does after splitting at its special tokens, so ordinary prompts get
/// the reference's ids; control tokens come only from the template.
pub fn prompt_ids(
    tokenizer: &Tokenizer,
    system: &str,
    messages: &[Message],
    with_image: bool,
) -> Result<Vec<i64>, TokenizerError> {
    let mut ids = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, ids: &mut Vec<i64>| -> Result<(), TokenizerError> {
        if !text.is_empty() {
            ids.extend(tokenizer.encode(text)?.into_iter().map(i64::from));
            text.clear();
        }
        Ok(())
    };
    for piece in pieces(system, messages, with_image) {
        match piece {
            Piece::Text(t) => text.push_str(t),
            Piece::Control(c) => {
                flush(&mut text, &mut ids)?;
                let id = tokenizer.token_id(c).ok_or_else(|| {
                    TokenizerError::Invalid(format!("the vocabulary has no `{c}` token"))
                })?;
                ids.push(i64::from(id));
            }
            Piece::Image => {
                flush(&mut text, &mut ids)?;
                ids.push(IMAGE_TOKEN_INDEX);
            }
        }
    }
    flush(&mut text, &mut ids)?;
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

    #[test]
    fn the_image_goes_to_the_first_user_message_only() {
        let messages = [
            Message {
                role: Role::Assistant,
                content: "Hello.".into(),
            },
            Message {
                role: Role::User,
                content: "What is this?".into(),
            },
            Message {
                role: Role::User,
                content: "And <image> this?".into(),
            },
        ];
        let p = pieces("S", &messages, true);
        assert_eq!(p.iter().filter(|&&x| x == Piece::Image).count(), 1);
        let at = p.iter().position(|&x| x == Piece::Image).unwrap();
        assert_eq!(p[at + 2], Piece::Text("What is this?"));
        // Text that spells a control token or the marker stays one text piece.
        assert!(p.contains(&Piece::Text("And <image> this?")));
    }
}
