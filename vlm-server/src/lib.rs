//! FastVLM over HTTP: a live webcam page and an OpenAI-compatible API, on axum + tokio.
//!
//! One model is in memory, owned by a dedicated thread (`worker`) that takes requests from a
//! bounded queue, so the async runtime never waits on inference and overload is a 429 rather
//! than unbounded memory. Hostile input is bounded before it costs anything: a request takes
//! its queue slot before its body is read, bodies and text have sizes, images are checked
//! from their headers and decoded on a pool no wider than the cores, connections are capped
//! and time out. Routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the webcam page (embedded; no CDN) |
//! | `GET /ws` | the page's WebSocket: settings as JSON, frames as JPEG, answers streamed |
//! | `GET /api/status` | model state, load progress, queue depth |
//! | `GET /health` | readiness: 200 with a model ready, else 503 |
//! | `GET /api/checkpoints`, `POST /api/load` | checkpoints under the models root; load one |
//! | `POST /v1/chat/completions` | OpenAI chat (text and `image_url` parts, `stream` as SSE) |
//! | `GET /v1/models` | OpenAI model list |

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burn::tensor::backend::Backend;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use vlm_pipeline::image::ImageLimits;

mod access;
mod checkpoints;
mod connections;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod live;
mod openai;
mod worker;

pub use access::KEY_PROTOCOL_PREFIX;
pub use checkpoints::Checkpoints;
pub use error::ApiError;
pub use worker::{QueueStatus, Status};

use access::Access;
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
    /// Requests that may wait behind the running one; more are refused with 429. With 0, a
    /// request is admitted only while the model is idle.
    pub queue_capacity: usize,
    pub limits: Limits,
    /// Run one tiny request after loading so JIT compilation is not on the first user's clock.
    pub warm_up: bool,
    /// Origins, besides the server's own loopback URLs, whose pages may use the API and the
    /// WebSocket (`https://app.example.org`).
    pub allowed_origins: Vec<String>,
    /// When set, the API and the WebSocket need `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// The language model's weights quantized at load (every model the server loads).
    pub quantization: Option<vlm_pipeline::Quantization>,
    /// How quantized weights meet the activations while decoding (CPU).
    pub activations: vlm_pipeline::Activations,
}

/// Bounds on what a client may ask.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body (and WebSocket message), bytes.
    pub max_body_bytes: usize,
    /// Largest image, width × height, checked before decoding.
    pub max_image_pixels: u64,
    /// Longest image side, checked before decoding.
    pub max_image_side: u32,
    /// Largest conversation, bytes of system and message text plus [`TEMPLATE_BYTES`] per
    /// message, checked before anything is tokenised.
    pub max_text_bytes: usize,
    /// Largest `max_tokens`.
    pub max_tokens: usize,
    /// Open connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (and an idle keep-alive connection to
    /// start its next request).
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once admitted.
    pub body_timeout: Duration,
    /// A WebSocket with nothing in flight and no message for this long is closed.
    pub ws_idle_timeout: Duration,
}

/// What each message adds to [`Limits::max_text_bytes`] for the template around it.
pub const TEMPLATE_BYTES: usize = 32;

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Limits {
    /// The server's defaults, which `vlm-cli serve`'s flags start from.
    pub const DEFAULT: Self = Self {
        max_body_bytes: 20 * 1024 * 1024,
        max_image_pixels: 4096 * 4096,
        max_image_side: vlm_pipeline::image::MAX_SIDE,
        max_text_bytes: 128 * 1024,
        max_tokens: 2048,
        max_connections: 256,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        ws_idle_timeout: Duration::from_secs(300),
    };

    /// The image limits these give.
    pub fn image(&self) -> ImageLimits {
        ImageLimits::new(self.max_image_pixels, self.max_image_side)
    }
}

impl ServeOptions {
    /// The port a server listens on unless told otherwise.
    pub const DEFAULT_PORT: u16 = 8000;
    /// Requests that may wait behind the running one unless told otherwise.
    pub const DEFAULT_QUEUE: usize = 8;

