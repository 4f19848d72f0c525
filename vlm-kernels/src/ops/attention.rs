use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, backend::Backend};

/// softmax(q·kᵀ/√d)·v: queries `[batch, heads, n, d]` over the first `len` positions of keys
/// and values `[batch, kv_heads, capacity, d]` (a KV cache is allocated past what it holds);
/// query head `h` reads kv head `h / (heads / kv_heads)` (grouped-query attention). With
/// `causal`, the `n` queries are the last `n` of the `len` positions and query `i` sees keys
/// `0..=len − n + i` (burn's bottom-right aligned mask). `[batch, heads, n, d]`.
///
/// On the CubeCL backends one kernel that reads q, k and v where they lie (strided views of a
/// fused projection, a prefix of the cache): burn 0.21's attention is about a dozen launches,
/// materialises the scores and needs the grouped kv heads repeated. On flex at f32 a loop over
/// heads and blocks of queries on every core (flex's runs one head at a time on one thread).
/// Elsewhere burn's attention over the repeated kv heads.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    len: usize,
    causal: bool,
) -> Tensor<B, 4> {
    #[cfg(feature = "cubecl")]
    if super::runs::<B>(super::Kernel::Attention) {
        let options = crate::cube::KvAttention { len, causal };
        if options.fits(&q, &k, &v) {
            return crate::cube::attention(q, k, v, options);
        }
    }
    #[cfg(feature = "flex")]
    let (q, k, v) = if crate::flex::on_flex::<B>() {
        // Views of the attended prefix, only on flex: on the fusion backends they would be
        // operations of their own.
        let (k, v) = (prefix(k, len), prefix(v, len));
        match crate::flex::attention(q, k, v, causal) {
            Ok(out) => return out,
            Err(inputs) => inputs,
        }
    } else {
        (q, k, v)
    };
    let group = q.dims()[1] / k.dims()[1].max(1);
    let (k, v) = (repeat_kv(k, group, len), repeat_kv(v, group, len));
    let options = AttentionModuleOptions {
        is_causal: causal,
        ..Default::default()
    };
    burn_attention(q, k, v, None, None, options)
}

/// The first `len` positions of `[batch, kv_heads, capacity, d]`: `x` itself when it holds no
/// more.
fn prefix<B: Backend>(x: Tensor<B, 4>, len: usize) -> Tensor<B, 4> {
    if x.dims()[2] == len {
        x
    } else {
        x.narrow(2, 0, len)
    }
}

/// The first `len` positions of `[batch, kv_heads, capacity, d]` as `[batch, kv_heads·group,
/// len, d]`, each kv head repeated for the `group` query heads that read it.
///
/// The new axis goes in while the buffer is contiguous and the positions are cut after: burn
/// 0.21's CubeCL reshape mis-strides a narrowed view with a unit axis (one cached position)
/// when a dimension is added to it.
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, group: usize, len: usize) -> Tensor<B, 4> {
    if group == 1 {
        return prefix(x, len);
    }
    let [b, kv_heads, capacity, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv_heads, group, capacity, d])
        .narrow(3, 0, len)
        .reshape([b, kv_heads * group, len, d])
}
