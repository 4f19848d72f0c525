//! Apple's released checkpoints: names, where they come from, and a resumable, atomic download.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One released checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZooEntry {
    /// What users type: `fastvlm-0.5b-stage3`.
    pub name: &'static str,
    /// The directory inside Apple's zip (and the zip's name without `.zip`).
    pub dir: &'static str,
    /// Approximate size of the zip, for listings before anything is fetched.
    pub approx_bytes: u64,
}

const GB: u64 = 1_000_000_000;

/// The six PyTorch checkpoints of `get_models.sh`.
pub const ZOO: &[ZooEntry] = &[
    ZooEntry {
        name: "fastvlm-0.5b-stage2",
        dir: "llava-fastvithd_0.5b_stage2",
        approx_bytes: 15 * GB / 10,
    },
    ZooEntry {
        name: "fastvlm-0.5b-stage3",
        dir: "llava-fastvithd_0.5b_stage3",
        approx_bytes: 15 * GB / 10,
    },
    ZooEntry {
        name: "fastvlm-1.5b-stage2",
        dir: "llava-fastvithd_1.5b_stage2",
        approx_bytes: 38 * GB / 10,
    },
    ZooEntry {
        name: "fastvlm-1.5b-stage3",
        dir: "llava-fastvithd_1.5b_stage3",
        approx_bytes: 38 * GB / 10,
    },
    ZooEntry {
        name: "fastvlm-7b-stage2",
        dir: "llava-fastvithd_7b_stage2",
        approx_bytes: 155 * GB / 10,
    },
    ZooEntry {
        name: "fastvlm-7b-stage3",
        dir: "llava-fastvithd_7b_stage3",
        approx_bytes: 155 * GB / 10,
    },
];

/// Where Apple serves the zips (`get_models.sh`); `FASTVLM_ZOO_URL` overrides it (mirrors, tests).
pub const DEFAULT_BASE_URL: &str = "https://ml-site.cdn-apple.com/datasets/fastvlm";

/// A download or install that failed.
#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    #[error("unknown model `{name}` (known: {known})")]
    Unknown { name: String, known: String },
    #[error(
        "cannot download {url}: {reason}; download and unzip it yourself and pass --model-path DIR"
    )]
    Http { url: String, reason: String },
    #[error(
        "{url} is not there (HTTP 404); download and unzip it yourself and pass --model-path DIR"
    )]
    NotFound { url: String },
    #[error(
        "the download of {url} stopped after {got} of {expected} bytes; run the same command again to resume"
    )]
    Incomplete {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error(
        "`{path}` is not a valid zip ({reason}); it was removed, run the same command again to download it anew"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("the archive {url} holds no model directory with a config.json")]
    NoModel { url: String },
    #[error(
        "the download of {url} was cut after {got} bytes ({reason}); run the same command again to resume"
    )]
    Interrupted {
        url: String,
        got: u64,
        reason: String,
    },
    #[error("cannot write `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Progress of one download, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// Transfer starts; `resumed_from` bytes were already there.
    Start {
        total: Option<u64>,
        resumed_from: u64,
    },
    /// `done` bytes of the zip are on disk.
    Bytes { done: u64 },
    /// The zip is complete and being unpacked.
    Unpacking,
}

/// A download's progress as one terminal line (bytes, percent, rate, ETA), redrawn at most
/// four times a second; what `vlm-cli download` prints on stderr.
pub struct ProgressLine<W: Write> {
    name: &'static str,
    url: String,
    out: W,
    started: std::time::Instant,
    drawn: Option<std::time::Instant>,
    total: Option<u64>,
    first: u64,
}

impl<W: Write> ProgressLine<W> {
    pub fn new(entry: &ZooEntry, out: W) -> Self {
        Self {
            name: entry.name,
            url: url(entry),
            out,
            started: std::time::Instant::now(),
            drawn: None,
            total: None,
            first: 0,
        }
    }

