//! The `chat_request` fuzz target's body over its committed seeds (`fuzz/seeds/`) and every
//! finding (`fuzz/regressions/`), replayed on stable by `cargo test`.

use std::path::PathBuf;

#[test]
fn chat_request_corpus() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut inputs: Vec<PathBuf> = ["fuzz/seeds/chat_request", "fuzz/regressions/chat_request"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(repo.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .collect();
    inputs.sort();
    for path in &inputs {
        println!("{}", path.display());
        vlm_server::fuzzing::chat_request(&std::fs::read(path).unwrap());
    }
    assert!(inputs.len() >= 5, "{inputs:?}");
}
