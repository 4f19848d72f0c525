//! `cargo xtask <task>`: developer tasks that need more than cargo.
//!
//! - `golden [--only fastvithd|qwen2|e2e|jpeg|jpeg-cut|quant]`: regenerates the committed parity fixtures under `fixtures/` from
//!   the Python references (timm, transformers) in a virtual environment this task creates
//!   (`.venv/` at the repository root, or `$FASTVLM_VENV`). `cargo test` never needs it.
//! - `make-checkpoint --variant tiny|0.5b|1.5b|7b [--layers N] [--outliers N] --out DIR [--image IMG]
//!   [--prompt TEXT]`: a seeded random-weight directory in Apple's exact release layout, and,
//!   with `--image`, the reference's outputs for it in `DIR.reference.safetensors`.
//! - `verify --model DIR --image IMG [--backend cpu] [-- CARGO_FLAGS]`: runs the release
//!   `vlm-cli predict --json --logprobs 5 --temperature 0 --max-new-tokens 24` and `encode` on
//!   that checkpoint and compares with `DIR.reference.safetensors` (ids, top-5 log-probs within
//!   1e-3, features rel-L2 ≤ 1e-4).
//! - `device-check [--out gpu-check] [--no-vulkan] [--kernel-cache FILE]`: the GPU machine's
//!   bundle (under 64 MiB):
//!   stripped, xz-compressed `vlm-cli` and `fastvlm-bench` built with `cuda` (and `vulkan`),
//!   the Python references, the Qwen2 tokenizer files, the CPU f32 outputs of the
//!   FastVLM-0.5B-shaped checkpoint made here, and `run.sh` (`xtask/gpu/run.sh`), which
//!   regenerates that checkpoint there and compares every backend and precision with them;
//!   with `--kernel-cache`, an earlier run's `kernels.tar.xz` (compiled kernels, autotune
//!   results), which `run.sh` unpacks before anything compiles.
//! - `fuzz [TARGET…] [--seconds N]`: builds the cargo-fuzz targets of `fuzz/` (nightly,
//!   sanitizers; `cargo install cargo-fuzz`) and runs each for N seconds (default 60) on a
//!   working corpus under `fuzz/corpus/` seeded from `fuzz/seeds/`, `fuzz/regressions/` and the
//!   fixtures, with a 1 s per-input timeout and a 2 GiB memory cap; prints executions, exec/s
//!   and coverage per target, and fails if one finds a crash (kept under `fuzz/artifacts/`).
//! - `bench-report [--backend cpu|cuda|wgpu] [--res 256,…] [--iters N] [--tokens N]
//!   [--dtypes f32,bf16] [--compile] [--label NAME] [--quants q8,q4] [--llama-cpp RELEASE]`:
//!   builds `fastvlm-bench` (release, the backend's feature), runs it and the PyTorch reference
//!   in the same run (`xtask/python/bench_report.py`) and writes the tables into BENCHMARKS.md;
//!   `--quants` adds the 0.5B language model with quantized weights, `--llama-cpp` llama.cpp on
//!   the same weights at the same bits (`../shared/tools/llama_cpp_anchor.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const GENERATORS: &[(&str, &str, &str)] = &[
    (
        "fastvithd",
        "xtask/python/fastvithd_golden.py",
        "fixtures/fastvithd",
    ),
    ("qwen2", "xtask/python/qwen2_golden.py", "fixtures/qwen2"),
    ("e2e", "xtask/python/e2e_golden.py", "fixtures/e2e"),
    ("jpeg", "xtask/python/jpeg_golden.py", "fixtures/jpeg"),
    ("quant", "xtask/python/quant_golden.py", "fixtures/quant"),
    // After `jpeg`: cuts its files.
    (
        "jpeg-cut",
        "xtask/python/jpeg_cut_golden.py",
        "fixtures/jpeg/cut",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("golden") => golden(&args[1..]),
        Some("make-checkpoint") => make_checkpoint(&args[1..]),
        Some("verify") => verify(&args[1..]),
        Some("bench-report") => bench_report(&args[1..]),
        Some("device-check") => device_check(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("-h" | "--help") | None => {
            println!(
                "usage: cargo xtask golden [--only NAME]\n\ngenerators: {}",
                names()
            );
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}` (try `cargo xtask --help`)")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn names() -> String {
    GENERATORS
        .iter()
        .map(|g| g.0)
        .collect::<Vec<_>>()
        .join(", ")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// The reference venv's interpreter, created and filled on first use.
fn python() -> Result<PathBuf, String> {
    let venv = std::env::var_os("FASTVLM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv"));
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("xtask: creating the reference venv at {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let requirements = root().join("xtask/python/requirements.txt");
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&requirements))?;
    Ok(python)
}

fn golden(args: &[String]) -> Result<(), String> {
    let only = match args {
        [] => None,
        [flag, name] if flag == "--only" => Some(name.as_str()),
        _ => return Err("usage: cargo xtask golden [--only NAME]".into()),
    };
    if let Some(name) = only
        && !GENERATORS.iter().any(|g| g.0 == name)
    {
        return Err(format!("unknown generator `{name}` (have: {})", names()));
    }
    let python = python()?;
    for (name, script, out) in GENERATORS {
        if only.is_some_and(|o| o != *name) {
            continue;
        }
        eprintln!("xtask: golden {name} -> {out}");
        run(Command::new(&python)
            .current_dir(root())
            .arg(script)
            .args(["--out", out]))?;
    }
    Ok(())
}

fn bench_report(args: &[String]) -> Result<(), String> {
    let mut backend = "cpu".to_string();
    let mut pass = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--compile" => pass.push(flag.clone()),
            "--backend" => backend = it.next().ok_or("`--backend` needs a value")?.clone(),
            "--res" | "--iters" | "--tokens" | "--dtypes" | "--label" | "--quants"
            | "--llama-cpp" => {
                let value = it.next().ok_or_else(|| format!("`{flag}` needs a value"))?;
                pass.extend([flag.clone(), value.clone()]);
            }
            _ => return Err(format!("unknown flag `{flag}` for bench-report")),
        }
    }
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "benches",
        "--bin",
        "fastvlm-bench",
    ]);
    match backend.as_str() {
        "cpu" => {}
        "cuda" | "wgpu" => {
            build.args(["--features", &backend]);
        }
        other => return Err(format!("unknown backend `{other}` (cpu, cuda, wgpu)")),
    }
    run(&mut build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let binary = target.join("release/fastvlm-bench");
    let python = python()?;
    let device = if backend == "cuda" { "cuda" } else { "cpu" };
    let mut report = Command::new(&python);
    report
        .current_dir(root())
        .arg("xtask/python/bench_report.py")
        .arg("--ours")
        .arg(&binary)
        .args(["--device", device, "--ours-backend", &backend])
        .args(&pass)
        .arg("--command")
        .arg(format!("cargo xtask bench-report {}", args.join(" ")));
    run(&mut report)
}

fn device_check(args: &[String]) -> Result<(), String> {
    let mut out = root().join("gpu-check");
    let mut vulkan = true;
    let mut kernel_cache = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--out" => out = PathBuf::from(it.next().ok_or("`--out` needs a value")?),
            "--no-vulkan" => vulkan = false,
            "--kernel-cache" => {
                let file = PathBuf::from(it.next().ok_or("`--kernel-cache` needs a file")?);
                if !file.is_file() {
                    return Err(format!("--kernel-cache: no file {}", file.display()));
                }
                kernel_cache = Some(file);
            }
            _ => return Err(format!("unknown flag `{flag}` for device-check")),
        }
    }
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))
    };
    for dir in ["", "python", "vocab", "cpu"] {
        std::fs::create_dir_all(out.join(dir)).map_err(|e| e.to_string())?;
    }
    let python = python()?;

    // 1. The GPU binaries, in their own target dir so the CPU release build stays as it is.
    let gpu_target = root().join("target/gpu");
    let features = if vulkan {
        "vlm-cli/cuda,vlm-cli/vulkan,benches/cuda,benches/vulkan"
    } else {
        "vlm-cli/cuda,benches/cuda"
    };
    run(Command::new(env!("CARGO"))
        .current_dir(root())
        .env("CARGO_TARGET_DIR", &gpu_target)
        .args(["build", "--release", "-p", "vlm-cli", "-p", "benches"])
        .args([
            "--bin",
            "vlm-cli",
            "--bin",
            "fastvlm-bench",
            "--features",
            features,
        ]))?;
    for bin in ["vlm-cli", "fastvlm-bench"] {
        let built = gpu_target.join("release").join(bin);
        run(Command::new("strip").arg(&built))?;
        run(Command::new(&python).args([
            "-c",
            "import lzma, shutil, sys; shutil.copyfileobj(open(sys.argv[1], 'rb'), lzma.open(sys.argv[2], 'wb', preset=6))",
        ])
        .arg(&built)
        .arg(out.join(format!("{bin}.xz"))))?;
    }

    // 2. The references and the runner.
    for entry in std::fs::read_dir(root().join("xtask/python")).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "py") {
            copy(&path, &out.join("python").join(path.file_name().unwrap()))?;
        }
    }
    // The shared PyTorch anchor (transformers' FastVLM end to end), where this checkout has it.
    let anchor = root().join("../shared/tools/anchor_pytorch.py");
    if anchor.is_file() {
        copy(&anchor, &out.join("python/anchor_pytorch.py"))?;
    }
    copy(&root().join("xtask/gpu/run.sh"), &out.join("run.sh"))?;
    // An earlier GPU run's kernel cache (its OUT/kernels.tar.xz): run.sh unpacks it first.
    let cache = out.join("kernels.tar.xz");
    match &kernel_cache {
        Some(file) => copy(file, &cache)?,
        None if cache.exists() => std::fs::remove_file(&cache).map_err(|e| e.to_string())?,
        None => {}
    }
    copy(
        &root().join("fixtures/e2e/images/wide.png"),
        &out.join("image.png"),
    )?;
    if vulkan {
        // NVIDIA's machine has the Vulkan ICD but not the loader.
        let _ = Command::new("apt-get")
            .args(["download", "libvulkan1"])
            .current_dir(&out)
            .status();
    }

    // 3. The 0.5B-shaped checkpoint here, its tokenizer files for there, and CPU f32 outputs.
    let ckpt = std::env::temp_dir().join("fastvlm-0.5b-check");
    if !ckpt.join("model.safetensors").is_file() {
        run(Command::new(&python)
            .arg(root().join("xtask/python/fastvlm_reference.py"))
            .args(["make-checkpoint", "--variant", "0.5b", "--out"])
            .arg(&ckpt))?;
    }
    for f in ["vocab.json", "merges.txt"] {
        copy(&ckpt.join(f), &out.join("vocab").join(f))?;
    }
    run(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "vlm-cli",
    ]))?;
    let cpu_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let cli = cpu_target.join("release/vlm-cli");
    let image = out.join("image.png");
    run(Command::new(&cli)
        .args(["encode", "--model-path"])
        .arg(&ckpt)
        .arg("--image-file")
        .arg(&image)
        .arg("--output")
        .arg(out.join("cpu/features.safetensors")))?;
    let predict = Command::new(&cli)
        .args(["predict", "--model-path"])
        .arg(&ckpt)
        .arg("--image-file")
        .arg(&image)
        .args(["--temperature", "0", "--max-new-tokens", "32", "--json"])
        .output()
        .map_err(|e| e.to_string())?;
    if !predict.status.success() {
        return Err(format!(
            "CPU predict failed: {}",
            String::from_utf8_lossy(&predict.stderr)
        ));
    }
    std::fs::write(out.join("cpu/predict.json"), &predict.stdout).map_err(|e| e.to_string())?;

    let size: u64 = walk(&out)
        .iter()
        .map(|p| p.metadata().map_or(0, |m| m.len()))
        .sum();
    eprintln!(
        "xtask: bundle {} ({:.1} MiB). On the GPU machine, carrying it: bash {}/run.sh $OUT",
        out.display(),
        size as f64 / (1 << 20) as f64,
        out.file_name().unwrap().to_string_lossy()
    );
    if size > 60 << 20 {
        return Err("the bundle exceeds the 60 MiB the device tool carries".into());
    }
    Ok(())
}

/// The cargo-fuzz targets, and the fixture directories (with the file endings to take) that
/// seed each besides its `fuzz/seeds/` and `fuzz/regressions/`.
const FUZZ_TARGETS: &[(&str, &[(&str, &str)])] = &[
    (
        "jpeg",
        &[("fixtures/jpeg", "jpg"), ("fixtures/jpeg/cut", "jpg")],
    ),
    (
        "image",
        &[
            ("fixtures/e2e/images", ""),
            ("fixtures/jpeg", "jpg"),
            ("fixtures/jpeg/cut", "jpg"),
        ],
    ),
    ("chat_request", &[]),
    ("weights_config", &[]),
    ("unpack", &[]),
];

fn fuzz(args: &[String]) -> Result<(), String> {
    let mut seconds = 60u64;
    let mut targets: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("`--seconds` needs a whole number")?
            }
            name => match FUZZ_TARGETS.iter().find(|t| t.0 == name) {
                Some(t) => targets.push(t.0),
                None => {
                    let all: Vec<&str> = FUZZ_TARGETS.iter().map(|t| t.0).collect();
                    return Err(format!(
                        "unknown fuzz target `{name}` (have: {})",
                        all.join(", ")
                    ));
                }
            },
        }
    }
    if targets.is_empty() {
        targets = FUZZ_TARGETS.iter().map(|t| t.0).collect();
    }
    let found = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Err(
            "cargo-fuzz on a nightly toolchain is needed: `rustup toolchain install nightly` and `cargo install cargo-fuzz`"
                .into(),
        );
    }
    let started = std::time::Instant::now();
    // Each target built before any runs, so that no run's time goes to building.
    for t in &targets {
        run(Command::new("cargo")
            .current_dir(root())
            .args(["+nightly", "fuzz", "build", t]))?;
    }
    eprintln!(
        "xtask: fuzz targets built in {} s",
        started.elapsed().as_secs()
    );
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for &target in &targets {
        let corpus = root().join("fuzz/corpus").join(target);
        seed_corpus(target, &corpus)?;
        let log_dir = root().join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
        let log = log_dir.join("fuzz.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        eprintln!(
            "xtask: fuzzing {target} for {seconds} s (log: {})",
            log.display()
        );
        let status = Command::new("cargo")
            .current_dir(root())
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-timeout=1",
                "-rss_limit_mb=2048",
                "-malloc_limit_mb=2048",
                "-print_final_stats=1",
            ])
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .status()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let stat = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        let last = text
            .lines()
            .rfind(|l| l.starts_with('#') && l.contains("cov:"))
            .unwrap_or("");
        let field = |name: &str| {
            last.split_whitespace()
                .skip_while(|w| *w != name)
                .nth(1)
                .unwrap_or("?")
                .to_string()
        };
        let corpus_size = std::fs::read_dir(&corpus).map_or(0, |d| d.count());
        summary.push(format!(
            "{target:<15} {:>12} runs {:>8} exec/s  cov {:>6}  ft {:>6}  corpus {:>5}  {}",
            stat("number_of_executed_units"),
            stat("average_exec_per_sec"),
            field("cov:"),
            field("ft:"),
            corpus_size,
            if status.success() { "ok" } else { "FAILED" }
        ));
        if !status.success() {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            failed.push(target);
        }
    }
    println!("{}", summary.join("\n"));
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzzing found crashes in {} (inputs under fuzz/artifacts/; copy each into fuzz/regressions/TARGET/ with its fix)",
            failed.join(", ")
        ))
    }
}

/// Fills `corpus` with the target's seeds, findings and fixtures (files already there stay).
fn seed_corpus(target: &str, corpus: &Path) -> Result<(), String> {
    std::fs::create_dir_all(corpus).map_err(|e| e.to_string())?;
    let fixtures = FUZZ_TARGETS
        .iter()
        .find(|t| t.0 == target)
        .map_or(&[][..], |t| t.1);
    let mut sources: Vec<(PathBuf, &str)> = vec![
        (root().join("fuzz/seeds").join(target), ""),
        (root().join("fuzz/regressions").join(target), ""),
    ];
    sources.extend(fixtures.iter().map(|(d, ext)| (root().join(d), *ext)));
    for (dir, ext) in sources {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let wanted = ext.is_empty() || path.extension().is_some_and(|e| e == ext);
            if !path.is_file() || !wanted {
                continue;
            }
            let name = format!(
                "seed-{}-{}",
                dir.file_name().unwrap_or_default().to_string_lossy(),
                entry.file_name().to_string_lossy()
            );
            std::fs::copy(&path, corpus.join(name)).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin" && n != "out") {
                files.extend(walk(&path));
            }
        } else {
            files.push(path);
        }
    }
    files
}

fn make_checkpoint(args: &[String]) -> Result<(), String> {
    let mut make = vec!["make-checkpoint".to_string()];
    let mut reference = Vec::new();
    let mut out = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("`{flag}` needs a value"))?
            .clone();
        match flag.as_str() {
            "--variant" | "--layers" | "--outliers" => make.extend([flag.clone(), value]),
            "--out" => {
                make.extend([flag.clone(), value.clone()]);
                out = Some(value);
            }
            "--image" | "--prompt" | "--max-new-tokens" | "--logprobs" => {
                reference.extend([flag.clone(), value])
            }
            _ => return Err(format!("unknown flag `{flag}` for make-checkpoint")),
        }
    }
    let out = out.ok_or("make-checkpoint needs --out DIR")?;
    let python = python()?;
    let script = root().join("xtask/python/fastvlm_reference.py");
    run(Command::new(&python).arg(&script).args(&make))?;
    if !reference.is_empty() {
        let file = format!("{}.reference.safetensors", out.trim_end_matches('/'));
        run(Command::new(&python)
            .arg(&script)
            .args(["reference", "--model", &out, "--out", &file])
            .args(&reference))?;
        eprintln!("xtask: reference outputs in {file}");
    }
    Ok(())
}

fn verify(args: &[String]) -> Result<(), String> {
    let (mut model, mut image, mut backend) = (None, None, "cpu".to_string());
    let mut it = args.iter();
    let mut cargo_flags = Vec::new();
    while let Some(flag) = it.next() {
        if flag == "--" {
            cargo_flags.extend(it.by_ref().cloned());
            break;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("`{flag}` needs a value"))?
            .clone();
        match flag.as_str() {
            "--model" => model = Some(value),
            "--image" => image = Some(value),
            "--backend" => backend = value,
            _ => return Err(format!("unknown flag `{flag}` for verify")),
        }
    }
    let model = model.ok_or("verify needs --model DIR")?;
    let image = image.ok_or("verify needs --image IMG")?;
    let reference = format!("{}.reference.safetensors", model.trim_end_matches('/'));
    let tmp = std::env::temp_dir().join(format!("fastvlm-verify-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let json = tmp.join("predict.json");
    let features = tmp.join("features.safetensors");
    let cli = |sub: &[&str]| {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root())
            .args(["run", "--quiet", "--release", "-p", "vlm-cli"])
            .args(&cargo_flags)
            .arg("--")
            .args(sub)
            .args([
                "--model-path",
                &model,
                "--image-file",
                &image,
                "--backend",
                &backend,
            ]);
        cmd
    };
    let started = std::time::Instant::now();
    let out = cli(&[
        "predict",
        "--temperature",
        "0",
        "--max-new-tokens",
        "24",
        "--json",
        "--logprobs",
        "5",
    ])
    .output()
    .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "predict failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::write(&json, &out.stdout).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: predict took {:.1} s (load included)",
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    run(&mut cli(&[
        "encode",
        "--output",
        features.to_str().unwrap_or_default(),
    ]))?;
    eprintln!(
        "xtask: encode took {:.1} s (load included)",
        started.elapsed().as_secs_f64()
    );
    let python = python()?;
    let result = run(Command::new(&python)
        .arg(root().join("xtask/python/compare.py"))
        .arg(&reference)
        .arg(&json)
        .arg(&features));
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
