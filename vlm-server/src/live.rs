//! `GET /ws`: the webcam page's channel. The page sends its settings as JSON text and frames as
//! binary JPEG; the server answers one frame at a time and keeps only the newest frame that
//! arrived meanwhile (older waiting frames are dropped and counted), so answers follow the
//! camera instead of falling behind it.
//!
//! Server → page, JSON text: `start {frame}`, `token {frame, text}`, `done {frame, text,
//! ttft_ms, latency_ms, tokens, finish_reason}`, `dropped {total}`, `error {frame, message}`.

use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use vlm_pipeline::{FinishReason, GenerationOptions, Message, Role};

use crate::connections::ConnectionPermit;
use crate::openai::decode_image;
use crate::worker::{Event, GenerateJob, Job, JobError};
use crate::{AppState, Limits, TEMPLATE_BYTES};

/// The page's settings (all optional in a message; absent fields keep their value).
#[derive(Debug, Clone, Deserialize)]
struct Settings {
    prompt: Option<String>,
    system: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<usize>,
}

#[derive(Debug, Clone)]
struct Config {
    prompt: String,
    system: Option<String>,
    temperature: f32,
    max_tokens: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prompt: "Describe what you see in one sentence.".into(),
            system: None,
            temperature: 0.0,
            max_tokens: 64,
        }
    }
}

struct InFlight {
    frame: u64,
    received: Instant,
    first_token_ms: Option<f64>,
    events: UnboundedReceiver<Event>,
}

/// `GET /ws`. Browsers send any page's WebSocket to loopback; the access check before this
/// refuses one opened by a page of another origin, so no web page can drive the model or read
/// the camera answers behind the user's back.
pub async fn upgrade(
    State(app): State<AppState>,
    permit: Option<Extension<ConnectionPermit>>,
    ws: WebSocketUpgrade,
) -> Response {
    let limit = app.limits.max_body_bytes;
    // A browser sends the API key as a subprotocol; the answer names the plain one.
    ws.protocols(["fastvlm"])
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            // The socket counts against the connection cap for as long as it is open.
            let _permit = permit;
            session(socket, app).await
        })
}

async fn session(mut socket: WebSocket, app: AppState) {
    let mut config = Config::default();
    let mut frames = 0u64;
    let mut dropped = 0u64;
    let mut in_flight: Option<InFlight> = None;
    let mut waiting: Option<(u64, Instant, Vec<u8>)> = None;
    let idle = app.limits.ws_idle_timeout;
    let mut last_message = tokio::time::Instant::now();

    loop {
        let busy = in_flight.is_some();
        let next_event = async {
            match in_flight.as_mut() {
                Some(f) => f.events.recv().await,
                None => std::future::pending().await,
            }
        };
        // Idle: no message from the page for `idle`, and no answer under way.
        let idle_deadline = async {
            if busy {
                std::future::pending().await
            } else {
                tokio::time::sleep_until(last_message + idle).await
            }
        };
        tokio::select! {
            () = idle_deadline => {
                let _ = socket
                    .send(WsMessage::Close(Some(axum::extract::ws::CloseFrame {
                        code: 1000,
                        reason: "idle".into(),
                    })))
                    .await;
                break;
            }
            message = socket.recv() => {
                let Some(Ok(message)) = message else { break };
                last_message = tokio::time::Instant::now();
                match message {
                    WsMessage::Text(text) => {
                        if let Err(e) = apply(&mut config, text.as_str(), &app.limits)
                            && send(&mut socket, json!({"type": "error", "frame": null, "message": e})).await.is_err() {
                                break;
                            }
                    }
                    WsMessage::Binary(bytes) => {
                        frames += 1;
                        let frame = (frames, Instant::now(), bytes.to_vec());
                        if in_flight.is_some() {
                            if waiting.replace(frame).is_some() {
                                dropped += 1;
                                if send(&mut socket, json!({"type": "dropped", "total": dropped})).await.is_err() {
                                    break;
                                }
                            }
                        } else {
                            match launch(&mut socket, &app, &config, frame, &mut dropped).await {
                                Ok(f) => in_flight = f,
                                Err(()) => break,
                            }
                        }
                    }
                    WsMessage::Close(_) => break,
                    WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                }
            }
            event = next_event => {
                let f = in_flight.as_mut().expect("events come only while a frame is in flight");
                let (reply, finished) = match event {
                    Some(Event::Started) => (json!({"type": "start", "frame": f.frame}), false),
                    Some(Event::Token(text)) => {
                        f.first_token_ms.get_or_insert_with(|| ms(f.received));
                        (json!({"type": "token", "frame": f.frame, "text": text}), false)
                    }
                    Some(Event::Done(g)) => {
                        let latency = ms(f.received);
                        (json!({
                            "type": "done",
                            "frame": f.frame,
                            "text": g.text,
                            "ttft_ms": f.first_token_ms.unwrap_or(latency),
                            "latency_ms": latency,
                            "tokens": g.metrics.generated_tokens,
                            "finish_reason": match g.finish_reason {
                                FinishReason::Length => "length",
                                FinishReason::Stop | FinishReason::Cancelled => "stop",
                            },
                            "metrics": g.metrics,
                        }), true)
                    }
                    Some(Event::Failed(e)) => (error_reply(Some(f.frame), &e), true),
                    None => (json!({"type": "error", "frame": f.frame, "message": "the model thread stopped"}), true),
                };
                if send(&mut socket, reply).await.is_err() {
                    break;
                }
                if finished {
                    in_flight = None;
                    if let Some(frame) = waiting.take() {
                        match launch(&mut socket, &app, &config, frame, &mut dropped).await {
                            Ok(f) => in_flight = f,
                            Err(()) => break,
                        }
                    }
                }
            }
        }
    }
    // Dropping `in_flight` closes its channel: the worker stops at its next token.
}

