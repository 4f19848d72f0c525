//! The decoder's rows: rotary embedding with the KV cache write, projections with the norm
//! before them and the residual after, SwiGLU, the LM head.
//!
//! A decoding step at batch 1 is one row through every layer: burn 0.21 runs each projection,
//! the norm, the bias, the rotation, the cache write, SwiGLU's product and the residual as
//! launches of their own (BENCHMARKS.md counts them per step). On the CubeCL backends each op
//! here runs such a row in one launch; for other shapes and backends it is burn's ops.

use burn::tensor::{Tensor, backend::Backend};

use super::activation::swiglu;
use super::norm::RowNorm;
use crate::Linear;
use crate::quant::QuantizedMatrix;

/// The rotary embedding's tables for the positions at hand, `cos` and `sin` each
/// `[1, 1, n, head_dim]`, in the "rotate half" convention of Qwen2 / Llama.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
}

impl<B: Backend> Rope<B> {
    /// `x` `[batch, heads, n, head_dim]` rotated: its halves (x₁, x₂) → (x₁·cos − x₂·sin,
    /// x₂·cos + x₁·sin).
    pub fn rotate(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let d = x.dims()[3];
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// Rotates queries `q` `[batch, heads, n, d]` and keys `k` `[batch, kv_heads, n, d]` at
/// positions `start..start + n` and writes the rotated keys and the values `v` into the cache
/// buffers `keys`, `values` `[batch, kv_heads, capacity, d]` at `start`, in place where nothing
/// else holds the buffers. Returns the rotated queries.
///
/// On the CubeCL backends one launch, on flex at f32 one pass writing the cache in place (two
/// rotations and two slice assignments in burn's ops).
///
/// # Panics
/// When `start + n` exceeds the buffers' capacity (the caller checks the cache's room first).
pub fn rotary_append<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    rope: &Rope<B>,
    keys: &mut Tensor<B, 4>,
    values: &mut Tensor<B, 4>,
    start: usize,
) -> Tensor<B, 4> {
    #[cfg(feature = "cubecl")]
    if super::runs::<B>(super::Kernel::Rotary)
        && crate::cube::rotary_append_fits(&q, &k, &v, &rope.cos, &rope.sin, keys, values, start)
    {
        return in_place(keys, values, |keys, values| {
            crate::cube::rotary_append(
                q,
                k,
                v,
                rope.cos.clone(),
                rope.sin.clone(),
                keys,
                values,
                start,
            )
        });
    }
    #[cfg(feature = "flex")]
    let (q, k, v) =
        match crate::flex::rotary_append(q, k, v, &rope.cos, &rope.sin, keys, values, start) {
            Ok(q) => return q,
            Err(inputs) => inputs,
        };
    let q = rope.rotate(q);
    let k = rope.rotate(k);
    let [b, h, n, d] = k.dims();
    let range = [0..b, 0..h, start..start + n, 0..d];
    in_place(keys, values, |keys, values| {
        (
            q,
            keys.slice_assign(range.clone(), k),
            values.slice_assign(range, v),
        )
    })
}

/// Runs `write` on the cache buffers moved out of their place, so that it holds the only
/// reference to them and can write in place, and puts back the buffers it returns; its first
/// output (the rotated queries) comes back.
fn in_place<B: Backend>(
    keys: &mut Tensor<B, 4>,
    values: &mut Tensor<B, 4>,
    write: impl FnOnce(Tensor<B, 4>, Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>),
) -> Tensor<B, 4> {
    let device = keys.device();
    let empty = || Tensor::empty([0, 0, 0, 0], &device);
    let (q, new_keys, new_values) = write(
        std::mem::replace(keys, empty()),
        std::mem::replace(values, empty()),
    );
    *keys = new_keys;
    *values = new_values;
    q
}

/// A layer's attention inputs from its input `x` `[batch, n, hidden]`: `norm(x)` through the
/// projections `q`, `k`, `v` (biases on all three or none), split into heads of `head_dim`, q
/// and k rotated at positions `start..start + n`, k and v written into the cache buffers at
/// `start` as [`rotary_append`] does. Returns the rotated queries `[batch, heads, n, head_dim]`.
///
/// For one row (a decoding step at batch 1) on the CubeCL backends: one launch for all of it;
/// without that kernel, the norm and the three projections in one launch and the rotation with
/// the cache write in another.
#[allow(clippy::too_many_arguments)]
pub fn qkv_rotary_append<B: Backend>(
    x: Tensor<B, 3>,
    norm: &RowNorm<B>,
    [q_proj, k_proj, v_proj]: [&Linear<B>; 3],
    head_dim: usize,
    rope: &Rope<B>,
    keys: &mut Tensor<B, 4>,
    values: &mut Tensor<B, 4>,
    start: usize,
) -> Tensor<B, 4> {
    let [batch, n, _] = x.dims();
    let linears = [q_proj, k_proj, v_proj];
    #[cfg(feature = "cubecl")]
    if super::runs::<B>(super::Kernel::QkvRotary) {
        use crate::cube::RowWeights;
        let blocks = Blocks::of_linears(&linears);
        let weights = match &blocks {
            Blocks::Dense(w) => Some(RowWeights::Dense(w)),
            Blocks::Quantized(q) => Some(RowWeights::Quantized(q)),
            Blocks::Mixed => None,
        };
        let biases = all_biases(&linears);
        if let (Some(weights), Ok(biases)) = (weights, biases)
            && crate::cube::qkv_rotary_append_fits(
                &x,
                weights,
                biases.as_ref(),
                Some(norm),
                (&rope.cos, &rope.sin),
                keys,
                values,
                start,
            )
        {
            return in_place(keys, values, |keys, values| {
                crate::cube::qkv_rotary_append(
                    x,
                    weights,
                    biases,
                    Some(norm.clone()),
                    (rope.cos.clone(), rope.sin.clone()),
                    keys,
                    values,
                    start,
                )
            });
        }
    }
    let heads = |t: Tensor<B, 3>| -> Tensor<B, 4> {
        let h = t.dims()[2] / head_dim;
        t.reshape([batch, n, h, head_dim]).swap_dims(1, 2)
    };
    let [q, k, v] = match row(&x, &linears, Some(norm), None, false) {
        // Split by heads after the reshape: a reshape of a narrowed view is a copy in burn.
        Some(qkv) => {
            let widths = linears.map(|l| l.d_output() / head_dim);
            let all = heads(qkv);
            [
                all.clone().narrow(1, 0, widths[0]),
                all.clone().narrow(1, widths[0], widths[1]),
                all.narrow(1, widths[0] + widths[1], widths[2]),
            ]
        }
        None => {
            let normed = norm.apply(x);
            [
                heads(q_proj.forward(normed.clone())),
                heads(k_proj.forward(normed.clone())),
                heads(v_proj.forward(normed)),
            ]
        }
    };
    rotary_append(q, k, v, rope, keys, values, start)
}

/// `residual + linear(x)`, `x` `[batch, n, in]`, `residual` `[batch, n, out]`: in one launch
/// for one row on the CubeCL backends.
pub fn linear_residual<B: Backend>(
    x: Tensor<B, 3>,
    linear: &Linear<B>,
    residual: Tensor<B, 3>,
) -> Tensor<B, 3> {
    match row(&x, &[linear], None, Some(&residual), false) {
        Some(y) => y,
        None => residual + linear.forward(x),
    }
}

/// SwiGLU's gated projection of the normalised input, `silu(gate(norm(x))) · up(norm(x))`,
/// `[batch, n, hidden]` → `[batch, n, intermediate]` (no biases): the norm, both projections and
/// their product in one launch for one row on the CubeCL backends.
pub fn norm_swiglu<B: Backend>(
    x: Tensor<B, 3>,
    norm: &RowNorm<B>,
    gate: &Linear<B>,
    up: &Linear<B>,
) -> Tensor<B, 3> {
    if let Some(y) = row(&x, &[gate, up], Some(norm), None, true) {
        return y;
    }
    let x = norm.apply(x);
    match row(&x, &[gate, up], None, None, true) {
        Some(y) => y,
        None => swiglu(gate.forward(x.clone()), up.forward(x)),
    }
}

/// One block of an output projection over the hidden size.
// A few short-lived tensor handles per step: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Projection<B: Backend> {
    /// `[hidden, cols]`, any strides (a tied head's embedding block transposed).
    Dense(Tensor<B, 2>),
    /// `[cols, hidden]` quantized.
    Quantized(QuantizedMatrix<B>),
}

