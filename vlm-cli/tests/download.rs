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
            let range = if start > 0 {
                format!(
                    "Content-Range: bytes {start}-{}/{}\r\n",
                    body.len() - 1,
                    body.len()
                )
            } else {
                String::new()
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{range}Content-Type: application/zip\r\nConnection: close\r\n\r\n",
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

/// Answers each connection with the next of `responses` (raw HTTP, then close), recording
/// each request's `Range` header.
fn serve_raw(responses: Vec<Vec<u8>>) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for (stream, response) in listener.incoming().zip(responses) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.trim().eq_ignore_ascii_case("range")
                {
                    range = Some(v.trim().to_string());
                }
            }
            seen.lock().unwrap().push(range);
            let _ = stream.write_all(&response);
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    (base, log)
}

fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n").into_bytes();
    for (k, v) in headers {
        out.extend(format!("{k}: {v}\r\n").bytes());
    }
    out.extend(b"\r\n");
    out.extend(body);
    out
}

#[test]
fn a_206_must_continue_the_part_it_was_asked_for() {
    let body = zip_of_tiny_model();
    let half = body.len() / 2;
    let (base, log) = serve_raw(vec![
        // Cut short: the part keeps the first half.
        response(
            "200 OK",
            &[("Content-Length", body.len().to_string())],
            &body[..half],
        ),
        // A 206 that starts at 0 instead of where the part ends.
        response(
            "206 Partial Content",
            &[
                ("Content-Length", body.len().to_string()),
                (
                    "Content-Range",
                    format!("bytes 0-{}/{}", body.len() - 1, body.len()),
                ),
            ],
            &body,
        ),
        // The right one.
        response(
            "206 Partial Content",
            &[
                ("Content-Length", (body.len() - half).to_string()),
                (
                    "Content-Range",
                    format!("bytes {half}-{}/{}", body.len() - 1, body.len()),
                ),
            ],
            &body[half..],
        ),
    ]);
    let dest = tempfile::tempdir().unwrap();
    let part = dest.path().join(".llava-fastvithd_0.5b_stage3.zip.part");
    let first = download(&["fastvlm-0.5b"], &base, dest.path());
    assert!(!first.status.success());
    assert_eq!(std::fs::metadata(&part).unwrap().len(), half as u64);

    let second = download(&["fastvlm-0.5b"], &base, dest.path());
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(
        err.contains("Content-Range") && err.contains(&format!("bytes {half}-")),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&part).unwrap().len(),
        half as u64,
        "part untouched"
    );

    let third = download(&["fastvlm-0.5b"], &base, dest.path());
    assert!(third.status.success(), "{}", stderr(&third));
    assert_eq!(
        log.lock().unwrap()[1..],
        [
            Some(format!("bytes={half}-")),
            Some(format!("bytes={half}-"))
        ]
    );
    assert_eq!(leftovers(dest.path()), ["llava-fastvithd_0.5b_stage3"]);
}

#[test]
fn a_body_cut_by_a_read_error_keeps_the_part() {
    let body = zip_of_tiny_model();
    let half = body.len() / 2;
    // Chunked, no length: a close in the middle of a chunk is a read error, not the end.
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend(&body[..half]);
    let (base, _) = serve_raw(vec![response(
        "200 OK",
        &[("Transfer-Encoding", "chunked".into())],
        &chunked,
    )]);
    let dest = tempfile::tempdir().unwrap();
    let out = download(&["fastvlm-0.5b"], &base, dest.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("was cut after") && err.contains("resume"),
        "{err}"
    );
    assert_eq!(
        leftovers(dest.path()),
        [".llava-fastvithd_0.5b_stage3.zip.part"]
    );
}

/// A zip of `entries` (name, contents, symlink?) under Apple's top-level folder.
fn zip_with(entries: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data, link) in entries {
        if *link {
            zip.add_symlink(*name, std::str::from_utf8(data).unwrap(), options)
                .unwrap();
        } else {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
    }
    zip.finish().unwrap();
    out.into_inner()
}

/// Replaces every occurrence of the little-endian `u32` `from` by `to` in `bytes`.
fn patch_u32(bytes: &mut [u8], from: u32, to: u32) -> usize {
    let (from, to) = (from.to_le_bytes(), to.to_le_bytes());
    let mut n = 0;
    for i in 0..bytes.len().saturating_sub(3) {
        if bytes[i..i + 4] == from {
            bytes[i..i + 4].copy_from_slice(&to);
            n += 1;
        }
    }
    n
}

#[test]
fn hostile_archives_are_refused_and_nothing_lands_outside() {
    let top = "llava-fastvithd_0.5b_stage3";
    let config = std::fs::read(tiny_model().join("config.json")).unwrap();
    let slip = zip_with(&[
        (&format!("{top}/config.json"), &config, false),
        ("../../escaped.txt", b"owned", false),
    ]);
    let link = zip_with(&[
        (&format!("{top}/config.json"), &config, false),
        (&format!("{top}/weights"), b"/etc", true),
    ]);
    // 16 MiB of zeros that the archive says are 1000 bytes.
    const ZEROS: u32 = 16 << 20;
    let mut bomb = zip_with(&[
        (&format!("{top}/config.json"), &config, false),
        (
            &format!("{top}/model.safetensors"),
            &vec![0u8; ZEROS as usize],
            false,
        ),
    ]);
    assert_eq!(
        patch_u32(&mut bomb, ZEROS, 1000),
        2,
        "local and central sizes"
    );
    let names: Vec<String> = (0..1200).map(|i| format!("{top}/f{i}")).collect();
    let many = zip_with(
        &names
            .iter()
            .map(|n| (n.as_str(), &b""[..], false))
            .collect::<Vec<_>>(),
    );
    for (archive, needle) in [
        (slip, "points outside the archive"),
        (link, "symbolic link"),
        (bomb, "declared"),
        (many, "1200 entries"),
    ] {
        let (base, _) = serve(archive, None, 1);
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("cache");
        let out = download(&["fastvlm-0.5b"], &base, &dest);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{needle}: {err}"
        );
        assert!(
            err.trim().lines().last().unwrap().starts_with("error: "),
            "{err}"
        );
        assert!(leftovers(&dest).is_empty(), "{:?}", leftovers(&dest));
        assert_eq!(
            leftovers(root.path()),
            ["cache"],
            "nothing beside the cache"
        );
    }
}