    /// Draws `progress`.
    pub fn update(&mut self, progress: Progress) {
        let name = self.name;
        match progress {
            Progress::Start {
                total,
                resumed_from,
            } => {
                self.total = total;
                self.first = resumed_from;
                self.started = std::time::Instant::now();
                let resumed = match resumed_from {
                    0 => String::new(),
                    n => format!(", resuming at {}", human_bytes(n)),
                };
                let _ = writeln!(self.out, "{name}: downloading {}{resumed}", self.url);
            }
            Progress::Bytes { done } => {
                let recent = self.drawn.is_some_and(|t| t.elapsed().as_millis() < 250);
                if recent && Some(done) != self.total {
                    return;
                }
                self.drawn = Some(std::time::Instant::now());
                let line = self.line(done);
                let _ = write!(self.out, "\r\x1b[2K{name}: {line}");
                let _ = self.out.flush();
            }
            Progress::Unpacking => {
                let _ = writeln!(self.out, "\n{name}: unpacking");
            }
        }
    }

    /// Ends the line (after an error mid-transfer).
    pub fn finish(&mut self) {
        let _ = writeln!(self.out);
    }

    fn line(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done.saturating_sub(self.first) as f64 / secs;
        match self.total {
            Some(t) => {
                let eta = if rate > 0.0 {
                    t.saturating_sub(done) as f64 / rate
                } else {
                    0.0
                };
                format!(
                    "{} / {} ({:.0}%), {}/s, ETA {}:{:02}",
                    human_bytes(done),
                    human_bytes(t),
                    100.0 * done as f64 / t.max(1) as f64,
                    human_bytes(rate as u64),
                    eta as u64 / 60,
                    eta as u64 % 60
                )
            }
            None => format!("{}, {}/s", human_bytes(done), human_bytes(rate as u64)),
        }
    }
}

/// `n` bytes in binary units: `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Looks up `fastvlm-0.5b`, `fastvlm-0.5b-stage2`, … (a bare size means stage 3, the chat model)
/// or a directory name such as `llava-fastvithd_0.5b_stage3`.
pub fn lookup(name: &str) -> Result<&'static ZooEntry, ZooError> {
    let canonical = match name {
        "fastvlm-0.5b" | "fastvlm-1.5b" | "fastvlm-7b" => format!("{name}-stage3"),
        other => other.to_string(),
    };
    ZOO.iter()
        .find(|e| e.name == canonical || e.dir == canonical)
        .ok_or_else(|| ZooError::Unknown {
            name: name.to_string(),
            known: ZOO.iter().map(|e| e.name).collect::<Vec<_>>().join(", "),
        })
}

/// The base URL in force.
pub fn base_url() -> String {
    std::env::var("FASTVLM_ZOO_URL").unwrap_or_else(|_| DEFAULT_BASE_URL.to_string())
}

/// The URL of a checkpoint's zip.
pub fn url(entry: &ZooEntry) -> String {
    format!("{}/{}.zip", base_url().trim_end_matches('/'), entry.dir)
}

/// The models cache: `$FASTVLM_HOME`, else `$XDG_CACHE_HOME/fastvlm`, else `~/.cache/fastvlm`.
pub fn home() -> PathBuf {
    if let Some(home) = std::env::var_os("FASTVLM_HOME") {
        return PathBuf::from(home);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("fastvlm")
}

/// The installed directory of `entry` under `dest`, if complete.
pub fn installed(entry: &ZooEntry, dest: &Path) -> Option<PathBuf> {
    let dir = dest.join(entry.dir);
    dir.join("config.json").is_file().then_some(dir)
}

/// Bounds on what unpacking one archive may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total uncompressed bytes of its files.
    pub max_bytes: u64,
    /// Files and directories.
    pub max_entries: usize,
}

