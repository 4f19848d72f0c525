//! A server on a free loopback port over the committed tiny checkpoint, and small HTTP helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use vlm_server::{ServeOptions, Server};

pub type Cpu = burn::backend::Flex;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/e2e")
}

/// The release-layout tiny FastVLM (`cargo xtask golden`), under the models root `fixtures/e2e`.
pub const MODEL: &str = "tiny-fastvlm";

pub struct TestServer {
    pub base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server; `load` loads the tiny model at start.
    pub fn start(load: bool, configure: impl FnOnce(&mut ServeOptions)) -> Self {
        let mut options = ServeOptions::new(fixtures());
        options.addr = "127.0.0.1:0".parse().unwrap();
        if load {
            options.model_path = Some(fixtures().join(MODEL));
        }
        configure(&mut options);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let server = Server::bind::<Cpu>(options, Default::default())
                    .await
                    .unwrap();
                addr_tx.send(server.local_addr().unwrap()).unwrap();
                server
                    .run(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let server = Self {
            base: format!("http://{addr}"),
            shutdown: Some(tx),
            thread: Some(thread),
        };
        if load {
            server.wait_ready();
        }
        server
    }

    pub fn ws_url(&self) -> String {
        self.base.replace("http://", "ws://") + "/ws"
    }

    /// Polls `/health` (readiness, open without a key) until the model is ready; panics on a
    /// load error.
    pub fn wait_ready(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, s) = self.get("/health");
            if code == 200 && s["state"] == "ready" {
                return s;
            }
            let message = s["error"]["message"].as_str().unwrap_or("");
            assert!(!message.contains("failed to load"), "{message}");
            assert!(Instant::now() < deadline, "model not ready in 60 s: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut r = agent().get(&format!("{}{path}", self.base)).call().unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, "application/json", body.to_string().as_bytes())
    }

    pub fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let mut r = agent()
            .post(&format!("{}{path}", self.base))
            .header("content-type", content_type)
            .send(body)
            .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

/// A committed test image as a base64 data: URL.
pub fn data_url(name: &str) -> String {
    use base64::Engine;
    let bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
    let mime = if name.ends_with(".jpg") {
        "image/jpeg"
    } else {
        "image/png"
    };
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A chat request about one image, greedy.
pub fn chat(image: &str, prompt: &str, max_tokens: usize) -> Value {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(image)}},
            {"type": "text", "text": prompt},
        ]}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

/// Resident set size of this process, KiB (the server runs in it).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A raw connection to `server`, for requests a client library would not send.
pub fn connect(server: &TestServer) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Everything the server sends until it closes the connection.
pub fn read_all(stream: &mut std::net::TcpStream) -> String {
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(stream, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}
