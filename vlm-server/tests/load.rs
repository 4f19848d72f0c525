//! Bounded load on loopback: two rounds of 200 concurrent API requests against a queue of 8,
//! then a 60 s WebSocket stream at 30 frames/s (faster than answers come, so frames are
//! dropped). No crash, only 200/429 answers, memory flat after the first round.
//! `FASTVLM_LOAD_SECS` shortens the stream for a quick local run.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{TestServer, chat, fixtures, rss_kib};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn concurrent_requests_then_a_long_stream() {
    let server = TestServer::start(true, |o| o.queue_capacity = 8);

    burst(&server, 1);
    // The first round sizes thread stacks and allocator arenas; memory must stay flat after it.
    let rss_before = rss_kib();
    burst(&server, 2);
    let (_, status) = server.get("/api/status");
    assert_eq!(status["queue"]["depth"], 0, "the queue drains");

    // The webcam stream: frames at 15/s for a minute, reading answers as they come.
    let secs: u64 = std::env::var("FASTVLM_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let (mut socket, _) = tungstenite::connect(server.ws_url()).unwrap();
    if let MaybeTlsStream::Plain(tcp) = socket.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
    }
    let config = json!({"type": "config", "prompt": "Describe the image.", "max_tokens": 16});
    socket
        .send(Message::Text(config.to_string().into()))
        .unwrap();
    let jpeg = std::fs::read(fixtures().join("images/photo.jpg")).unwrap();
    let (mut sent, mut answers, mut dropped) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    let mut rss_samples = Vec::new();
    let stream_start = Instant::now();
    let mut next_frame = stream_start;
    let mut next_sample = stream_start + Duration::from_secs(secs / 6);
    while stream_start.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next_frame {
            socket.send(Message::Binary(jpeg.clone().into())).unwrap();
            sent += 1;
            next_frame += Duration::from_millis(33);
        }
        if Instant::now() >= next_sample {
            rss_samples.push(rss_kib());
            next_sample += Duration::from_secs(secs / 6);
        }
        match read(&mut socket) {
            Some(v) if v["type"] == "done" => {
                answers += 1;
                latencies.push(v["latency_ms"].as_f64().unwrap());
            }
            Some(v) if v["type"] == "dropped" => dropped = v["total"].as_u64().unwrap(),
            Some(v) if v["type"] == "error" => panic!("stream error: {v}"),
            _ => {}
        }
    }
    // Let the last answer finish.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers + dropped < sent && Instant::now() < deadline {
        match read(&mut socket) {
            Some(v) if v["type"] == "done" => answers += 1,
            Some(v) if v["type"] == "dropped" => dropped = v["total"].as_u64().unwrap(),
            _ => {}
        }
    }
    socket.close(None).ok();
    latencies.sort_by(f64::total_cmp);
    let rss_end = rss_kib();
    eprintln!(
        "WebSocket: {secs} s, {sent} frames sent, {answers} answered (latency p50 {:.0} ms, p99 {:.0} ms), {dropped} dropped; RSS samples {:?} MiB, end {} MiB",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        rss_samples.iter().map(|k| k / 1024).collect::<Vec<_>>(),
        rss_end / 1024
    );
    assert_eq!(
        answers + dropped,
        sent,
        "every frame is answered or counted dropped"
    );
    assert!(
        answers >= secs,
        "answers keep coming (at least one a second)"
    );
    // Flat memory: no growth with the number of requests served beyond allocator noise.
    let growth = |a: u64, b: u64| b.saturating_sub(a) / 1024;
    assert!(
        growth(rss_before, rss_end) < 16,
        "RSS grew {} MiB over the run",
        growth(rss_before, rss_end)
    );
    if let (Some(first), Some(last)) = (rss_samples.first(), rss_samples.last()) {
        assert!(
            growth(*first, *last) < 8,
            "RSS climbs during the stream: {rss_samples:?}"
        );
    }
}

/// 200 concurrent chat requests; every one answered 200 or 429.
fn burst(server: &TestServer, round: usize) {
    let body = chat("wide.png", "Describe the image.", 8).to_string();
    let base = server.base.clone();
    let rss_start = rss_kib();
    let start = Instant::now();
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let body = body.clone();
            let url = format!("{base}/v1/chat/completions");
            std::thread::spawn(move || {
                let t = Instant::now();
                let mut r = common::agent()
                    .post(&url)
                    .header("content-type", "application/json")
                    .send(body.as_bytes())
                    .expect("the server answers every request");
                let status = r.status().as_u16();
                let reply: Value =
                    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                (status, reply, t.elapsed().as_secs_f64() * 1e3)
            })
        })
        .collect();
    let results: Vec<(u16, Value, f64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let wall = start.elapsed().as_secs_f64();
    let ok: Vec<&(u16, Value, f64)> = results.iter().filter(|r| r.0 == 200).collect();
    let busy = results.iter().filter(|r| r.0 == 429).count();
    let other: Vec<_> = results
        .iter()
        .filter(|r| r.0 != 200 && r.0 != 429)
        .collect();
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert!(
        ok.len() >= 9,
        "at least the running request and a full queue succeed"
    );
    assert_eq!(ok.len() + busy, 200);
    let text = &ok[0].1["choices"][0]["message"]["content"];
    assert!(
        ok.iter()
            .all(|r| &r.1["choices"][0]["message"]["content"] == text),
        "same greedy answer"
    );
    for r in results.iter().filter(|r| r.0 == 429) {
        assert_eq!(r.1["error"]["type"], "rate_limit_error");
    }
    let mut ok_ms: Vec<f64> = ok.iter().map(|r| r.2).collect();
    ok_ms.sort_by(f64::total_cmp);
    let mut busy_ms: Vec<f64> = results.iter().filter(|r| r.0 == 429).map(|r| r.2).collect();
    busy_ms.sort_by(f64::total_cmp);
    let rss_after = rss_kib();
    eprintln!(
        "API round {round}: 200 concurrent requests in {wall:.2} s: {} × 200 (p50 {:.0} ms, p99 {:.0} ms), {busy} × 429 (p50 {:.1} ms), 0 other; RSS {} → {} MiB",
        ok.len(),
        percentile(&ok_ms, 0.5),
        percentile(&ok_ms, 0.99),
        if busy_ms.is_empty() {
            0.0
        } else {
            percentile(&busy_ms, 0.5)
        },
        rss_start / 1024,
        rss_after / 1024
    );
}

/// One JSON message, or `None` if none arrived within the read timeout.
fn read(socket: &mut tungstenite::WebSocket<MaybeTlsStream<TcpStream>>) -> Option<Value> {
    match socket.read() {
        Ok(Message::Text(t)) => Some(serde_json::from_str(&t).unwrap()),
        Ok(_) => None,
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("socket: {e}"),
    }
}