    /// Loopback port 8000, the queue at 8, the default limits, no key.
    pub fn new(models_root: PathBuf) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], Self::DEFAULT_PORT)),
            models_root,
            model_path: None,
            backend: "cpu".into(),
            queue_capacity: Self::DEFAULT_QUEUE,
            limits: Limits::default(),
            warm_up: false,
            allowed_origins: Vec::new(),
            api_key: None,
            quantization: None,
            activations: vlm_pipeline::Activations::F32,
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
    #[error("invalid limit: {0}")]
    Limit(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone)]
pub(crate) struct AppState {
    worker: Worker,
    checkpoints: Arc<Checkpoints>,
    limits: Limits,
    access: Arc<Access>,
    /// Image decodes running at once: no more than the cores.
    decodes: Arc<Semaphore>,
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
    limits: Limits,
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
        let l = &options.limits;
        for (name, value) in [
            ("max_body_bytes", l.max_body_bytes as u64),
            ("max_image_pixels", l.max_image_pixels),
            ("max_image_side", l.max_image_side as u64),
            ("max_text_bytes", l.max_text_bytes as u64),
            ("max_tokens", l.max_tokens as u64),
            ("max_connections", l.max_connections as u64),
        ] {
            if value == 0 {
                return Err(ServerError::Limit(format!("{name} must be at least 1")));
            }
        }
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: options.addr,
                source,
            })?;
        let bound = listener.local_addr()?;
        let worker = Worker::spawn::<B>(
            device,
            options.queue_capacity,
            options.backend.clone(),
            options.warm_up,
            (options.quantization, options.activations),
        );
        let checkpoints = Checkpoints::new(options.models_root.clone(), options.model_path.clone());
        if let Some(path) = &options.model_path {
            let name = checkpoints::name_of(path);
            // The queue is empty at start, so this cannot be refused.
            let _ = worker.load(name, path.clone());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let state = AppState {
            worker,
            checkpoints: Arc::new(checkpoints),
            limits: options.limits,
            access: Arc::new(Access::new(
                bound,
                &options.allowed_origins,
                options.api_key.clone(),
            )),
            decodes: Arc::new(Semaphore::new(cores)),
            ids: Arc::new(AtomicU64::new(0)),
        };
        Ok(Self {
            listener,
            app: router(state, options.limits),
            limits: options.limits,
        })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then lets open requests finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        connections::serve(self.listener, self.app, &self.limits, shutdown).await?;
        Ok(())
    }
}

fn router(state: AppState, limits: Limits) -> Router {
    let guard = axum::middleware::from_fn_with_state(state.clone(), access::check);
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
        .layer(guard)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state)
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

/// Readiness, as orchestrators read it: 200 when a model answers requests, 503 (OpenAI's
/// error shape, the state in the message) while one loads, after a failed load, or with none.
async fn health(State(app): State<AppState>) -> Response {
    readiness(&app.worker.status())
}

fn readiness(s: &Status) -> Response {
    match (s.state, &s.model) {
        ("ready", _) => {
            Json(json!({"status": "ok", "model": s.model, "state": s.state})).into_response()
        }
        ("loading", Some(m)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: loading `{m}`"),
        )
        .into_response(),
        ("error", Some(m)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: `{m}` failed to load: {}",
                s.error.as_deref().unwrap_or("")
            ),
        )
        .into_response(),
        _ => ApiError::no_model().into_response(),
    }
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

async fn load(State(app): State<AppState>, request: Request) -> Result<Response, ApiError> {
    openai::json_content_type(request.headers())?;
    let req: LoadRequest = openai::read_json(request, &app.limits).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_200_only_when_ready() {
        let status = |state, model: Option<&str>| Status {
            state,
            model: model.map(String::from),
            backend: "cpu".into(),
            progress: None,
            error: (state == "error").then(|| "bad weights".to_string()),
            queue: QueueStatus {
                depth: 0,
                capacity: 8,
            },
        };
        for (state, model, code, needle) in [
            ("ready", Some("m"), 200, ""),
            ("loading", Some("m"), 503, "loading `m`"),
            ("error", Some("m"), 503, "bad weights"),
            ("empty", None, 503, "no model"),
        ] {
            let response = readiness(&status(state, model));
            assert_eq!(response.status().as_u16(), code, "{state}");
            let body = body_text(response);
            assert!(body.contains(needle), "{state}: {body}");
            if code == 503 {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["error"]["type"], "service_unavailable");
            }
        }
    }

    /// The body of a response built in memory.
    fn body_text(response: Response) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = runtime
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
