//! The HTTP API and the WebSocket on the committed tiny checkpoint, on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::time::Duration;

use common::{MODEL, TestServer, agent, chat, fixtures};
use serde_json::{Value, json};
use tungstenite::Message;
use vlm_pipeline::{FastVlm, GenerationOptions, Quantization, Request, Role};

/// What the pipeline itself answers for `image` and `prompt`, greedily.
fn direct(image: &str, prompt: &str, max_tokens: usize) -> (String, usize) {
    direct_with(None, image, prompt, max_tokens)
}

fn request(image: &str, prompt: &str, max_tokens: usize) -> Request {
    Request {
        image: Some(vlm_pipeline::image::load(&fixtures().join("images").join(image)).unwrap()),
        system: None,
        messages: vec![vlm_pipeline::Message {
            role: Role::User,
            content: prompt.into(),
        }],
        options: GenerationOptions {
            temperature: 0.0,
            max_new_tokens: max_tokens,
            ..Default::default()
        },
    }
}

/// [`direct`] with the language model quantized as it loads.
fn direct_with(
    quantization: Option<Quantization>,
    image: &str,
    prompt: &str,
    max_tokens: usize,
) -> (String, usize) {
    let model = FastVlm::<common::Cpu>::load_with(
        &fixtures().join(MODEL),
        &Default::default(),
        quantization,
        &mut |_| {},
    )
    .unwrap();
    let g = model
        .generate(&request(image, prompt, max_tokens), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    (g.text, g.metrics.prompt_tokens)
}

/// `serve --quant q4`: the page, the API and the WebSocket answer with the 4-bit model (the
/// pipeline's own answer with the same quantization), which is not the f32 model.
#[test]
fn a_quantized_model_serves_the_page_the_api_and_the_socket() {
    let server = TestServer::start(true, |o| o.quantization = Some(Quantization::Q4));
    let mut r = agent().get(&format!("{}/", server.base)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.body_mut().read_to_string().unwrap().contains("/ws"));

    let (text, _) = direct_with(
        Some(Quantization::Q4),
        "wide.png",
        "Describe the image.",
        12,
    );
    assert!(!text.is_empty());
    let (status, body) = server.post(
        "/v1/chat/completions",
        &chat("wide.png", "Describe the image.", 12),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], text.as_str());

    let (mut socket, _) = tungstenite::connect(server.ws_url()).unwrap();
    socket
        .send(Message::Text(
            json!({"type": "config", "prompt": "Describe the image.", "temperature": 0, "max_tokens": 12})
                .to_string()
                .into(),
        ))
        .unwrap();
    let jpeg = std::fs::read(fixtures().join("images/photo.jpg")).unwrap();
    socket.send(Message::Binary(jpeg.into())).unwrap();
    let seen = read_until(&mut socket, |v| v["type"] == "done");
    let (expected, _) = direct_with(
        Some(Quantization::Q4),
        "photo.jpg",
        "Describe the image.",
        12,
    );
    assert_eq!(seen.last().unwrap()["text"], expected.as_str());

    // The 4-bit model is another model: its log-probabilities over the f32 answer differ.
    let load = |q| {
        FastVlm::<common::Cpu>::load_with(
            &fixtures().join(MODEL),
            &Default::default(),
            q,
            &mut |_| {},
        )
        .unwrap()
    };
    let (f32_model, q4_model) = (load(None), load(Some(Quantization::Q4)));
    let req = request("wide.png", "Describe the image.", 12);
    let ids = f32_model
        .generate(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .token_ids;
    let (want, got) = (
        f32_model.continuation_logprobs(&req, &ids).unwrap(),
        q4_model.continuation_logprobs(&req, &ids).unwrap(),
    );
    assert_eq!(want.len(), ids.len());
    let moved = want
        .iter()
        .zip(&got)
        .flat_map(|(a, b)| a.iter().zip(b))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "quantization changed nothing ({moved})");
}

#[test]
fn chat_completion_matches_the_pipeline() {
    let server = TestServer::start(true, |_| {});
    let (status, body) = server.post(
        "/v1/chat/completions",
        &chat("wide.png", "Describe the image.", 12),
    );
    assert_eq!(status, 200, "{body}");
    let (text, prompt_tokens) = direct("wide.png", "Describe the image.", 12);
    assert!(!text.is_empty());
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], text.as_str());
    assert!(matches!(
        body["choices"][0]["finish_reason"].as_str(),
        Some("stop" | "length")
    ));
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], prompt_tokens);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));

    // The answer depends on the image: another image, another answer (random weights).
    let (_, other) = server.post(
        "/v1/chat/completions",
        &chat("palette.png", "Describe the image.", 12),
    );
    let (other_text, _) = direct("palette.png", "Describe the image.", 12);
    assert_eq!(
        other["choices"][0]["message"]["content"],
        other_text.as_str()
    );
    assert_ne!(other_text, text, "answers must depend on the image");
}