/// `x` `[batch, n, hidden]`, normalised first with `norm` when given, against the vocabulary
/// blocks of `projection` → scores `[batch, n, Σ cols]`.
///
/// For one row on the CubeCL backends one launch per three blocks with the norm in each (one in
/// all where the table is whole); otherwise the norm, one matrix product per block and their
/// concatenation.
pub fn norm_project<B: Backend>(
    x: Tensor<B, 3>,
    norm: Option<&RowNorm<B>>,
    projection: &[Projection<B>],
) -> Tensor<B, 3> {
    #[cfg(feature = "cubecl")]
    if super::runs::<B>(super::Kernel::Gemv) {
        use crate::cube::{RowProjection, RowWeights, linear_row, linear_row_fits};
        let blocks = Blocks::of(projection);
        let groups: Vec<RowWeights<'_, B>> = match &blocks {
            Blocks::Dense(blocks) => blocks.chunks(3).map(RowWeights::Dense).collect(),
            Blocks::Quantized(blocks) => blocks.chunks(3).map(RowWeights::Quantized).collect(),
            Blocks::Mixed => Vec::new(),
        };
        let fits = !groups.is_empty()
            && groups
                .iter()
                .all(|&group| linear_row_fits(&x, group, &[], RowProjection::Concat, norm, None));
        if fits {
            let mut parts: Vec<Tensor<B, 3>> = groups
                .into_iter()
                .map(|group| {
                    linear_row(
                        x.clone(),
                        group,
                        &[],
                        RowProjection::Concat,
                        norm.cloned(),
                        None,
                    )
                })
                .collect();
            return if parts.len() == 1 {
                parts.remove(0)
            } else {
                Tensor::cat(parts, 2)
            };
        }
    }
    let x = match norm {
        Some(norm) => norm.apply(x),
        None => x,
    };
    let [b, n, h] = x.dims();
    let flat = x.reshape([b * n, h]);
    let mut parts: Vec<Tensor<B, 2>> = projection
        .iter()
        .map(|block| match block {
            Projection::Dense(block) => flat.clone().matmul(block.clone()),
            Projection::Quantized(q) => super::quantized_matmul(flat.clone(), q),
        })
        .collect();
    let scores = if parts.len() == 1 {
        parts.remove(0)
    } else {
        Tensor::cat(parts, 1)
    };
    let vocab = scores.dims()[1];
    scores.reshape([b, n, vocab])
}

