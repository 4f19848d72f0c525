//! What the workspace's tests share (feature `testing`, enabled by dev-dependencies only): the
//! synthetic-weight formula of the golden fixtures, a reader for those fixtures, and rel-L2.
//!
//! The formula is bit-identical to `xtask/python/formula.py`: every value is a pure function of
//! (seed, tensor name, element index) through SplitMix64 and float32 arithmetic, so the parity
//! tests check full-size networks against the Python references without storing their weights,
//! with realistic activations (depthwise mixers near the identity, He-scaled convolutions,
//! positive BatchNorm variances).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData, backend::Backend};
use safetensors::SafeTensors;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// `n` values uniform in [-1, 1).
pub fn uniform(key: &str, n: usize) -> Vec<f32> {
    let k = fnv1a64(key);
    (0..n as u64)
        .map(|i| {
            let mut z = k.wrapping_add(i.wrapping_mul(GOLDEN));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32) * (2.0f32).powi(-24) * 2.0 - 1.0
        })
        .collect()
}

fn rule(name: &str, shape: &[usize]) -> (f64, f64, bool) {
    let ends = |s: &[&str]| s.iter().any(|x| name.ends_with(x));
    if ends(&["bn.weight"]) {
        return (0.2, 1.0, false);
    }
    if ends(&["bn.running_var"]) {
        return (0.25, 0.75, false);
    }
    if ends(&["bn.bias", "bn.running_mean"]) {
        return (0.1, 0.0, false);
    }
    if name.contains("layer_scale") {
        return (0.05, 0.1, false);
    }
    if ends(&["norm.weight", "layernorm.weight"]) {
        return (0.1, 1.0, false);
    }
    if ends(&["norm.bias"]) {
        return (0.05, 0.0, false);
    }
    if ends(&[".bias"]) {
        return (0.02, 0.0, false);
    }
    let cpe = name.starts_with("network.")
        && name.matches('.').count() == 3
        && name.ends_with("reparam_conv.weight");
    if ends(&["token_mixer.reparam_conv.weight"]) || cpe {
        return (0.05, 0.0, true);
    }
    let fan_in: usize = if shape.len() > 1 {
        shape[1..].iter().product()
    } else {
        shape[0]
    };
    let gain = if ends(&["qkv.weight", "proj.weight"]) {
        3.0
    } else {
        6.0
    };
    ((gain / fan_in as f64).sqrt(), 0.0, false)
}

/// The weights of tensor `name` (Apple name, no prefix) for `seed`.
pub fn tensor(seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let n = shape.iter().product();
    let (scale, offset, centre) = rule(name, shape);
    // Python rounds these f64 constants to f32 the same way (`np.float32(x)`).
    let (scale, offset) = (scale as f32, offset as f32);
    let k = shape[shape.len() - 1] * shape[shape.len().saturating_sub(2)];
    uniform(&format!("{seed}:{name}"), n)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let v = v * scale + offset;
            if centre && i % k == k / 2 { v + 1.0 } else { v }
        })
        .collect()
}

/// Pixels in [0, 1).
pub fn image(seed: u64, name: &str, n: usize) -> Vec<f32> {
    uniform(&format!("{seed}:{name}"), n)
        .into_iter()
        .map(|v| v * 0.5 + 0.5)
        .collect()
}

/// A checkpoint of `tensors` (canonical name → shape) with the formula's values for `seed`, each
/// name stored as `names` resolves it.
pub fn checkpoint(
    seed: u64,
    tensors: &[(String, Vec<usize>)],
    names: &crate::loader::NameMap,
) -> HashMap<String, TensorData> {
    tensors
        .iter()
        .map(|(name, shape)| {
            (
                names.resolve(name),
                TensorData::new(tensor(seed, name, shape), shape.clone()),
            )
        })
        .collect()
}

/// The committed golden fixtures (`cargo xtask golden` writes them).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The tensors and metadata of a safetensors fixture, read whole.
pub struct Fixture {
    tensors: HashMap<String, TensorData>,
    metadata: HashMap<String, String>,
}

impl Fixture {
    /// Reads `path`: float tensors as f32, integer and bool tensors as i64.
    ///
    /// # Panics
    /// When the file is missing or not safetensors (a broken checkout).
    pub fn open(path: &Path) -> Self {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("fixture `{}`: {e}", path.display()));
        let file = SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("fixture `{}`: {e}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("read above");
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let data = crate::loader::tensor_data(&view).unwrap_or_else(|dtype| {
                    panic!("fixture `{}`: {name} is {dtype:?}", path.display())
                });
                (name, data)
            })
            .collect();
        Self { tensors, metadata }
    }

    /// A tensor's values, `None` when absent.
    pub fn get(&self, name: &str) -> Option<TensorData> {
        self.tensors.get(name).cloned()
    }

    /// A float tensor on `B`'s default device.
    ///
    /// # Panics
    /// When absent.
    pub fn tensor<B: Backend, const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let data = self
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor `{name}`"));
        Tensor::from_data(data, &Default::default())
    }

    /// An integer tensor's values.
    ///
    /// # Panics
    /// When absent or not integers.
    pub fn ids(&self, name: &str) -> Vec<i64> {
        self.get(name)
            .and_then(|d| d.into_vec::<i64>().ok())
            .unwrap_or_else(|| panic!("fixture ids `{name}`"))
    }

    /// The header's `__metadata__` entry `key`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }
}

/// `‖a − b‖ / ‖b‖` over all elements, in f64.
///
/// # Panics
/// When the shapes differ.
pub fn rel_l2<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.into_data().convert::<f64>().into_vec::<f64>().unwrap();
    let b = b.into_data().convert::<f64>().into_vec::<f64>().unwrap();
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Whether a wgpu adapter exists that computes in `dtype` (wgpu panics when it finds none). Under
/// CI (`CI` set) a missing adapter fails the test: `.ci/run` installs Mesa's lavapipe.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapter(dtype: burn::tensor::DType) -> bool {
    use burn::backend::Wgpu;
    use std::panic::AssertUnwindSafe;
    let found = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Wgpu::<f32>::supports_dtype(&Default::default(), dtype)
    }));
    match found {
        Ok(supported) => supported,
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "no Vulkan adapter: CI must install mesa-vulkan-drivers (lavapipe)"
            );
            eprintln!("skipped: no wgpu adapter (apt-get install mesa-vulkan-drivers)");
            false
        }
    }
}
