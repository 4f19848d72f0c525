//! The rotary embedding with the KV cache write on flex, in one pass over the new rows.
//!
//! In burn's ops the rotation is a narrow, a negation, a concatenation, two products and a
//! sum per tensor, and the cache write two `slice_assign`s; flex 0.21's `slice_assign` copies
//! its whole destination even when nothing else holds it (burn#5575, fixed after 0.21), so a
//! decoding step copied every layer's keys and values, a cost growing with the context. Here
//! the rotated queries are written once, and the keys and values straight into the cache
//! buffers, in place where the cache alone holds them.

use burn::tensor::{DType, Tensor, backend::Backend};
use rayon::prelude::*;

use super::{CHUNK, Operand, contiguous, flex, on_flex, output, tensor, values_mut};

/// Rotates queries `q` `[batch, heads, n, d]` and keys `k` `[batch, kv_heads, n, d]` at the
/// positions of `cos`, `sin` `[1, 1, n, d]` ("rotate half": halves (x₁, x₂) → (x₁·cos −
/// x₂·sin, x₂·cos + x₁·sin), rounded as burn's ops round them) and writes the rotated keys and
/// the values `v` `[batch, kv_heads, n, d_v]` into `keys` `[batch, kv_heads, capacity, d]`
/// and `values` `[batch, kv_heads, capacity, d_v]` at `start`. Returns the rotated queries
/// `[batch, heads, n, d]`.
///
/// f32 tensors on flex; anything else (or positions past the capacity) gives `q`, `k`, `v`
/// back with the cache untouched.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn rotary_append<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    keys: &mut Tensor<B, 4>,
    values: &mut Tensor<B, 4>,
    start: usize,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    let [batch, heads, n, d] = q.dims();
    let [kb, kv_heads, kn, kd] = k.dims();
    let [vb, vh, vn, dv] = v.dims();
    let [cb, ch, capacity, cd] = keys.dims();
    let f32s = [&q, &k, &v, cos, sin, keys, values]
        .iter()
        .all(|t| t.dtype() == DType::F32);
    let fits = [kb, kn, kd] == [batch, n, d]
        && [vb, vh, vn] == [batch, kv_heads, n]
        && [cb, ch, cd] == [batch, kv_heads, d]
        && values.dims() == [batch, kv_heads, capacity, dv]
        && cos.dims() == [1, 1, n, d]
        && sin.dims() == [1, 1, n, d]
        && d.is_multiple_of(2)
        && start + n <= capacity;
    if !on_flex::<B>() || !f32s || !fits {
        return Err((q, k, v));
    }
    let (q, k, v) = (
        Operand::of(flex(q)),
        Operand::of(flex(k)),
        Operand::of(flex(v)),
    );
    let (cos, sin) = (
        Operand::of(flex(cos.clone())),
        Operand::of(flex(sin.clone())),
    );
    let rotate = |x: &Operand, [b, h, i]: [usize; 3], dst: &mut [f32]| {
        // SAFETY: (b, h, i) index a row of x's shape and position i of the tables'; rows are
        // d long along the last axis's stride.
        unsafe {
            rotate_row(
                x.at([b, h, i, 0]),
                cos.at([0, 0, i, 0]),
                sin.at([0, 0, i, 0]),
                dst,
            )
        }
    };
    let parallel = n * (heads + 2 * kv_heads) * d >= CHUNK;

    let mut rotated = vec![0.0f32; batch * heads * n * d];
    let rotate_q = |(bh, rows): (usize, &mut [f32])| {
        for (i, row) in rows.chunks_exact_mut(d).enumerate() {
            rotate(&q, [bh / heads, bh % heads, i], row);
        }
    };
    match parallel {
        true => rotated.par_chunks_mut(n * d).enumerate().for_each(rotate_q),
        false => rotated.chunks_mut(n * d).enumerate().for_each(rotate_q),
    }

    let device = keys.device();
    let take = |t: &mut Tensor<B, 4>| {
        contiguous(flex(std::mem::replace(
            t,
            Tensor::empty([0, 0, 0, 0], &device),
        )))
    };
    let (mut key_buffer, mut value_buffer) = (take(keys), take(values));
    {
        // Copied first only where another tensor still shares the cache's data.
        let key_data = values_mut(&mut key_buffer);
        let value_data = values_mut(&mut value_buffer);
        let write = |((bh, key_rows), value_rows): ((usize, &mut [f32]), &mut [f32])| {
            let (b, h) = (bh / kv_heads, bh % kv_heads);
            for i in 0..n {
                let at = (start + i) * d;
                rotate(&k, [b, h, i], &mut key_rows[at..at + d]);
                let at = (start + i) * dv;
                // SAFETY: row (b, h, i) of v, dv long along its last axis's stride.
                unsafe { copy_row(v.at([b, h, i, 0]), &mut value_rows[at..at + dv]) };
            }
        };
        let (key_len, value_len) = (capacity * d, capacity * dv);
        match parallel {
            true => key_data
                .par_chunks_mut(key_len)
                .enumerate()
                .zip(value_data.par_chunks_mut(value_len))
                .for_each(write),
            false => key_data
                .chunks_mut(key_len)
                .enumerate()
                .zip(value_data.chunks_mut(value_len))
                .for_each(write),
        }
    }
    *keys = tensor(key_buffer);
    *values = tensor(value_buffer);
    Ok(output(rotated, [batch, heads, n, d]))
}