#[test]
fn streaming_sends_deltas_then_done() {
    let server = TestServer::start(true, |_| {});
    let mut body = chat("wide.png", "Describe the image.", 12);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let mut r = agent()
        .post(&format!("{}/v1/chat/completions", server.base))
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let reader = BufReader::new(r.body_mut().as_reader());
    let mut chunks = Vec::new();
    let mut done = false;
    for line in reader.lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            break;
        }
        chunks.push(serde_json::from_str::<Value>(data).unwrap());
    }
    assert!(done, "the stream ends with data: [DONE]");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let (expected, prompt_tokens) = direct("wide.png", "Describe the image.", 12);
    assert_eq!(text.trim_end(), expected);
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .expect("a chunk with finish_reason");
    assert!(matches!(finish, "stop" | "length"));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], prompt_tokens);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
}

#[test]
fn text_only_and_system_messages() {
    let server = TestServer::start(true, |_| {});
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"}
            ],
            "max_tokens": 4, "temperature": 0.7, "seed": 5
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 4);
    // Same seed, same sample.
    let (_, again) = server.post(
        "/v1/chat/completions",
        &json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"}
            ],
            "max_tokens": 4, "temperature": 0.7, "seed": 5
        }),
    );
    assert_eq!(again["choices"], body["choices"]);
}

#[test]
fn malformed_requests_get_json_errors() {
    let server = TestServer::start(true, |o| {
        o.limits.max_body_bytes = 256 * 1024;
        o.limits.max_image_pixels = 100 * 100;
    });
    let cases: Vec<(u16, Vec<u8>, &str, &str)> = vec![
        (400, b"{not json".to_vec(), "application/json", ""),
        (400, br#"{"messages": 3}"#.to_vec(), "application/json", ""),
        (415, br#"{"messages": []}"#.to_vec(), "text/plain", ""),
        (400, br#"{"messages": []}"#.to_vec(), "application/json", "empty"),
        (
            400,
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]})
                .to_string()
                .into_bytes(),
            "application/json",
            "image",
        ),
        (
            400,
            chat("wide.png", "x", 4).to_string().into_bytes(),
            "application/json",
            "pixels are accepted",
        ),
    ];
    for (want, body, content_type, needle) in cases {
        let (status, reply) = server.post_raw("/v1/chat/completions", content_type, &body);
        assert_eq!(status, want, "{reply}");
        let message = reply["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("JSON error: {reply}"));
        assert!(message.contains(needle), "`{message}` lacks `{needle}`");
    }
    // A body over the limit is refused from its Content-Length, before it is read: only the
    // headers are sent (a client still writing the body may see the connection close first).
    let mut over = common::connect(&server);
    std::io::Write::write_all(
        &mut over,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            server.base.trim_start_matches("http://"),
            300 * 1024
        )
        .as_bytes(),
    )
    .unwrap();
    let answer = common::read_all(&mut over);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
    let (status, reply) = server.get("/nowhere");
    assert_eq!(status, 404);
    assert!(reply["error"]["message"].is_string());
    let (status, _) = server.get("/v1/chat/completions");
    assert_eq!(status, 405);
}

#[test]
fn prompt_over_the_context_is_a_400() {
    let server = TestServer::start(true, |_| {});
    let long = "word ".repeat(9000);
    let (status, reply) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": long}], "max_tokens": 4, "stream": true}),
    );
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most")
    );
}

#[test]
fn models_health_and_loading() {
    let server = TestServer::start(false, |_| {});
    // Readiness: no model, no 200.
    let (code, health) = server.get("/health");
    assert_eq!(code, 503, "{health}");
    assert!(
        health["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no model")
    );
    let (_, status) = server.get("/api/status");
    assert_eq!(status["state"], "empty");
    let (status, reply) = server.post("/v1/chat/completions", &chat("wide.png", "x", 4));
    assert_eq!(status, 503, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no model")
    );

    let (_, list) = server.get("/api/checkpoints");
    assert_eq!(
        list["checkpoints"],
        json!([
            {"name": MODEL, "loaded": false},
            {"name": "tiny-fastvlm-hf", "loaded": false}
        ])
    );
    for (name, want) in [
        ("../e2e", 400),
        ("images", 404),
        ("/etc", 400),
        ("nope", 404),
    ] {
        let (status, reply) = server.post("/api/load", &json!({"model": name}));
        assert_eq!(status, want, "{name}: {reply}");
    }
    let (status, _) = server.post("/api/load", &json!({"model": MODEL}));
    assert_eq!(status, 202);
    let ready = server.wait_ready();
    assert_eq!(ready["model"], MODEL);
    let (_, models) = server.get("/v1/models");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["loaded"], true);
    let (code, health) = server.get("/health");
    assert_eq!(code, 200);
    assert_eq!(health["state"], "ready");
    assert_eq!(health["status"], "ok");
    let (status, _) = server.post("/v1/chat/completions", &chat("wide.png", "x", 2));
    assert_eq!(status, 200);
}