/// `linears` over one row `x` `[1, 1, in]` in one launch (normalised first with `norm`, plus
/// `residual`; side by side, or SwiGLU's product when `swiglu`) where the backend runs the row
/// kernel and the tensors fit it; `None` (nothing done) otherwise.
///
/// On flex, quantized `linears` (more than one, no residual) over a few rows are one parallel
/// pass over one rounding of the (normalised) input: [`crate::flex::quantized_rows`].
#[cfg_attr(
    not(any(feature = "cubecl", feature = "flex")),
    allow(unused_variables)
)]
fn row<B: Backend>(
    x: &Tensor<B, 3>,
    linears: &[&Linear<B>],
    norm: Option<&RowNorm<B>>,
    residual: Option<&Tensor<B, 3>>,
    swiglu: bool,
) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "flex")]
    if crate::flex::on_flex::<B>() {
        return stacked_rows(x, linears, norm, residual, swiglu);
    }
    #[cfg(feature = "cubecl")]
    {
        use crate::cube::{RowProjection, RowWeights, linear_row, linear_row_fits};
        if !super::runs::<B>(super::Kernel::Gemv) {
            return None;
        }
        let projection = if swiglu {
            RowProjection::SwiGlu
        } else {
            RowProjection::Concat
        };
        let blocks = Blocks::of_linears(linears);
        let weights = match &blocks {
            Blocks::Dense(w) => RowWeights::Dense(w),
            Blocks::Quantized(q) => RowWeights::Quantized(q),
            Blocks::Mixed => return None,
        };
        // Biases on all of them or none (a mix, or biases on SwiGLU, fail the fit).
        let biases: Vec<Tensor<B, 1>> = linears
            .iter()
            .filter_map(|l| l.bias.as_ref().map(|b| b.val()))
            .collect();
        if !linear_row_fits(x, weights, &biases, projection, norm, residual) {
            return None;
        }
        Some(linear_row(
            x.clone(),
            weights,
            &biases,
            projection,
            norm.cloned(),
            residual.cloned(),
        ))
    }
    #[cfg(not(feature = "cubecl"))]
    None
}

