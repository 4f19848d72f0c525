//! The fuzz targets' bodies over their committed seeds (`fuzz/seeds/`), every finding
//! (`fuzz/regressions/`), and the fixtures they are seeded from: what `cargo xtask fuzz` runs
//! with sanitizers, replayed on stable by `cargo test`.

use std::path::{Path, PathBuf};

use vlm_pipeline::fuzzing;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files in `dirs` (those that exist), sorted.
fn files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// The seeds and findings of `target`, and `extra` directories.
fn corpus(target: &str, extra: &[&str]) -> Vec<PathBuf> {
    let mut dirs = vec![
        repo().join("fuzz/seeds").join(target),
        repo().join("fuzz/regressions").join(target),
    ];
    dirs.extend(extra.iter().map(|d| repo().join(d)));
    files(&dirs)
}

fn replay(target: &str, inputs: &[PathBuf], body: fn(&[u8]), at_least: usize) {
    for path in inputs {
        let bytes = std::fs::read(path).unwrap();
        println!("{target}: {}", path.display());
        body(&bytes);
    }
    assert!(
        inputs.len() >= at_least,
        "{target}: {} inputs, expected at least {at_least}",
        inputs.len()
    );
}

fn only(paths: Vec<PathBuf>, ext: &[&str]) -> Vec<PathBuf> {
    paths
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ext.contains(&e))
                || !p.starts_with(repo().join("fixtures"))
        })
        .collect()
}

#[test]
fn jpeg_corpus() {
    let inputs = only(
        corpus("jpeg", &["fixtures/jpeg", "fixtures/jpeg/cut"]),
        &["jpg"],
    );
    replay("jpeg", &inputs, fuzzing::jpeg, 32);
}

#[test]
fn image_corpus() {
    let inputs = only(
        corpus("image", &["fixtures/e2e/images", "fixtures/jpeg"]),
        &["jpg", "png"],
    );
    replay("image", &inputs, fuzzing::image, 30);
}

#[test]
fn weights_config_corpus() {
    replay(
        "weights_config",
        &corpus("weights_config", &[]),
        fuzzing::weights_and_config,
        2,
    );
}

#[test]
fn unpack_corpus() {
    replay("unpack", &corpus("unpack", &[]), fuzzing::unpack, 5);
}

#[test]
fn the_targets_have_corpora() {
    for target in ["jpeg", "image", "chat_request", "weights_config", "unpack"] {
        assert!(
            Path::new(&repo().join("fuzz/seeds").join(target)).is_dir(),
            "{target}"
        );
    }
}