impl UnpackLimits {
    /// For `entry`: twice its known size and a GB more (its weights are bf16, which barely
    /// compress), and a thousand entries (a release has about ten).
    pub fn for_entry(entry: &ZooEntry) -> Self {
        Self {
            max_bytes: entry.approx_bytes.saturating_mul(2).saturating_add(GB),
            max_entries: 1000,
        }
    }
}

/// Downloads and unpacks `entry` into `dest/<dir>` unless it is there already.
///
/// The zip is fetched into `dest/.<dir>.zip.part`, resuming with an HTTP range request when a
/// part is left from an interrupted run; it is unpacked into a temporary directory that is
/// renamed into place only when complete, so a directory that exists is a whole model.
pub fn download(
    entry: &ZooEntry,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, ZooError> {
    if let Some(dir) = installed(entry, dest) {
        return Ok(dir);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ZooError::Io { path, source }
    };
    fs::create_dir_all(dest).map_err(io(dest))?;
    let url = url(entry);
    let part = dest.join(format!(".{}.zip.part", entry.dir));
    fetch(&url, &part, progress)?;

    progress(Progress::Unpacking);
    let staging = dest.join(format!(".{}.unpacking-{}", entry.dir, std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let unpacked = unzip(&part, &staging, &UnpackLimits::for_entry(entry));
    let result = unpacked.and_then(|()| {
        let inner = [staging.join(entry.dir), staging.clone()]
            .into_iter()
            .find(|d| d.join("config.json").is_file())
            .ok_or_else(|| ZooError::NoModel { url: url.clone() })?;
        let target = dest.join(entry.dir);
        fs::rename(&inner, &target).map_err(io(&target))?;
        Ok(target)
    });
    let _ = fs::remove_dir_all(&staging);
    match &result {
        Ok(_) | Err(ZooError::Corrupt { .. }) | Err(ZooError::NoModel { .. }) => {
            let _ = fs::remove_file(&part);
        }
        Err(_) => {}
    }
    result
}

/// Fetches `url` into `part`, continuing an earlier partial transfer.
fn fetch(url: &str, part: &Path, progress: &mut dyn FnMut(Progress)) -> Result<(), ZooError> {
    let http = |reason: String| ZooError::Http {
        url: url.to_string(),
        reason,
    };
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", &format!("bytes={have}-"));
    }
    let mut response = request.call().map_err(|e| http(e.to_string()))?;
    let status = response.status().as_u16();
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (file, start) = match status {
        // The part already holds the whole file.
        416 if have > 0 => return Ok(()),
        206 if have > 0 => {
            // Appending is right only if the server sends what follows the part.
            let range = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            match content_range(range) {
                Some((first, last, size))
                    if first == have
                        && last >= first
                        && size.is_none_or(|s| s == last + 1)
                        && length.is_none_or(|l| l == last - first + 1) => {}
                _ => {
                    return Err(http(format!(
                        "asked for bytes {have}- but the server answered 206 with Content-Range `{range}`"
                    )));
                }
            }
            (OpenOptions::new().append(true).open(part), have)
        }
        200 => (File::create(part), 0),
        404 => {
            return Err(ZooError::NotFound {
                url: url.to_string(),
            });
        }
        other => return Err(http(format!("HTTP {other}"))),
    };
    let mut file = file.map_err(|source| ZooError::Io {
        path: part.to_path_buf(),
        source,
    })?;
    let total = length.map(|l| l + start);
    progress(Progress::Start {
        total,
        resumed_from: start,
    });
    let mut reader = response.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = start;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // A cut connection: what arrived stays in the part file for the next run.
            Err(e) => {
                file.flush().map_err(|source| ZooError::Io {
                    path: part.to_path_buf(),
                    source,
                })?;
                return Err(ZooError::Interrupted {
                    url: url.to_string(),
                    got: done,
                    reason: e.to_string(),
                });
            }
        };
        file.write_all(&buf[..n]).map_err(|source| ZooError::Io {
            path: part.to_path_buf(),
            source,
        })?;
        done += n as u64;
        progress(Progress::Bytes { done });
    }
    file.flush().map_err(|source| ZooError::Io {
        path: part.to_path_buf(),
        source,
    })?;
    if let Some(expected) = total
        && done < expected
    {
        return Err(ZooError::Incomplete {
            url: url.to_string(),
            got: done,
            expected,
        });
    }
    Ok(())
}