#[test]
fn a_broken_checkpoint_is_an_error_state() {
    let root = tempfile::tempdir().unwrap();
    let broken = root.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in std::fs::read_dir(fixtures().join(MODEL)).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), broken.join(f.file_name())).unwrap();
    }
    let weights = broken.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let server = TestServer::start(false, |o| o.models_root = root.path().to_path_buf());
    let (status, _) = server.post("/api/load", &json!({"model": "broken"}));
    assert_eq!(status, 202);
    let status = loop {
        let (_, s) = server.get("/api/status");
        if s["state"] != "loading" {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status["state"], "error");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("model.safetensors"),
        "{status}"
    );
}

#[test]
fn the_page_is_served() {
    let server = TestServer::start(false, |_| {});
    let mut r = agent().get(&format!("{}/", server.base)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let html = r.body_mut().read_to_string().unwrap();
    for id in [
        "id=\"start\"",
        "id=\"video\"",
        "id=\"every-n\"",
        "id=\"model-select\"",
        "/ws",
    ] {
        assert!(html.contains(id), "page lacks {id}");
    }
    assert!(
        !html.contains("https://"),
        "the page loads nothing from elsewhere"
    );
}

/// Reads JSON messages until `stop` says so (or 60 s pass).
fn read_until(
    socket: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    mut stop: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        match socket.read().unwrap() {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                let end = stop(&v);
                seen.push(v);
                if end {
                    return seen;
                }
            }
            _ => continue,
        }
    }
    panic!("timed out; saw {seen:?}");
}

#[test]
fn websocket_streams_answers_and_drops_stale_frames() {
    let server = TestServer::start(true, |_| {});
    let (mut socket, _) = tungstenite::connect(server.ws_url()).unwrap();
    socket
        .send(Message::Text(
            json!({"type": "config", "prompt": "Describe the image.", "temperature": 0, "max_tokens": 12})
                .to_string()
                .into(),
        ))
        .unwrap();
    let jpeg = std::fs::read(fixtures().join("images/photo.jpg")).unwrap();
    socket.send(Message::Binary(jpeg.clone().into())).unwrap();
    let seen = read_until(&mut socket, |v| v["type"] == "done");
    assert_eq!(seen[0], json!({"type": "start", "frame": 1}));
    let streamed: String = seen
        .iter()
        .filter(|v| v["type"] == "token")
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    let done = seen.last().unwrap();
    let (expected, _) = direct("photo.jpg", "Describe the image.", 12);
    assert_eq!(done["text"], expected.as_str());
    assert_eq!(streamed.trim_end(), expected);
    assert!(done["ttft_ms"].as_f64().unwrap() <= done["latency_ms"].as_f64().unwrap());

    // A burst: one frame runs, the newest waits, the ones in between are dropped.
    for _ in 0..5 {
        socket.send(Message::Binary(jpeg.clone().into())).unwrap();
    }
    let mut done_frames = Vec::new();
    let mut dropped = 0;
    read_until(&mut socket, |v| {
        if v["type"] == "done" {
            done_frames.push(v["frame"].as_u64().unwrap());
        }
        if v["type"] == "dropped" {
            dropped = v["total"].as_u64().unwrap();
        }
        done_frames.last() == Some(&6)
    });
    assert_eq!(
        done_frames.first(),
        Some(&2),
        "the first frame of the burst runs"
    );
    assert_eq!(
        dropped as usize + done_frames.len(),
        5,
        "every frame runs or is counted dropped"
    );
    assert!(dropped >= 1, "frames arriving while busy are dropped");

    // Bad settings and undecodable frames are reported, and the session goes on.
    socket
        .send(Message::Text(
            json!({"type": "config", "temperature": 9})
                .to_string()
                .into(),
        ))
        .unwrap();
    let seen = read_until(&mut socket, |v| v["type"] == "error");
    assert!(
        seen.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("temperature")
    );
    socket
        .send(Message::Binary(b"not a jpeg".to_vec().into()))
        .unwrap();
    let seen = read_until(&mut socket, |v| v["type"] == "error");
    assert_eq!(seen.last().unwrap()["frame"], 7);
    socket.send(Message::Binary(jpeg.into())).unwrap();
    let seen = read_until(&mut socket, |v| v["type"] == "done");
    assert_eq!(seen.last().unwrap()["text"], expected.as_str());
}

#[test]
fn websocket_without_a_model_says_so() {
    let server = TestServer::start(false, |_| {});
    let (mut socket, _) = tungstenite::connect(server.ws_url()).unwrap();
    let jpeg = std::fs::read(fixtures().join("images/photo.jpg")).unwrap();
    socket.send(Message::Binary(jpeg.into())).unwrap();
    let seen = read_until(&mut socket, |v| v["type"] == "error");
    assert_eq!(seen.last().unwrap()["message"], "no model loaded");
}

#[test]
fn websocket_from_another_origin_is_refused() {
    use tungstenite::client::IntoClientRequest;
    let server = TestServer::start(false, |_| {});
    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    match tungstenite::connect(request) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    // The page's own origin is welcome.
    let mut request = server.ws_url().into_client_request().unwrap();
    let origin = server.base.clone();
    request
        .headers_mut()
        .insert("Origin", origin.parse().unwrap());
    assert!(tungstenite::connect(request).is_ok());
}