/// [`row`] on flex: quantized `linears` side by side in one product, or `None`.
#[cfg(feature = "flex")]
fn stacked_rows<B: Backend>(
    x: &Tensor<B, 3>,
    linears: &[&Linear<B>],
    norm: Option<&RowNorm<B>>,
    residual: Option<&Tensor<B, 3>>,
    swiglu: bool,
) -> Option<Tensor<B, 3>> {
    let [batch, n, _] = x.dims();
    if linears.len() < 2 || residual.is_some() || batch * n > crate::flex::MATVEC_ROWS {
        return None;
    }
    let parts: Vec<_> = linears
        .iter()
        .map(|l| Some((l.quantized_weight()?, l.bias.as_ref().map(|b| b.val()))))
        .collect::<Option<_>>()?;
    let x = match norm {
        Some(norm) => norm.apply(x.clone()),
        None => x.clone(),
    };
    let y = crate::flex::quantized_rows(x, &parts).ok()?;
    if !swiglu {
        return Some(y);
    }
    let [gate, up] = [0, 1].map(|k| linears[k].d_output());
    Some(super::swiglu(
        y.clone().narrow(2, 0, gate),
        y.narrow(2, gate, up),
    ))
}

/// Weight matrices of one row kernel, all of one kind.
#[cfg(feature = "cubecl")]
enum Blocks<B: Backend> {
    Dense(Vec<Tensor<B, 2>>),
    Quantized(Vec<QuantizedMatrix<B>>),
    /// Some of each: no kernel takes them together.
    Mixed,
}

#[cfg(feature = "cubecl")]
impl<B: Backend> Blocks<B> {
    fn of(projection: &[Projection<B>]) -> Self {
        Self::sort(projection.iter().map(|p| match p {
            Projection::Dense(t) => (Some(t.clone()), None),
            Projection::Quantized(q) => (None, Some(q.clone())),
        }))
    }

    /// `[in, out]` dense weights, or `[out, in]` quantized ones.
    fn of_linears(linears: &[&Linear<B>]) -> Self {
        Self::sort(
            linears
                .iter()
                .map(|l| (l.dense(), l.quantized_weight().cloned())),
        )
    }

    fn sort(
        weights: impl Iterator<Item = (Option<Tensor<B, 2>>, Option<QuantizedMatrix<B>>)>,
    ) -> Self {
        let (dense, quantized): (Vec<_>, Vec<_>) = weights.unzip();
        if let Some(dense) = dense.into_iter().collect::<Option<Vec<_>>>() {
            Self::Dense(dense)
        } else if let Some(quantized) = quantized.into_iter().collect::<Option<Vec<_>>>() {
            Self::Quantized(quantized)
        } else {
            Self::Mixed
        }
    }
}

/// The biases of all three projections, `None` when none has one; `Err` for a mix.
#[cfg(feature = "cubecl")]
#[allow(clippy::type_complexity)]
fn all_biases<B: Backend>(linears: &[&Linear<B>; 3]) -> Result<Option<[Tensor<B, 1>; 3]>, ()> {
    let biases: Vec<Tensor<B, 1>> = linears
        .iter()
        .filter_map(|l| l.bias.as_ref().map(|b| b.val()))
        .collect();
    match <[_; 3]>::try_from(biases) {
        Ok(all) => Ok(Some(all)),
        Err(none) if none.is_empty() => Ok(None),
        Err(_) => Err(()),
    }
}