/// `first`, `last` and the total (`None` for `*`) of a `bytes first-last/total` Content-Range.
fn content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let total = match total {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first.parse().ok()?, last.parse().ok()?, total))
}

/// Unpacks `zip` into `into` within `limits`: every entry a plain file or directory whose path
/// stays under `into` (no absolute paths, no `..`, no symbolic links), the sizes its directory
/// declares within the limits before anything is written, and no file longer than it declared.
pub fn unzip(zip: &Path, into: &Path, limits: &UnpackLimits) -> Result<(), ZooError> {
    let corrupt = |reason: String| ZooError::Corrupt {
        path: zip.to_path_buf(),
        reason,
    };
    let file = File::open(zip).map_err(|e| corrupt(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| corrupt(e.to_string()))?;
    if archive.len() > limits.max_entries {
        return Err(corrupt(format!(
            "{} entries, more than the {} a model archive may have",
            archive.len(),
            limits.max_entries
        )));
    }
    // What the central directory declares, checked before anything is written.
    let mut declared = 0u64;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| corrupt(e.to_string()))?;
        declared = declared.saturating_add(entry.size());
    }
    if declared > limits.max_bytes {
        return Err(corrupt(format!(
            "it unpacks to {declared} bytes, more than the {} this model may take",
            limits.max_bytes
        )));
    }
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| corrupt(e.to_string()))?;
        let shown = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let relative = entry
            .enclosed_name()
            .filter(|p| {
                p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            })
            .ok_or_else(|| corrupt(format!("entry `{shown}` points outside the archive")))?;
        if entry.is_symlink() {
            return Err(corrupt(format!("entry `{shown}` is a symbolic link")));
        }
        let path = into.join(relative);
        let io = |source| ZooError::Io {
            path: path.clone(),
            source,
        };
        if entry.is_dir() {
            fs::create_dir_all(&path).map_err(io)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        let size = entry.size();
        let mut out = File::create(&path).map_err(io)?;
        // One byte past the declared size tells a lying header from an honest one.
        let copied = std::io::copy(&mut (&mut entry).take(size.saturating_add(1)), &mut out)
            .map_err(|e| corrupt(format!("`{shown}`: {e}")))?;
        if copied > size {
            return Err(corrupt(format!(
                "`{shown}` unpacks to more than the {size} bytes it declares"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_one_redrawn_line() {
        let entry = lookup("fastvlm-0.5b").unwrap();
        let mut out = Vec::new();
        let mut line = ProgressLine::new(entry, &mut out);
        line.update(Progress::Start {
            total: Some(2048),
            resumed_from: 1024,
        });
        line.update(Progress::Bytes { done: 2048 });
        line.update(Progress::Unpacking);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("fastvlm-0.5b-stage3: downloading http"),
            "{text}"
        );
        assert!(text.contains("resuming at 1.0 KiB"), "{text}");
        assert!(
            text.contains("\r\x1b[2Kfastvlm-0.5b-stage3: 2.0 KiB / 2.0 KiB (100%)"),
            "{text}"
        );
        assert!(
            text.ends_with("\nfastvlm-0.5b-stage3: unpacking\n"),
            "{text}"
        );
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(content_range("bytes 10-99/100"), Some((10, 99, Some(100))));
        assert_eq!(content_range("bytes 0-0/*"), Some((0, 0, None)));
        for bad in [
            "",
            "bytes",
            "bytes 1-/2",
            "items 0-1/2",
            "bytes a-b/c",
            "bytes 0-1",
        ] {
            assert_eq!(content_range(bad), None, "{bad}");
        }
    }
}
