//! Deterministic synthetic weights and images, bit-identical to `xtask/python/formula.py`.
//!
//! Every value is a pure function of (seed, tensor name, element index) through SplitMix64 and
//! float32 arithmetic, so the parity tests check full-size networks against the Python reference
//! without storing their weights, and benchmarks get realistic (non-degenerate) activations:
//! depthwise mixers near the identity, He-scaled convolutions, positive BatchNorm variances.

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