/// `dst` = the row at `x` rotated by the rows at `cos` and `sin`, each `dst.len()` values
/// along their `col` steps: `x·cos + (−x₂, x₁)·sin`, as burn's `x * cos + rotated * sin`
/// rounds it (two products and a sum, no fused multiply-add).
///
/// # Safety
/// Each of `x`, `cos`, `sin` addresses `dst.len()` values along its column step.
unsafe fn rotate_row(x: super::Matrix, cos: super::Matrix, sin: super::Matrix, dst: &mut [f32]) {
    let half = dst.len() / 2;
    let at = |m: super::Matrix, j: usize| unsafe { *m.ptr.offset(j as isize * m.col) };
    for (j, out) in dst.iter_mut().enumerate() {
        let other = if j < half {
            -at(x, j + half)
        } else {
            at(x, j - half)
        };
        *out = at(x, j) * at(cos, j) + other * at(sin, j);
    }
}

/// `dst` = the `dst.len()` values at `x` along its column step.
///
/// # Safety
/// `x` addresses `dst.len()` values along its column step.
unsafe fn copy_row(x: super::Matrix, dst: &mut [f32]) {
    for (j, out) in dst.iter_mut().enumerate() {
        *out = unsafe { *x.ptr.offset(j as isize * x.col) };
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Tensor, TensorData};

    use crate::flex::testing::random;
    use crate::ops::Rope;

    type T4 = Tensor<Flex, 4>;

    /// burn's ops: the rotation of [`Rope::rotate`] and two `slice_assign`s.
    fn reference(
        q: T4,
        k: T4,
        v: T4,
        rope: &Rope<Flex>,
        keys: T4,
        values: T4,
        start: usize,
    ) -> [T4; 3] {
        let (q, k) = (rope.rotate(q), rope.rotate(k));
        let [b, h, n, d] = k.dims();
        let dv = v.dims()[3];
        [
            q,
            keys.slice_assign([0..b, 0..h, start..start + n, 0..d], k),
            values.slice_assign([0..b, 0..h, start..start + n, 0..dv], v),
        ]
    }

    /// Where a tensor's data lies.
    fn address(t: &T4) -> usize {
        t.clone()
            .into_primitive()
            .tensor()
            .storage::<f32>()
            .as_ptr() as usize
    }

    fn tables(n: usize, d: usize, offset: usize) -> Rope<Flex> {
        let angles: Vec<f32> = (0..n * d)
            .map(|i| ((offset + i / d) as f32) * 0.37f32.powi((i % (d / 2)) as i32))
            .collect();
        let device = Default::default();
        let t = |f: fn(f32) -> f32| {
            T4::from_data(
                TensorData::new(angles.iter().map(|&a| f(a)).collect(), [1, 1, n, d]),
                &device,
            )
        };
        Rope {
            cos: t(f32::cos),
            sin: t(f32::sin),
        }
    }

    /// Bit-equal to burn's ops on contiguous and strided (head-split views of a projection)
    /// inputs, one position and many (parallel), grouped heads; the cache keeps what it held
    /// elsewhere, and a cache another tensor shares is copied, not written under it.
    #[test]
    fn rotary_append_equals_burn() {
        for (batch, heads, kv_heads, n, d, dv, capacity, start) in [
            (1, 14, 2, 1, 64, 64, 40, 17),
            (2, 4, 4, 3, 8, 6, 9, 6),
            (1, 28, 4, 300, 128, 128, 320, 0),
        ] {
            let rope = tables(n, d, start);
            // q, k, v as the decoder makes them: one projection's output split into heads.
            let projected = random([batch, n, (heads + kv_heads) * d + kv_heads * dv], 1.0);
            let split = |from: usize, h: usize, w: usize| {
                projected
                    .clone()
                    .narrow(2, from, h * w)
                    .reshape([batch, n, h, w])
                    .swap_dims(1, 2)
            };
            let q = split(0, heads, d);
            let k = split(heads * d, kv_heads, d);
            let v = split((heads + kv_heads) * d, kv_heads, dv);
            let keys = random([batch, kv_heads, capacity, d], 1.0);
            let values = random([batch, kv_heads, capacity, dv], 1.0);
            let want = reference(
                q.clone(),
                k.clone(),
                v.clone(),
                &rope,
                keys.clone(),
                values.clone(),
                start,
            );
            let before = keys.to_data();
            let (mut got_keys, mut got_values) = (keys.clone(), values.clone());
            let got = super::rotary_append(
                q.clone(),
                k.clone(),
                v.clone(),
                &rope.cos,
                &rope.sin,
                &mut got_keys,
                &mut got_values,
                start,
            )
            .expect("flex f32");
            got.into_data().assert_eq(&want[0].to_data(), true);
            got_keys.to_data().assert_eq(&want[1].to_data(), true);
            got_values.to_data().assert_eq(&want[2].to_data(), true);
            // `keys` shared the cache's buffer: it keeps its own values.
            keys.to_data().assert_eq(&before, true);
            // Copied above (`keys` shared the buffer); written in place where the cache holds
            // its buffer alone.
            assert_ne!(address(&got_keys), address(&keys));
            let (key_address, value_address) = (address(&got_keys), address(&got_values));
            let written = got_keys.to_data();
            let _ = super::rotary_append(
                q,
                k,
                v,
                &rope.cos,
                &rope.sin,
                &mut got_keys,
                &mut got_values,
                start,
            )
            .expect("flex f32");
            assert_eq!(address(&got_keys), key_address);
            assert_eq!(address(&got_values), value_address);
            got_keys.into_data().assert_eq(&written, true);
        }
    }

    /// Positions past the capacity and other dtypes come back, the cache untouched.
    #[test]
    fn rotary_append_hands_back_what_it_cannot_take() {
        let rope = tables(2, 8, 0);
        let (q, k, v) = (
            random([1, 2, 2, 8], 1.0),
            random([1, 1, 2, 8], 1.0),
            random([1, 1, 2, 8], 1.0),
        );
        let (mut keys, mut values) = (random([1, 1, 3, 8], 1.0), random([1, 1, 3, 8], 1.0));
        let before = keys.to_data();
        let back = super::rotary_append(
            q.clone(),
            k.clone(),
            v.clone(),
            &rope.cos,
            &rope.sin,
            &mut keys,
            &mut values,
            2,
        );
        assert!(back.is_err());
        keys.to_data().assert_eq(&before, true);
        let half = q.cast(burn::tensor::FloatDType::F16);
        let back =
            super::rotary_append(half, k, v, &rope.cos, &rope.sin, &mut keys, &mut values, 0);
        assert!(back.is_err());
        keys.into_data().assert_eq(&before, true);
    }
}
