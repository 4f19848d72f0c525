//! `vlm-cli download` and `--model NAME` against a local HTTP server serving a zip of the tiny
//! checkpoint: full download, resume after a cut connection, corrupt zip, 404, no server,
//! already present.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const ZIP_NAME: &str = "/llava-fastvithd_0.5b_stage3.zip";

fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/e2e/tiny-fastvlm")
}

/// Apple's layout: one top-level folder named like the zip.
fn zip_of_tiny_model() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.add_directory("llava-fastvithd_0.5b_stage3/", options)
        .unwrap();
    let mut names: Vec<_> = std::fs::read_dir(tiny_model())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let name = format!(
            "llava-fastvithd_0.5b_stage3/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        zip.start_file(name, options).unwrap();
        zip.write_all(&std::fs::read(&path).unwrap()).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

/// What the server saw: one entry per request, the `Range` header if any.
type Log = Arc<Mutex<Vec<Option<String>>>>;

/// Serves `body` at [`ZIP_NAME`] on loopback (Range requests honoured); the first response is
/// cut after `cut_first` bytes when given. Handles at most `max_requests` connections.
fn serve(body: Vec<u8>, cut_first: Option<usize>, max_requests: usize) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().take(max_requests).enumerate() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut headers = HashMap::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let range = headers.get("range").cloned();
            seen.lock().unwrap().push(range.clone());
            let path = request_line.split_whitespace().nth(1).unwrap_or("");
            if path != ZIP_NAME {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
                .unwrap_or(0);
            let rest = &body[start.min(body.len())..];
            let status = if start > 0 {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/zip\r\nConnection: close\r\n\r\n",
                rest.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let send = match cut_first {
                Some(n) if i == 0 => &rest[..n],
                _ => rest,
            };
            let _ = stream.write_all(send);
            let _ = stream.flush();
            // Drain what the client may still send, then close.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = reader.read(&mut [0u8; 1]);
        }
    });
    (base, log)
}

fn cli(args: &[&str], base: &str, home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vlm-cli"))
        .args(args)
        .env("FASTVLM_ZOO_URL", base)
        .env("FASTVLM_HOME", home)
        .output()
        .unwrap()
}

/// `vlm-cli download MODELS --dest dest` with `FASTVLM_HOME` = dest.
fn download(models: &[&str], base: &str, dest: &Path) -> Output {
    let mut args = vec!["download"];
    args.extend_from_slice(models);
    args.extend(["--dest", dest.to_str().unwrap()]);
    cli(&args, base, dest)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn full_download_then_present_then_used_by_name() {
    let (base, log) = serve(zip_of_tiny_model(), None, 1);
    let dest = tempfile::tempdir().unwrap();
    let out = download(&["fastvlm-0.5b"], &base, dest.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("downloading"), "{}", stderr(&out));
    let model = dest.path().join("llava-fastvithd_0.5b_stage3");
    assert!(model.join("config.json").is_file() && model.join("model.safetensors").is_file());
    assert_eq!(leftovers(dest.path()), ["llava-fastvithd_0.5b_stage3"]);

    // Present: skipped without a request (the server would take no more).
    let again = download(&["fastvlm-0.5b-stage3"], &base, dest.path());
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(log.lock().unwrap().len(), 1);

    let list = download(&["--list"], &base, dest.path());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("fastvlm-0.5b-stage3") && text.contains(model.to_str().unwrap()),
        "{text}"
    );

    // `--model NAME` resolves in the cache ($FASTVLM_HOME).
    let info = cli(&["info", "--model", "fastvlm-0.5b"], &base, dest.path());
    assert!(info.status.success(), "{}", stderr(&info));
    assert!(String::from_utf8_lossy(&info.stdout).contains("FastViTHD"));
}

#[test]
fn predict_downloads_on_first_use() {
    let (base, log) = serve(zip_of_tiny_model(), None, 1);
    let home = tempfile::tempdir().unwrap();
    let image = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/e2e/images/wide.png");
    let out = cli(
        &[
            "predict",
            "--model",
            "fastvlm-0.5b",
            "--image-file",
            image.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-new-tokens",
            "3",
        ],
        &base,
        home.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(log.lock().unwrap().len(), 1);
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

#[test]
fn a_cut_connection_resumes_with_a_range_request() {
    let body = zip_of_tiny_model();
    let half = body.len() / 2;
    let (base, log) = serve(body, Some(half), 2);
    let dest = tempfile::tempdir().unwrap();
    let first = download(&["fastvlm-0.5b"], &base, dest.path());
    assert!(!first.status.success());
    assert!(
        stderr(&first).contains("run the same command again to resume"),
        "{}",
        stderr(&first)
    );
    assert!(!dest.path().join("llava-fastvithd_0.5b_stage3").exists());
    assert_eq!(
        leftovers(dest.path()),
        [".llava-fastvithd_0.5b_stage3.zip.part"]
    );

    let second = download(&["fastvlm-0.5b"], &base, dest.path());
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stderr(&second).contains("resuming"), "{}", stderr(&second));
    assert_eq!(
        log.lock().unwrap().clone(),
        [None, Some(format!("bytes={half}-"))]
    );
    assert!(
        dest.path()
            .join("llava-fastvithd_0.5b_stage3/model.safetensors")
            .is_file()
    );
    assert_eq!(leftovers(dest.path()), ["llava-fastvithd_0.5b_stage3"]);
}

#[test]
fn corrupt_zip_leaves_nothing_that_looks_complete() {
    let (base, _) = serve(b"PK\x03\x04 definitely not a zip archive".to_vec(), None, 1);
    let dest = tempfile::tempdir().unwrap();
    let out = download(&["fastvlm-0.5b"], &base, dest.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("not a valid zip") && !err.contains("panicked"),
        "{err}"
    );
    assert!(
        leftovers(dest.path()).is_empty(),
        "{:?}",
        leftovers(dest.path())
    );
}

#[test]
fn missing_file_and_no_server_name_the_url_and_the_way_out() {
    let (base, _) = serve(Vec::new(), None, 1);
    let dest = tempfile::tempdir().unwrap();
    let out = download(&["fastvlm-7b"], &base, dest.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("404")
            && err.contains("llava-fastvithd_7b_stage3.zip")
            && err.contains("--model-path"),
        "{err}"
    );

    let closed = "http://127.0.0.1:9";
    let out = cli(&["info", "--model", "fastvlm-1.5b"], closed, dest.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(closed) && err.contains("--model-path") && !err.contains("panicked"),
        "{err}"
    );

    let out = download(&["fastvlm-3b"], closed, dest.path());
    assert!(
        stderr(&out).contains("unknown model `fastvlm-3b`"),
        "{}",
        stderr(&out)
    );
}