/// Starts `frame`, or tells the page why not (counting a refused frame as dropped); `Err` when
/// the socket is gone.
async fn launch(
    socket: &mut WebSocket,
    app: &AppState,
    config: &Config,
    frame: (u64, Instant, Vec<u8>),
    dropped: &mut u64,
) -> Result<Option<InFlight>, ()> {
    match start(app, config, frame).await {
        Ok(f) => Ok(Some(f)),
        Err(mut reply) => {
            if reply["type"] == "dropped" {
                *dropped += 1;
                reply["total"] = json!(*dropped);
            }
            send(socket, reply).await.map_err(|_| ())?;
            Ok(None)
        }
    }
}

/// Queues `frame`; on failure, the message for the page.
async fn start(
    app: &AppState,
    config: &Config,
    (frame, received, bytes): (u64, Instant, Vec<u8>),
) -> Result<InFlight, Value> {
    let Some((_, input)) = app.worker.ready() else {
        return Err(error_reply(Some(frame), &JobError::NoModel));
    };
    let slot = app
        .worker
        .reserve()
        .map_err(|_| json!({"type": "dropped"}))?;
    let image = decode_image(app, bytes, input)
        .await
        .map_err(|e| json!({"type": "error", "frame": frame, "message": e.message}))?;
    let (events, rx) = unbounded_channel();
    let job = GenerateJob {
        image: Some(image),
        system: config.system.clone(),
        messages: vec![Message {
            role: Role::User,
            content: config.prompt.clone(),
        }],
        options: GenerationOptions {
            temperature: config.temperature,
            max_new_tokens: config.max_tokens,
            ..Default::default()
        },
        events,
    };
    slot.submit(Job::Generate(job));
    Ok(InFlight {
        frame,
        received,
        first_token_ms: None,
        events: rx,
    })
}

fn apply(config: &mut Config, text: &str, limits: &Limits) -> Result<(), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("bad message: {e}"))?;
    if value["type"] != "config" {
        return Err(format!("unknown message type {}", value["type"]));
    }
    let s: Settings = serde_json::from_value(value).map_err(|e| format!("bad config: {e}"))?;
    let mut next = config.clone();
    if let Some(p) = s.prompt {
        next.prompt = p;
    }
    if let Some(sys) = s.system {
        next.system = (!sys.trim().is_empty()).then_some(sys);
    }
    let bytes =
        next.prompt.len() + next.system.as_ref().map_or(0, String::len) + 2 * TEMPLATE_BYTES;
    if bytes > limits.max_text_bytes {
        return Err(format!(
            "the prompt and system message are {bytes} bytes ({TEMPLATE_BYTES} per message for the template); at most {} are accepted",
            limits.max_text_bytes
        ));
    }
    if let Some(t) = s.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(format!("temperature must be between 0 and 2, got {t}"));
        }
        next.temperature = t;
    }
    if let Some(m) = s.max_tokens {
        if m == 0 || m > limits.max_tokens {
            return Err(format!(
                "max_tokens must be between 1 and {}, got {m}",
                limits.max_tokens
            ));
        }
        next.max_tokens = m;
    }
    *config = next;
    Ok(())
}

fn error_reply(frame: Option<u64>, e: &JobError) -> Value {
    let message = match e {
        JobError::NoModel => "no model loaded".to_string(),
        JobError::ModelChanged => "another model was loaded meanwhile".to_string(),
        JobError::BadRequest(m) | JobError::Internal(m) => m.clone(),
    };
    json!({"type": "error", "frame": frame, "message": message})
}

async fn send(socket: &mut WebSocket, value: Value) -> Result<(), axum::Error> {
    socket.send(WsMessage::Text(value.to_string().into())).await
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
