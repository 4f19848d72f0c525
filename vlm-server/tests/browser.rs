//! The webcam page in headless Chromium with a fake camera, driven over the DevTools protocol:
//! load the model from the page, start the webcam, see answers stream and counters move.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it; `CHROMIUM=/path` picks another). Without
//! one the test fails under CI (`CI` set) and is skipped with a notice elsewhere.
//! `FASTVLM_SCREENSHOT=path.png` saves a screenshot of the page mid-run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{MODEL, TestServer};
use serde_json::{Value, json};
use tungstenite::Message;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(move |dir| dir.join(name))
            .collect::<Vec<_>>()
    })
    .find(|p| p.is_file())
}

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
}

impl Browser {
    fn launch(binary: &Path) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
                "--window-size=1280,860",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromium");
        // Chromium writes its DevTools port into the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().map(str::to_string))
                .filter(|l| !l.is_empty())
            {
                break port;
            }
            assert!(Instant::now() < deadline, "chromium did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let targets: Value = serde_json::from_str(
            &common::agent()
                .get(&format!("http://127.0.0.1:{port}/json/list"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let (socket, _) =
            tungstenite::connect(page["webSocketDebuggerUrl"].as_str().unwrap()).unwrap();
        Self {
            child,
            _profile: profile,
            socket,
            next_id: 0,
        }
    }

    /// Sends a DevTools command and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::Text(message.to_string().into()))
            .unwrap();
        loop {
            if let Message::Text(t) = self.socket.read().unwrap() {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    fn text(&mut self, id: &str) -> String {
        self.eval(&format!("document.getElementById('{id}').textContent"))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn number(&mut self, id: &str) -> f64 {
        self.text(id).trim().parse().unwrap_or(0.0)
    }

    /// Polls until `done` holds, up to `secs`.
    fn wait(&mut self, what: &str, secs: u64, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done(self) {
            if Instant::now() > deadline {
                let state = self.eval("document.body.innerText");
                panic!("timed out waiting for {what}; page shows:\n{state}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn webcam_page_in_headless_chromium() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium found: CI must install it (apt-get install chromium)"
        );
        eprintln!("skipped: no chromium on PATH (apt-get install chromium, or set CHROMIUM)");
        return;
    };
    let server = TestServer::start(false, |_| {});
    let mut b = Browser::launch(&binary);
    b.call("Page.enable", json!({}));
    b.call("Page.navigate", json!({"url": format!("{}/", server.base)}));
    b.wait("the page", 20, |b| {
        b.eval("document.readyState") == "complete"
    });

    // No model yet: the page says so and Start is disabled.
    b.wait("the empty state", 20, |b| {
        b.text("model-state").contains("no model")
    });
    assert_eq!(b.eval("document.getElementById('start').disabled"), true);

    // Load the checkpoint from the page.
    b.wait("the checkpoint list", 20, |b| {
        b.eval(&format!(
            "[...document.getElementById('model-select').options].some(o => o.value === '{MODEL}')"
        )) == true
    });
    b.eval(&format!(
        "(() => {{ const s = document.getElementById('model-select'); s.value = '{MODEL}'; \
         s.dispatchEvent(new Event('change')); document.getElementById('load').click(); }})()"
    ));
    b.wait("the model to load", 60, |b| {
        b.text("model-state").contains("ready")
    });
    assert!(b.text("model-state").contains(MODEL));

    // Every 3rd frame, short answers; start the fake camera.
    b.eval(
        "(() => { const set = (id, v) => { const e = document.getElementById(id); e.value = v; \
         e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change')); }; \
         set('every-n', '3'); set('max-tokens', '12'); })()",
    );
    b.wait("Start to be enabled", 10, |b| {
        b.eval("document.getElementById('start').disabled") == false
    });
    b.eval("document.getElementById('start').click()");
    b.wait("three answers", 90, |b| b.number("answers-count") >= 3.0);

    let video_fps = b.number("video-fps");
    let sent = b.number("frames-sent");
    let ttft = b.number("ttft");
    let latency = b.number("latency");
    let answer = b.text("history");
    let playing = b.eval("(() => { const v = document.getElementById('video'); return v.videoWidth > 0 && !v.paused; })()");
    eprintln!(
        "page: video {video_fps} fps, {sent} frames sent, {} answers, ttft {ttft} ms, latency {latency} ms, dropped {}",
        b.number("answers-count"),
        b.number("dropped")
    );
    assert_eq!(playing, true, "the video plays");
    assert!(video_fps > 1.0, "video frame rate is measured: {video_fps}");
    assert!(sent >= 3.0);
    assert!(
        ttft > 0.0 && latency >= ttft,
        "ttft {ttft}, latency {latency}"
    );
    assert!(!answer.trim().is_empty(), "answers are shown");
    assert!(b.text("camera-error").trim().is_empty());

    // Counters keep moving while the camera runs.
    let before = b.number("answers-count");
    b.wait("more answers", 60, |b| b.number("answers-count") > before);

    if let Some(path) = std::env::var_os("FASTVLM_SCREENSHOT") {
        use base64::Engine;
        let shot = b.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(&path, png).unwrap();
    }

    b.eval("document.getElementById('stop').click()");
    let sent = b.number("frames-sent");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(b.number("frames-sent"), sent, "Stop stops sending");
}
