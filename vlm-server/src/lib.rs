//! FastVLM over HTTP: a live webcam page and an OpenAI-compatible API, on axum + tokio.
//!
//! One model is in memory, owned by a dedicated thread (`worker`) that takes requests from a
//! bounded queue, so the async runtime never waits on inference and overload is a 429 rather
//! than unbounded memory. Routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the webcam page (embedded; no CDN) |
//! | `GET /ws` | the page's WebSocket: settings as JSON, frames as JPEG, answers streamed |
//! | `GET /api/status`, `GET /health` | model state, load progress, queue depth |
//! | `GET /api/checkpoints`, `POST /api/load` | checkpoints under the models root; load one |
//! | `POST /v1/chat/completions` | OpenAI chat (text and `image_url` parts, `stream` as SSE) |
//! | `GET /v1/models` | OpenAI model list |

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burn::tensor::backend::Backend;
use serde::Deserialize;
use serde_json::json;

mod checkpoints;
mod error;
mod live;
mod openai;
mod worker;

pub use checkpoints::Checkpoints;
pub use error::ApiError;
pub use worker::{QueueStatus, Status};

use worker::Worker;

/// The page, compiled in.
const PAGE: &str = include_str!("../assets/index.html");

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on; loopback unless the user asks otherwise.
    pub addr: SocketAddr,
    /// Directory whose subdirectories are the checkpoints clients may load.
    pub models_root: PathBuf,
    /// A checkpoint to load at start.
    pub model_path: Option<PathBuf>,
    /// Name of the backend, for the status.
    pub backend: String,
    /// Requests that may wait behind the running one; more are refused with 429.
    pub queue_capacity: usize,
    pub limits: Limits,
    /// Run one tiny request after loading so JIT compilation is not on the first user's clock.
    pub warm_up: bool,
}

/// Bounds on what a client may ask.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body (and WebSocket message), bytes.
    pub max_body_bytes: usize,
    /// Largest image, width × height, checked before decoding.
    pub max_image_pixels: u64,
    /// Largest `max_tokens`.
    pub max_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 20 * 1024 * 1024,
            max_image_pixels: 4096 * 4096,
            max_tokens: 2048,
        }
    }
}

impl ServeOptions {
    /// Loopback port 8000, the queue at 8, the default limits.
    pub fn new(models_root: PathBuf) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            models_root,
            model_path: None,
            backend: "cpu".into(),
            queue_capacity: 8,
            limits: Limits::default(),
            warm_up: false,
        }
    }
}

/// Failures before serving starts.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("models root `{0}` is not a directory")]
    ModelsRoot(PathBuf),
    #[error("model directory `{0}` does not exist")]
    ModelPath(PathBuf),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone)]
pub(crate) struct AppState {
    worker: Worker,
    checkpoints: Arc<Checkpoints>,
    limits: Limits,
    ids: Arc<AtomicU64>,
}

impl AppState {
    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A bound server, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: Router,
}

impl Server {
    /// Binds the address and starts the model thread on `device` (loading `model_path` if
    /// given, in the background: the status shows its progress).
    pub async fn bind<B: Backend>(
        options: ServeOptions,
        device: B::Device,
    ) -> Result<Self, ServerError> {
        if !options.models_root.is_dir() {
            return Err(ServerError::ModelsRoot(options.models_root));
        }
        if let Some(p) = &options.model_path
            && !p.is_dir()
        {
            return Err(ServerError::ModelPath(p.clone()));
        }
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: options.addr,
                source,
            })?;
        let worker = Worker::spawn::<B>(
            device,
            options.queue_capacity,
            options.backend.clone(),
            options.warm_up,
        );
        let checkpoints = Checkpoints::new(options.models_root.clone(), options.model_path.clone());
        if let Some(path) = &options.model_path {
            let name = checkpoints::name_of(path);
            // The queue is empty at start, so this cannot be refused.
            let _ = worker.load(name, path.clone());
        }
        let state = AppState {
            worker,
            checkpoints: Arc::new(checkpoints),
            limits: options.limits,
            ids: Arc::new(AtomicU64::new(0)),
        };
        Ok(Self {
            listener,
            app: router(state, options.limits),
        })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

fn router(state: AppState, limits: Limits) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/api/status", get(status))
        .route("/api/checkpoints", get(list_checkpoints))
        .route("/api/load", post(load))
        .route("/ws", get(live::upgrade))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state)
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

async fn health(State(app): State<AppState>) -> Json<serde_json::Value> {
    let s = app.worker.status();
    Json(json!({"status": "ok", "model": s.model, "state": s.state}))
}

async fn status(State(app): State<AppState>) -> Json<Status> {
    Json(app.worker.status())
}

async fn list_checkpoints(State(app): State<AppState>) -> Json<serde_json::Value> {
    let loaded = app.worker.ready_model();
    let list: Vec<_> = app
        .checkpoints
        .list()
        .into_iter()
        .map(|n| json!({"loaded": loaded.as_deref() == Some(n.as_str()), "name": n}))
        .collect();
    Json(json!({"root": app.checkpoints.root(), "checkpoints": list}))
}

#[derive(Deserialize)]
struct LoadRequest {
    model: String,
}

async fn load(
    State(app): State<AppState>,
    body: Result<Json<LoadRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let dir = app.checkpoints.resolve(&req.model)?;
    if app.worker.loading() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "a model is being loaded; wait for it to finish",
        ));
    }
    app.worker
        .load(req.model.clone(), dir)
        .map_err(|_| ApiError::busy())?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"state": "loading", "model": req.model})),
    )
        .into_response())
}
