//! OpenAI-compatible endpoints: `POST /v1/chat/completions` (plain or SSE), `GET /v1/models`.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::unbounded_channel;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use vlm_pipeline::image::Rgb8;
use vlm_pipeline::prompt::IMAGE_MARKER;
use vlm_pipeline::{FinishReason, Generation, GenerationOptions, Message, Role};

use crate::AppState;
use crate::error::ApiError;
use crate::worker::{Event, GenerateJob, Job};

/// The subset of OpenAI's chat request this model can honour. Unknown fields are ignored, and
/// so is `model`: one model is served, whatever name a client library insists on sending.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// OpenAI's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Not in OpenAI's API; vLLM and llama.cpp accept it too.
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

/// A chat request turned into the model's terms.
struct Prepared {
    system: Option<String>,
    messages: Vec<Message>,
    /// Encoded image bytes from the one `data:` URL.
    image: Option<Vec<u8>>,
    options: GenerationOptions,
}

fn prepare(req: ChatRequest, max_tokens_limit: usize) -> Result<Prepared, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("`messages` is empty"));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("`n` must be 1"));
    }
    let mut system: Vec<String> = Vec::new();
    let mut messages = Vec::new();
    let mut image = None;
    for (i, m) in req.messages.into_iter().enumerate() {
        let mut text = Vec::new();
        let mut has_image = false;
        match m.content {
            None => {}
            Some(Content::Text(t)) => text.push(t),
            Some(Content::Parts(parts)) => {
                for part in parts {
                    match part {
                        Part::Text { text: t } => text.push(t),
                        Part::ImageUrl { image_url } => {
                            if image.is_some() {
                                return Err(ApiError::bad_request(
                                    "FastVLM takes one image per request; this one has several",
                                ));
                            }
                            image = Some(data_url(&image_url.url).map_err(|e| {
                                ApiError::bad_request(format!("messages[{i}]: {e}"))
                            })?);
                            has_image = true;
                        }
                    }
                }
            }
        }
        let mut content = text.join("\n");
        if content.contains(IMAGE_MARKER) {
            return Err(ApiError::bad_request(format!(
                "messages[{i}]: the text contains `{IMAGE_MARKER}`; send images as image_url parts"
            )));
        }
        let role = match m.role.as_str() {
            "system" | "developer" => {
                if has_image {
                    return Err(ApiError::bad_request(format!(
                        "messages[{i}]: images go in user messages"
                    )));
                }
                system.push(content);
                continue;
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}]: unsupported role `{other}` (system, developer, user, assistant)"
                )));
            }
        };
        if has_image {
            if role != Role::User {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}]: images go in user messages"
                )));
            }
            // The reference puts the image before the text of its message.
            content = format!("{IMAGE_MARKER}\n{content}");
        }
        messages.push(Message { role, content });
    }
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` needs at least one user message",
        ));
    }

    let defaults = GenerationOptions::default();
    let max_new_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(defaults.max_new_tokens);
    if max_new_tokens == 0 || max_new_tokens > max_tokens_limit {
        return Err(ApiError::bad_request(format!(
            "`max_tokens` must be between 1 and {max_tokens_limit}, got {max_new_tokens}"
        )));
    }
    let options = GenerationOptions {
        temperature: req.temperature.unwrap_or(defaults.temperature),
        top_p: req.top_p.unwrap_or(defaults.top_p),
        top_k: req.top_k.unwrap_or(defaults.top_k),
        seed: req.seed.unwrap_or(defaults.seed),
        max_new_tokens,
        logprobs: None,
    };
    if options.temperature > 2.0 {
        return Err(ApiError::bad_request(format!(
            "`temperature` must be between 0 and 2, got {}",
            options.temperature
        )));
    }
    options.validate().map_err(ApiError::bad_request)?;
    Ok(Prepared {
        system: (!system.is_empty()).then(|| system.join("\n")),
        messages,
        image,
        options,
    })
}

/// The bytes of a base64 `data:image/...` URL. Remote URLs are refused: the server fetches
/// nothing on a client's behalf.
fn data_url(url: &str) -> Result<Vec<u8>, String> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(
            "image_url must be a data: URL (data:image/jpeg;base64,…); remote URLs are not fetched"
                .into(),
        );
    };
    let Some((meta, payload)) = rest.split_once(',') else {
        return Err("malformed data: URL (no comma)".into());
    };
    if !meta.ends_with(";base64") {
        return Err("data: URL must be base64-encoded".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| format!("data: URL is not valid base64: {e}"))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(app): State<AppState>,
    payload: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = payload?;
    let stream = req.stream;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let prepared = prepare(req, app.limits.max_tokens)?;
    let Some(model) = app.worker.ready_model() else {
        return Err(ApiError::no_model());
    };
    if app.worker.is_full() {
        return Err(ApiError::busy());
    }
    let image = match prepared.image {
        Some(bytes) => Some(decode_image(bytes, app.limits.max_image_pixels).await?),
        None => None,
    };

    let (events, mut rx) = unbounded_channel();
    app.worker
        .submit(Job::Generate(GenerateJob {
            image,
            system: prepared.system,
            messages: prepared.messages,
            options: prepared.options,
            events,
        }))
        .map_err(|_| ApiError::busy())?;
    let id = format!("chatcmpl-{}", app.next_id());
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    if !stream {
        loop {
            match rx.recv().await {
                Some(Event::Done(g)) => {
                    return Ok(Json(completion(&id, created, &model, &g)).into_response());
                }
                Some(Event::Failed(e)) => return Err(e.into()),
                Some(Event::Started | Event::Token(_)) => {}
                None => return Err(worker_gone()),
            }
        }
    }

    // Hold the headers until the first token or a failure, so that a request the model refuses
    // (prompt too long, say) still gets its 4xx status rather than an error inside a 200 stream.
    let first = loop {
        match rx.recv().await {
            Some(Event::Started) => {}
            Some(Event::Failed(e)) => return Err(e.into()),
            Some(event) => break event,
            None => return Err(worker_gone()),
        }
    };
    let chunk = ChunkMaker {
        id,
        created,
        model,
        include_usage,
    };
    // The worker's events become SSE events on their own channel; the forwarding task ends
    // (dropping the worker's channel, which cancels generation) when the client goes away.
    let (out, sse) = unbounded_channel::<SseEvent>();
    let _ = out.send(chunk.delta(json!({"role": "assistant", "content": ""})));
    for e in chunk.events(first) {
        let _ = out.send(e);
    }
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            for e in chunk.events(event) {
                if out.send(e).is_err() {
                    return;
                }
            }
        }
    });
    let body = UnboundedReceiverStream::new(sse).map(Ok::<_, Infallible>);
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct ChunkMaker {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChunkMaker {
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn delta(&self, delta: Value) -> SseEvent {
        let c = self.chunk(json!([{"index": 0, "delta": delta, "finish_reason": null}]));
        SseEvent::default().data(c.to_string())
    }

    /// SSE events for one worker event; the last one ends with `data: [DONE]`.
    fn events(&self, event: Event) -> Vec<SseEvent> {
        match event {
            Event::Started => vec![],
            Event::Token(text) => vec![self.delta(json!({ "content": text }))],
            Event::Done(g) => {
                let mut out = vec![
                    SseEvent::default().data(
                        self.chunk(json!([{
                            "index": 0,
                            "delta": {},
                            "finish_reason": finish_reason(g.finish_reason),
                        }]))
                        .to_string(),
                    ),
                ];
                if self.include_usage {
                    let mut c = self.chunk(json!([]));
                    c["usage"] = usage(&g);
                    out.push(SseEvent::default().data(c.to_string()));
                }
                out.push(SseEvent::default().data("[DONE]"));
                out
            }
            Event::Failed(e) => {
                let e = ApiError::from(e);
                vec![
                    SseEvent::default().data(
                        json!({"error": {"message": e.message, "code": e.status.as_u16()}})
                            .to_string(),
                    ),
                    SseEvent::default().data("[DONE]"),
                ]
            }
        }
    }
}

fn completion(id: &str, created: u64, model: &str, g: &Generation) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": g.text},
            "finish_reason": finish_reason(g.finish_reason),
            "logprobs": null,
        }],
        "usage": usage(g),
        // Not in OpenAI's schema (clients ignore it): where the time went.
        "metrics": g.metrics,
    })
}

fn usage(g: &Generation) -> Value {
    json!({
        "prompt_tokens": g.metrics.prompt_tokens,
        "completion_tokens": g.metrics.generated_tokens,
        "total_tokens": g.metrics.prompt_tokens + g.metrics.generated_tokens,
    })
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

fn worker_gone() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "the model thread stopped",
    )
}

/// Decodes off the async threads (a large PNG takes a while), within the pixel limit.
pub(crate) async fn decode_image(bytes: Vec<u8>, max_pixels: u64) -> Result<Rgb8, ApiError> {
    tokio::task::spawn_blocking(move || vlm_pipeline::image::decode_limited(&bytes, max_pixels))
        .await
        .map_err(|_| worker_gone())?
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `GET /v1/models`: the checkpoints under the models root; the loaded one first.
pub async fn models(State(app): State<AppState>) -> Json<Value> {
    let loaded = app.worker.ready_model();
    let mut names = app.checkpoints.list();
    if let Some(l) = &loaded {
        names.retain(|n| n != l);
        names.insert(0, l.clone());
    }
    let data: Vec<Value> = names
        .into_iter()
        .map(|n| {
            json!({
                "id": n,
                "object": "model",
                "created": 0,
                "owned_by": "apple",
                "loaded": loaded.as_deref() == Some(n.as_str()),
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Result<Prepared, ApiError> {
        prepare(serde_json::from_value(v).unwrap(), 1024)
    }

    #[test]
    fn messages_map_to_the_template() {
        let png = base64::engine::general_purpose::STANDARD.encode([1u8, 2, 3]);
        let p = req(json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}
                ]}
            ],
            "max_tokens": 7, "temperature": 0, "seed": 3
        }))
        .ok()
        .unwrap();
        assert_eq!(p.system.as_deref(), Some("Be brief."));
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.messages[0].content, "<image>\nWhat is this?");
        assert_eq!(p.image.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(p.options.max_new_tokens, 7);
        assert_eq!(p.options.temperature, 0.0);
        assert_eq!(p.options.seed, 3);
    }

    #[test]
    fn bad_requests_say_why() {
        let cases = [
            (json!({"messages": []}), "empty"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "unsupported role",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]}]}),
                "remote URLs",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}),
                "base64",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}),
                "max_tokens",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}),
                "top_p",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi <image>"}]}),
                "image_url parts",
            ),
            (
                json!({"messages": [{"role": "system", "content": "only a system message"}]}),
                "at least one user",
            ),
        ];
        for (body, needle) in cases {
            let e = req(body.clone()).err().expect("refused");
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(needle), "{} lacks {needle}", e.message);
        }
    }
}
