//! The safetensors reader: single files, sharded indexes, dtypes, and broken inputs.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView, serialize_to_file};
use vlm_pipeline::{Weights, WeightsError};

fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    serialize_to_file(&views, None, path).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn values(w: &Weights, name: &str) -> Vec<f32> {
    w.get(name)
        .unwrap()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
}

/// Half-precision tensors come back as stored (the loader widens one tensor at a time), f32 as
/// f32, integers apart.
#[test]
fn keeps_bf16_f16_as_stored_f32_as_f32_and_ints_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let v = [1.5f32, -2.25, 0.0, 3.0e-3];
    let bf16: Vec<u8> = v
        .iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect();
    let f16: Vec<u8> = v
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect();
    write(
        &path,
        &[
            ("a", Dtype::BF16, vec![2, 2], bf16),
            ("b", Dtype::F16, vec![4], f16),
            ("c", Dtype::F32, vec![1, 4], f32_bytes(&v)),
            ("n", Dtype::I64, vec![], 7i64.to_le_bytes().to_vec()),
        ],
    );
    let w = Weights::open(dir.path()).unwrap();
    assert_eq!(w.names(), ["a", "b", "c", "n"]);
    assert_eq!(w.shape("a"), Some(&[2usize, 2][..]));
    assert_eq!(w.get("a").unwrap().dtype, burn::tensor::DType::BF16);
    assert_eq!(w.get("b").unwrap().dtype, burn::tensor::DType::F16);
    assert_eq!(w.get("c").unwrap().dtype, burn::tensor::DType::F32);
    for name in ["a", "b"] {
        let got = values(&w, name);
        for (g, e) in got.iter().zip(v) {
            assert!((g - e).abs() <= e.abs() * 4e-3, "{name}: {g} vs {e}");
        }
    }
    assert_eq!(values(&w, "c"), v);
    let n = w.get("n").unwrap();
    assert!(!n.dtype.is_float());
    assert_eq!(n.into_vec::<i64>().unwrap(), [7]);
    assert!(w.get("missing").is_none());
}

#[test]
fn sharded_index_reads_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &[("x", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))],
    );
    write(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &[("y", Dtype::F32, vec![1], f32_bytes(&[3.0]))],
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"metadata": {"total_size": 12}, "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let w = Weights::open(dir.path()).unwrap();
    assert_eq!(values(&w, "x"), [1.0, 2.0]);
    assert_eq!(values(&w, "y"), [3.0]);
    assert_eq!(w.files().count(), 2);
}

#[test]
fn broken_inputs_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing to open.
    let err = Weights::open(dir.path()).err().unwrap();
    assert!(matches!(err, WeightsError::NotFound(_)), "{err}");

    // A truncated file.
    let path = dir.path().join("model.safetensors");
    write(&path, &[("x", Dtype::F32, vec![4], f32_bytes(&[1.0; 4]))]);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = Weights::open(&path).err().unwrap();
    assert!(matches!(err, WeightsError::Format { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // Garbage.
    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert!(matches!(
        Weights::open(&path),
        Err(WeightsError::Format { .. })
    ));

    // An index naming a shard that is not there.
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(
        &index,
        r#"{"weight_map": {"x": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = Weights::open(dir.path()).err().unwrap();
    assert!(matches!(err, WeightsError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains("model-00001-of-00002.safetensors"),
        "{err}"
    );

    // An index that escapes its directory.
    std::fs::write(&index, r#"{"weight_map": {"x": "../model.safetensors"}}"#).unwrap();
    assert!(matches!(
        Weights::open(dir.path()),
        Err(WeightsError::Index { .. })
    ));
}
