//! The CubeCL kernels against burn's ops on the CPU, on wgpu (in CI: Mesa's lavapipe, a Vulkan
//! driver on the CPU): each through burn's fusion (a custom operation between fused ones) and on
//! the bare CubeCL backend.
//!
//! Without a Vulkan adapter the tests fail under CI (`CI` set; `.ci/run` installs
//! `mesa-vulkan-drivers`) and are skipped with a notice elsewhere.

use burn::backend::Wgpu;
use burn::tensor::{DType, Tensor, TensorData};
use vlm_kernels::ops::{Kernel, runs};
use vlm_kernels::testing::{rel_l2, wgpu_adapter as adapter};

/// wgpu without burn's fusion in front: the kernels launched directly rather than as custom
/// operations of the fusion stream.
type Bare = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// The per-channel convolution (`ops::depthwise_conv2d`, the CubeCL kernel on wgpu) against burn's
/// `conv2d` (+ `gelu`) on the CPU, in every geometry the encoder uses and a few it does not
/// (batch 2, odd sizes, a strided input), through burn's fusion (a custom operation between
/// fused ones) and on the bare CubeCL backend.
#[test]
fn wgpu_depthwise_kernel_matches_burn() {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use burn::tensor::activation::gelu;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use vlm_kernels::Depthwise;
    use vlm_kernels::ops::{depthwise_conv2d, uses_cubecl_kernels};

    if !adapter(DType::F32) {
        return;
    }
    assert!(uses_cubecl_kernels::<Wgpu<f32>>() && uses_cubecl_kernels::<Bare>());
    assert!(!uses_cubecl_kernels::<Flex>());

    fn run<B: burn::tensor::backend::Backend>(
        x: &TensorData,
        w: &TensorData,
        b: &TensorData,
        options: Depthwise,
        transpose: bool,
    ) -> TensorData {
        let device = Default::default();
        let mut x = Tensor::<B, 4>::from_data(x.clone(), &device);
        if transpose {
            x = x.swap_dims(2, 3);
        }
        // Elementwise work on both sides, so under fusion the kernel sits between fused ops.
        let x = x * 2.0 - 0.25;
        let y = depthwise_conv2d(
            x,
            Tensor::from_data(w.clone(), &device),
            Tensor::from_data(b.clone(), &device),
            options,
        );
        (y + 1.0).into_data()
    }

    let cases = [
        // (batch, c_in, h, w, kernel, stride, multiplier, gelu, transposed input)
        (1, 8, 17, 23, 3, 1, 1, false, false), // RepMixer token mixer
        (2, 8, 16, 16, 7, 1, 1, false, false), // ConvFFN, RepCPE
        (1, 6, 19, 14, 7, 2, 2, true, false),  // PatchEmbed
        (1, 4, 33, 32, 3, 2, 1, true, false),  // stem
        (1, 8, 9, 9, 3, 1, 2, false, false),   // conv_exp
        (2, 5, 12, 10, 7, 1, 1, true, true),   // strided input
    ];
    for (i, &(batch, c, h, w, k, stride, m, act, transpose)) in cases.iter().enumerate() {
        let options = Depthwise {
            kernel: k,
            stride,
            padding: k / 2,
            multiplier: m,
            gelu: act,
        };
        let cpu = Default::default();
        let shape = if transpose {
            [batch, c, w, h]
        } else {
            [batch, c, h, w]
        };
        let x = Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &cpu);
        let wt = Tensor::<Flex, 4>::random([c * m, 1, k, k], Distribution::Normal(0.0, 0.3), &cpu);
        let b = Tensor::<Flex, 1>::random([c * m], Distribution::Normal(0.0, 0.5), &cpu);
        let (xd, wd, bd) = (x.to_data(), wt.to_data(), b.to_data());

        let x = if transpose { x.swap_dims(2, 3) } else { x };
        let want = conv2d(
            x * 2.0 - 0.25,
            wt,
            Some(b),
            ConvOptions::new([stride; 2], [k / 2; 2], [1, 1], c),
        );
        let want = if act { gelu(want) } else { want } + 1.0;
        assert_eq!(want.dims()[1], c * m);
        for (backend, got) in [
            ("fused", run::<Wgpu<f32>>(&xd, &wd, &bd, options, transpose)),
            ("bare", run::<Bare>(&xd, &wd, &bd, options, transpose)),
        ] {
            let got = Tensor::<Flex, 4>::from_data(got, &cpu);
            let err = rel_l2(got, want.clone());
            assert!(
                err <= 1e-5,
                "case {i} ({options:?}) on {backend}: rel-L2 {err:.3e}"
            );
        }
    }
}

/// The attention kernels (`cube::attention`: the tiled one for many positions, the
/// decoding-step one for one) against burn's attention on the CPU over explicitly repeated kv
/// heads: FastViTHD's shape (no mask, head_dim 32, q/k/v strided views of one `qkv` tensor,
/// batch 2), decoder prefills over a partly filled cache (causal, kv groups 1/2/7, head_dim
/// 64/128, a prompt after cached positions), a query count that is not a multiple of the
/// kernel's row block, and one position; through burn's fusion and on the bare backend.
#[test]
fn wgpu_attention_kernel_matches_burn() {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use burn::tensor::backend::Backend;
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use vlm_kernels::cube::{KvAttention, attention as kernel};

    if !adapter(DType::F32) {
        return;
    }
    assert!(runs::<Wgpu<f32>>(Kernel::Attention));
    assert!(runs::<Bare>(Kernel::Attention));
    assert!(!runs::<Flex>(Kernel::Attention));

    /// q, k, v `[batch, heads or kv_heads, ·, d]` as strided views of one `[batch, rows, 3, h, d]`
    /// tensor when `packed` (FastViTHD's `qkv`), else as given.
    fn views<B: Backend>(
        data: &[TensorData; 3],
        packed: bool,
        device: &B::Device,
    ) -> [Tensor<B, 4>; 3] {
        let [q, k, v] = data.clone().map(|d| Tensor::<B, 4>::from_data(d, device));
        if !packed {
            return [q, k, v];
        }
        let [batch, heads, n, d] = q.dims();
        let qkv = Tensor::stack::<5>(vec![q, k, v], 0)
            .permute([1, 3, 0, 2, 4])
            .reshape([batch, n, 3, heads, d])
            .permute([2, 0, 3, 1, 4]);
        [0, 1, 2].map(|i| qkv.clone().narrow(0, i, 1).reshape([batch, heads, n, d]))
    }

    fn run<B: Backend>(data: &[TensorData; 3], packed: bool, options: KvAttention) -> TensorData {
        let device = Default::default();
        let [q, k, v] = views::<B>(data, packed, &device);
        // Elementwise work before and after, so under fusion the kernel sits between fused ops.
        (kernel(q * 1.5, k, v, options) + 1.0).into_data()
    }

    fn reference(data: &[TensorData; 3], options: KvAttention) -> Tensor<Flex, 4> {
        let cpu = Default::default();
        let [q, k, v] = data.clone().map(|d| Tensor::<Flex, 4>::from_data(d, &cpu));
        let [batch, heads, n, d] = q.dims();
        let kv_heads = k.dims()[1];
        let repeat = |t: Tensor<Flex, 4>| {
            t.narrow(2, 0, options.len)
                .unsqueeze_dim::<5>(2)
                .expand([batch, kv_heads, heads / kv_heads, options.len, d])
                .reshape([batch, heads, options.len, d])
        };
        let options = AttentionModuleOptions {
            is_causal: options.causal,
            ..Default::default()
        };
        assert!(n <= k.dims()[2]);
        attention(q * 1.5, repeat(k), repeat(v), None, None, options) + 1.0
    }

    let cases = [
        // (batch, heads, kv_heads, n, capacity, len, head_dim, causal, packed)
        (2, 3, 3, 70, 70, 70, 32, false, true), // FastViTHD stage 4/5 (no mask)
        (1, 4, 2, 37, 50, 45, 64, true, false), // prefill after 8 cached positions
        (1, 7, 1, 19, 19, 19, 128, true, false), // 7B-shaped group of 7
        (1, 2, 2, 65, 80, 65, 64, true, false), // 65 rows: a second, almost empty block
        (1, 4, 2, 1, 40, 33, 64, true, false),  // one position: the decoding-step kernel
    ];
    for (i, &(batch, heads, kv_heads, n, capacity, len, d, causal, packed)) in
        cases.iter().enumerate()
    {
        let cpu = Default::default();
        let normal = |shape: [usize; 4]| {
            Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &cpu).into_data()
        };
        let data = [
            normal([batch, heads, n, d]),
            normal([batch, kv_heads, capacity, d]),
            normal([batch, kv_heads, capacity, d]),
        ];
        let options = KvAttention { len, causal };
        let want = reference(&data, options);
        for (backend, got) in [
            ("fused", run::<Wgpu<f32>>(&data, packed, options)),
            ("bare", run::<Bare>(&data, packed, options)),
        ] {
            let err = rel_l2(Tensor::<Flex, 4>::from_data(got, &cpu), want.clone());
            assert!(err <= 1e-5, "case {i} on {backend}: rel-L2 {err:.3e}");
        }
        // The output follows the keys, and the mask matters: other keys, or no mask, move it.
        let mut other = data.clone();
        other[1] = normal([batch, kv_heads, capacity, d]);
        let moved = rel_l2(
            Tensor::<Flex, 4>::from_data(run::<Wgpu<f32>>(&other, packed, options), &cpu),
            want.clone(),
        );
        assert!(
            moved > 1e-3,
            "case {i}: output ignores the keys ({moved:.3e})"
        );
        if causal && n > 1 {
            let open = KvAttention { len, causal: false };
            let moved = rel_l2(
                Tensor::<Flex, 4>::from_data(run::<Wgpu<f32>>(&data, packed, open), &cpu),
                want.clone(),
            );
            assert!(
                moved > 1e-3,
                "case {i}: the causal mask changes nothing ({moved:.3e})"
            );
        }
    }
}

/// `w` `[in, out]` quantized by `scheme` as MLX stores a linear layer's weight (`[out, in]`).
fn quantize_transposed(
    w: &TensorData,
    scheme: vlm_kernels::Quantization,
) -> vlm_kernels::quant::HostQuantized {
    use burn::backend::Flex;
    let [k, n] = [w.shape[0], w.shape[1]];
    let t = Tensor::<Flex, 2>::from_data(w.clone(), &Default::default())
        .transpose()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    vlm_kernels::quant::quantize(&t, n, k, scheme, vlm_kernels::quant::ScaleType::F32)
}

/// The `[in, out]` matrices a kernel multiplies with: `weights` themselves, or what their
/// quantization by `scheme` stands for (dequantized on the host).
fn effective_weights(
    weights: &[TensorData],
    scheme: Option<vlm_kernels::Quantization>,
) -> Vec<TensorData> {
    use burn::backend::Flex;
    let Some(scheme) = scheme else {
        return weights.to_vec();
    };
    weights
        .iter()
        .map(|w| {
            let q = quantize_transposed(w, scheme);
            let dense = TensorData::new(q.dequantize(), [q.rows, q.cols]);
            Tensor::<Flex, 2>::from_data(dense, &Default::default())
                .transpose()
                .into_data()
        })
        .collect()
}

/// A decoding step's linear layers at batch 1 (`cube::linear_row`) against burn's ops
/// on the CPU: q/k/v side by side with biases after the RMS norm (widths that do not fill the
/// kernel's column blocks, a cube straddling two projections), one projection plus a residual,
/// the norm and SwiGLU, weights given as transposed views (a tied LM head: the kernel's
/// input-major threads), an input row longer than a cube's threads; the same shapes with
/// quantized weights read from their words (q8 and q4, groups of 32, 64 and 128) against the
/// product of the dequantized matrices; through burn's fusion and on the bare backend. The
/// reference runs in f64, so rel-L2 ≤ 1e-6 bounds the kernel's own rounding.
#[test]
fn wgpu_linear_row_kernel_matches_burn() {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use burn::tensor::activation::silu;
    use burn::tensor::backend::Backend;
    use vlm_kernels::cube::{RowProjection, RowWeights, linear_row};
    use vlm_kernels::ops::RowNorm;
    use vlm_kernels::{Quantization, QuantizedMatrix};

    if !adapter(DType::F32) {
        return;
    }
    assert!(runs::<Wgpu<f32>>(Kernel::Gemv));
    assert!(!runs::<Flex>(Kernel::Gemv));

    struct Case {
        x: TensorData,
        weights: Vec<TensorData>,
        biases: Vec<TensorData>,
        residual: Option<TensorData>,
        projection: RowProjection,
        /// Weights uploaded as `[out, in]` and viewed transposed.
        transposed: bool,
        /// The RMS norm's weight, where the row is normalised first.
        norm: Option<TensorData>,
        /// Weights quantized (MLX's `[out, in]`), read by the kernel from their words.
        scheme: Option<Quantization>,
    }

    const EPS: f64 = 1e-6;

    fn run<B: Backend>(case: &Case) -> TensorData {
        let device = Default::default();
        let x = Tensor::<B, 3>::from_data(case.x.clone(), &device);
        let on = &device;
        let quantized: Vec<QuantizedMatrix<B>> = case
            .scheme
            .into_iter()
            .flat_map(|scheme| {
                case.weights
                    .iter()
                    .map(move |w| QuantizedMatrix::upload(&quantize_transposed(w, scheme), on))
            })
            .collect();
        let weights: Vec<Tensor<B, 2>> = case
            .weights
            .iter()
            .map(|w| {
                let w = Tensor::<B, 2>::from_data(w.clone(), &device);
                if case.transposed {
                    Tensor::<B, 2>::from_data(w.transpose().into_data(), &device).transpose()
                } else {
                    w
                }
            })
            .collect();
        let biases: Vec<Tensor<B, 1>> = case
            .biases
            .iter()
            .map(|b| Tensor::from_data(b.clone(), &device))
            .collect();
        let residual = case
            .residual
            .clone()
            .map(|r| Tensor::<B, 3>::from_data(r, &device) * 0.5);
        let norm = case.norm.clone().map(|w| RowNorm {
            weight: Tensor::from_data(w, &device),
            eps: EPS,
        });
        // Elementwise work on both sides, so under fusion the kernel sits between fused ops.
        let weights = match case.scheme {
            Some(_) => RowWeights::Quantized(&quantized),
            None => RowWeights::Dense(&weights),
        };
        let y = linear_row(x * 2.0, weights, &biases, case.projection, norm, residual);
        (y - 1.0).into_data()
    }

    /// In f64 throughout (the kernels' own rounding is what the comparison measures).
    fn reference(case: &Case) -> Tensor<Flex, 3> {
        use burn::tensor::FloatDType;
        fn wide<const D: usize>(data: &TensorData) -> Tensor<Flex, D> {
            Tensor::<Flex, D>::from_data(data.clone(), &Default::default()).cast(FloatDType::F64)
        }
        let mut x = wide::<3>(&case.x) * 2.0;
        if let Some(w) = &case.norm {
            let rms = (x.clone().square().mean_dim(2) + EPS).sqrt();
            x = x / rms * wide::<1>(w).unsqueeze::<3>();
        }
        let mut outs: Vec<Tensor<Flex, 3>> = effective_weights(&case.weights, case.scheme)
            .iter()
            .map(|w| x.clone().matmul(wide::<2>(w).unsqueeze()))
            .collect();
        for (o, b) in outs.iter_mut().zip(&case.biases) {
            *o = o.clone() + wide::<1>(b).unsqueeze();
        }
        let y = match case.projection {
            RowProjection::Concat => Tensor::cat(outs, 2),
            RowProjection::SwiGlu => silu(outs[0].clone()) * outs[1].clone(),
        };
        let y = match &case.residual {
            Some(r) => y + wide::<3>(r) * 0.5,
            None => y,
        };
        (y - 1.0).cast(FloatDType::F32)
    }

    let cpu = Default::default();
    let normal = |shape: &[usize]| match shape.len() {
        1 => {
            Tensor::<Flex, 1>::random([shape[0]], Distribution::Normal(0.0, 1.0), &cpu).into_data()
        }
        2 => Tensor::<Flex, 2>::random([shape[0], shape[1]], Distribution::Normal(0.0, 1.0), &cpu)
            .into_data(),
        _ => Tensor::<Flex, 3>::random(
            [shape[0], shape[1], shape[2]],
            Distribution::Normal(0.0, 1.0),
            &cpu,
        )
        .into_data(),
    };
    let cases = [
        // q/k/v of a Qwen2 layer after its input norm, shrunk: 37 → 40 | 8 | 8 with biases.
        Case {
            x: normal(&[1, 1, 37]),
            weights: vec![normal(&[37, 40]), normal(&[37, 8]), normal(&[37, 8])],
            biases: vec![normal(&[40]), normal(&[8]), normal(&[8])],
            residual: None,
            projection: RowProjection::Concat,
            transposed: false,
            norm: Some(normal(&[37])),
            scheme: None,
        },
        // o_proj / down_proj: one projection and the residual.
        Case {
            x: normal(&[1, 1, 70]),
            weights: vec![normal(&[70, 33])],
            biases: vec![],
            residual: Some(normal(&[1, 1, 33])),
            projection: RowProjection::Concat,
            transposed: false,
            norm: None,
            scheme: None,
        },
        // gate/up after the post-attention norm.
        Case {
            x: normal(&[1, 1, 33]),
            weights: vec![normal(&[33, 70]), normal(&[33, 70])],
            biases: vec![],
            residual: None,
            projection: RowProjection::SwiGlu,
            transposed: false,
            norm: Some(normal(&[33])),
            scheme: None,
        },
        // gate/up without the norm.
        Case {
            x: normal(&[1, 1, 33]),
            weights: vec![normal(&[33, 70]), normal(&[33, 70])],
            biases: vec![],
            residual: None,
            projection: RowProjection::SwiGlu,
            transposed: false,
            norm: None,
            scheme: None,
        },
        // Two projections with biases, weights as transposed views.
        Case {
            x: normal(&[1, 1, 300]),
            weights: vec![normal(&[300, 17]), normal(&[300, 20])],
            biases: vec![normal(&[17]), normal(&[20])],
            residual: Some(normal(&[1, 1, 37])),
            projection: RowProjection::Concat,
            transposed: true,
            norm: None,
            scheme: None,
        },
        // The final norm and a tied LM head in three vocabulary blocks (transposed views), a
        // row longer than a cube's threads.
        Case {
            x: normal(&[1, 1, 2500]),
            weights: vec![
                normal(&[2500, 50]),
                normal(&[2500, 50]),
                normal(&[2500, 21]),
            ],
            biases: vec![],
            residual: None,
            projection: RowProjection::Concat,
            transposed: true,
            norm: Some(normal(&[2500])),
            scheme: None,
        },
        // Quantized: q/k/v after the norm (q8, groups of 64), 128 → 48 | 16 | 16 with biases.
        Case {
            x: normal(&[1, 1, 128]),
            weights: vec![normal(&[128, 48]), normal(&[128, 16]), normal(&[128, 16])],
            biases: vec![normal(&[48]), normal(&[16]), normal(&[16])],
            residual: None,
            projection: RowProjection::Concat,
            transposed: false,
            norm: Some(normal(&[128])),
            scheme: Some(Quantization::Q8),
        },
        // o_proj / down_proj at q4 in groups of 32, an output width off the cube's 16.
        Case {
            x: normal(&[1, 1, 320]),
            weights: vec![normal(&[320, 33])],
            biases: vec![],
            residual: Some(normal(&[1, 1, 33])),
            projection: RowProjection::Concat,
            transposed: false,
            norm: None,
            scheme: Some("q4g32".parse().unwrap()),
        },
        // gate/up after the norm at q4.
        Case {
            x: normal(&[1, 1, 192]),
            weights: vec![normal(&[192, 70]), normal(&[192, 70])],
            biases: vec![],
            residual: None,
            projection: RowProjection::SwiGlu,
            transposed: false,
            norm: Some(normal(&[192])),
            scheme: Some(Quantization::Q4),
        },
        // gate/up without the norm, q8 in groups of 128.
        Case {
            x: normal(&[1, 1, 256]),
            weights: vec![normal(&[256, 40]), normal(&[256, 40])],
            biases: vec![],
            residual: None,
            projection: RowProjection::SwiGlu,
            transposed: false,
            norm: None,
            scheme: Some("q8g128".parse().unwrap()),
        },
        // The final norm and a quantized LM head in three vocabulary blocks, rows of more words
        // than a cube has threads per column.
        Case {
            x: normal(&[1, 1, 1280]),
            weights: vec![
                normal(&[1280, 50]),
                normal(&[1280, 50]),
                normal(&[1280, 21]),
            ],
            biases: vec![],
            residual: None,
            projection: RowProjection::Concat,
            transposed: false,
            norm: Some(normal(&[1280])),
            scheme: Some(Quantization::Q4),
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let want = reference(case);
        for (backend, got) in [
            ("fused", run::<Wgpu<f32>>(case)),
            ("bare", run::<Bare>(case)),
        ] {
            let err = rel_l2(Tensor::<Flex, 3>::from_data(got, &cpu), want.clone());
            assert!(err <= 1e-6, "case {i} on {backend}: rel-L2 {err:.3e}");
        }
        // The output follows the input row.
        let moved = Case {
            x: normal(&case.x.shape),
            weights: case.weights.clone(),
            biases: case.biases.clone(),
            residual: case.residual.clone(),
            projection: case.projection,
            transposed: case.transposed,
            norm: case.norm.clone(),
            scheme: case.scheme,
        };
        let moved = rel_l2(
            Tensor::<Flex, 3>::from_data(run::<Wgpu<f32>>(&moved), &cpu),
            want.clone(),
        );
        assert!(moved > 1e-3, "case {i}: output ignores x ({moved:.3e})");
        // And the norm's weight.
        if let Some(w) = &case.norm {
            let moved = Case {
                x: case.x.clone(),
                weights: case.weights.clone(),
                biases: case.biases.clone(),
                residual: case.residual.clone(),
                projection: case.projection,
                transposed: case.transposed,
                norm: Some(normal(&w.shape)),
                scheme: case.scheme,
            };
            let moved = rel_l2(
                Tensor::<Flex, 3>::from_data(run::<Wgpu<f32>>(&moved), &cpu),
                want.clone(),
            );
            assert!(
                moved > 1e-3,
                "case {i}: output ignores the norm ({moved:.3e})"
            );
        }
    }
}

/// The RMS norm (`ops::rms_norm`, one kernel on wgpu) against the same op on the CPU (burn's
/// ops): a decoding step's row, prefill rows wider than the kernel's threads, and a
/// strided input; through burn's fusion and on the bare backend.
#[test]
fn wgpu_rms_norm_kernel_matches_burn() {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use burn::tensor::backend::Backend;

    if !adapter(DType::F32) {
        return;
    }
    assert!(runs::<Wgpu<f32>>(Kernel::RmsNorm));

    fn run<B: Backend>(x: &TensorData, w: &TensorData, transposed: bool) -> TensorData {
        let device = Default::default();
        let mut x = Tensor::<B, 3>::from_data(x.clone(), &device);
        if transposed {
            x = x.swap_dims(1, 2);
        }
        let weight = Tensor::from_data(w.clone(), &device);
        (vlm_kernels::ops::rms_norm(x * 3.0, weight, 1e-6) + 0.5).into_data()
    }

    let cpu = Default::default();
    // (batch, seq, hidden, input given as a transposed view)
    for (i, &(batch, seq, hidden, transposed)) in [
        (1, 1, 896, false),
        (2, 7, 1000, false),
        (1, 5, 300, true),
        (1, 3, 64, false),
    ]
    .iter()
    .enumerate()
    {
        let shape = if transposed {
            [batch, hidden, seq]
        } else {
            [batch, seq, hidden]
        };
        let x = Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, 2.0), &cpu).into_data();
        let w =
            Tensor::<Flex, 1>::random([hidden], Distribution::Normal(1.0, 0.5), &cpu).into_data();
        let want = Tensor::<Flex, 3>::from_data(run::<Flex>(&x, &w, transposed), &cpu);
        for (backend, got) in [
            ("fused", run::<Wgpu<f32>>(&x, &w, transposed)),
            ("bare", run::<Bare>(&x, &w, transposed)),
        ] {
            let err = rel_l2(Tensor::<Flex, 3>::from_data(got, &cpu), want.clone());
            assert!(err <= 1e-5, "case {i} on {backend}: rel-L2 {err:.3e}");
        }
    }
}

/// The rotary embedding and the KV cache write in one launch (`cube::rotary_append`) against
/// `Rope::rotate` and a slice assignment on the CPU: a prefill and a decoding
/// step's shapes with grouped kv heads and strided inputs, the caches written in place when
/// the kernel holds the only reference and copied (the held cache left as it was) when not.
#[test]
fn wgpu_rotary_append_kernel_matches_burn() {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use burn::tensor::backend::Backend;
    use vlm_kernels::cube::rotary_append;
    use vlm_kernels::ops::Rope;

    if !adapter(DType::F32) {
        return;
    }
    assert!(runs::<Wgpu<f32>>(Kernel::Rotary));

    /// `[q, k, v, keys, values]` after the kernel, and the caches as first held when `keep`.
    fn run<B: Backend>(
        data: &[TensorData; 5],
        [cos, sin]: &[TensorData; 2],
        start: usize,
        keep: bool,
    ) -> (Vec<TensorData>, Option<[TensorData; 2]>) {
        let device = Default::default();
        let [q, k, v, keys, values] = data.clone().map(|d| Tensor::<B, 4>::from_data(d, &device));
        // Strided views, as the decoder's heads are.
        let (q, k, v) = (
            q.swap_dims(1, 2).swap_dims(1, 2) * 1.0,
            k.swap_dims(2, 3).swap_dims(2, 3),
            v,
        );
        let (cos, sin) = (
            Tensor::<B, 4>::from_data(cos.clone(), &device),
            Tensor::<B, 4>::from_data(sin.clone(), &device),
        );
        let held = keep.then(|| (keys.clone(), values.clone()));
        let (q, keys, values) = rotary_append(q, k, v, cos, sin, keys, values, start);
        let outputs = vec![q.into_data(), keys.into_data(), values.into_data()];
        (outputs, held.map(|(k, v)| [k.into_data(), v.into_data()]))
    }

    let cpu = Default::default();
    let normal = |shape: [usize; 4]| {
        Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &cpu).into_data()
    };
    // (batch, heads, kv_heads, n, capacity, start, head_dim)
    for (i, &(batch, heads, kv_heads, n, capacity, start, d)) in [
        (1, 4, 2, 9, 20, 0, 64),
        (1, 14, 2, 1, 20, 11, 64),
        (2, 7, 1, 3, 8, 5, 128),
    ]
    .iter()
    .enumerate()
    {
        let tables = [normal([1, 1, n, d]), normal([1, 1, n, d])];
        let data = [
            normal([batch, heads, n, d]),
            normal([batch, kv_heads, n, d]),
            normal([batch, kv_heads, n, d]),
            normal([batch, kv_heads, capacity, d]),
            normal([batch, kv_heads, capacity, d]),
        ];
        let [q, k, v, keys, values] = data.clone().map(|d| Tensor::<Flex, 4>::from_data(d, &cpu));
        let [cos, sin] = tables
            .clone()
            .map(|t| Tensor::<Flex, 4>::from_data(t, &cpu));
        let rope = Rope { cos, sin };
        let range = [0..batch, 0..kv_heads, start..start + n, 0..d];
        let want = [
            rope.rotate(q),
            keys.clone().slice_assign(range.clone(), rope.rotate(k)),
            values.clone().slice_assign(range, v),
        ];
        for keep in [false, true] {
            for (backend, (got, held)) in [
                ("fused", run::<Wgpu<f32>>(&data, &tables, start, keep)),
                ("bare", run::<Bare>(&data, &tables, start, keep)),
            ] {
                for (j, (got, want)) in got.into_iter().zip(&want).enumerate() {
                    let err = rel_l2(Tensor::<Flex, 4>::from_data(got, &cpu), want.clone());
                    assert!(
                        err <= 1e-6,
                        "case {i} output {j} on {backend}: rel-L2 {err:.3e}"
                    );
                }
                if let Some([k, v]) = held {
                    // A cache someone else holds is not written: the kernel copied it.
                    k.assert_eq(&data[3], true);
                    v.assert_eq(&data[4], true);
                }
            }
        }
    }
}

/// A decoding step's attention inputs in one launch (`cube::qkv_rotary_append`: the
/// input norm, q/k/v with biases, the rotation, the KV cache write) against burn's ops on the
/// CPU: grouped kv heads, head sizes 16, 64 and 128, the first and the last cache position,
/// with and without biases and norm, dense and quantized weights (q8, q4, groups of 64 and 32,
/// against the dequantized matrices); through burn's fusion and on the bare backend, in place
/// and with the cache held elsewhere (then copied, the held one unchanged). The reference runs
/// in f64.
#[test]
fn wgpu_qkv_rotary_append_kernel_matches_burn() {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use burn::tensor::backend::Backend;
    use vlm_kernels::cube::{RowWeights, qkv_rotary_append};
    use vlm_kernels::ops::{Rope, RowNorm};
    use vlm_kernels::{Quantization, QuantizedMatrix};

    if !adapter(DType::F32) {
        return;
    }
    assert!(runs::<Wgpu<f32>>(Kernel::QkvRotary));
    const EPS: f64 = 1e-6;

    struct Case {
        x: TensorData,
        weights: [TensorData; 3],
        biases: Option<[TensorData; 3]>,
        norm: Option<TensorData>,
        keys: TensorData,
        values: TensorData,
        start: usize,
        /// cos and sin `[1, 1, 1, d]`.
        rope: [TensorData; 2],
        /// Weights quantized (MLX's `[out, in]`), read by the kernel from their words.
        scheme: Option<Quantization>,
    }

    /// `[q, keys, values]` after the kernel, and the caches as first held when `keep`.
    fn run<B: Backend>(case: &Case, keep: bool) -> (Vec<TensorData>, Option<[TensorData; 2]>) {
        let device = Default::default();
        let x = Tensor::<B, 3>::from_data(case.x.clone(), &device) * 2.0;
        let dense = case
            .weights
            .clone()
            .map(|w| Tensor::<B, 2>::from_data(w, &device));
        let quantized: Vec<QuantizedMatrix<B>> = match case.scheme {
            Some(scheme) => case
                .weights
                .iter()
                .map(|w| QuantizedMatrix::upload(&quantize_transposed(w, scheme), &device))
                .collect(),
            None => Vec::new(),
        };
        let weights = match case.scheme {
            Some(_) => RowWeights::Quantized(&quantized),
            None => RowWeights::Dense(&dense),
        };
        let biases = case
            .biases
            .clone()
            .map(|b| b.map(|b| Tensor::<B, 1>::from_data(b, &device)));
        let norm = case.norm.clone().map(|w| RowNorm {
            weight: Tensor::from_data(w, &device),
            eps: EPS,
        });
        let keys = Tensor::<B, 4>::from_data(case.keys.clone(), &device);
        let values = Tensor::<B, 4>::from_data(case.values.clone(), &device);
        let [cos, sin] = case
            .rope
            .clone()
            .map(|t| Tensor::<B, 4>::from_data(t, &device));
        let held = keep.then(|| (keys.clone(), values.clone()));
        let (q, keys, values) = qkv_rotary_append(
            x,
            weights,
            biases,
            norm,
            (cos, sin),
            keys,
            values,
            case.start,
        );
        let outputs = vec![q.into_data(), keys.into_data(), values.into_data()];
        (outputs, held.map(|(k, v)| [k.into_data(), v.into_data()]))
    }

    /// In f64 throughout (the kernel's own rounding is what the comparison measures).
    fn reference(case: &Case) -> [Tensor<Flex, 4>; 3] {
        use burn::tensor::FloatDType;
        fn wide<const D: usize>(data: &TensorData) -> Tensor<Flex, D> {
            Tensor::<Flex, D>::from_data(data.clone(), &Default::default()).cast(FloatDType::F64)
        }
        let mut x = wide::<3>(&case.x) * 2.0;
        if let Some(w) = &case.norm {
            let rms = (x.clone().square().mean_dim(2) + EPS).sqrt();
            x = x / rms * wide::<1>(w).unsqueeze::<3>();
        }
        let d = case.rope[0].shape[3];
        let weights = effective_weights(&case.weights, case.scheme);
        let [q, k, v] = std::array::from_fn(|i| {
            let mut y = x.clone().matmul(wide::<2>(&weights[i]).unsqueeze());
            if let Some(b) = &case.biases {
                y = y + wide::<1>(&b[i]).unsqueeze();
            }
            let width = y.dims()[2];
            y.reshape([1, 1, width / d, d]).swap_dims(1, 2)
        });
        let [cos, sin] = case.rope.each_ref().map(wide::<4>);
        let rope = Rope { cos, sin };
        let keys = wide::<4>(&case.keys);
        let values = wide::<4>(&case.values);
        let kv_heads = keys.dims()[1];
        let range = [0..1, 0..kv_heads, case.start..case.start + 1, 0..d];
        [
            rope.rotate(q),
            keys.slice_assign(range.clone(), rope.rotate(k)),
            values.slice_assign(range, v),
        ]
        .map(|t| t.cast(FloatDType::F32))
    }

    let cpu = Default::default();
    let normal = |shape: &[usize]| {
        let dist = Distribution::Normal(0.0, 1.0);
        match *shape {
            [a] => Tensor::<Flex, 1>::random([a], dist, &cpu).into_data(),
            [a, b] => Tensor::<Flex, 2>::random([a, b], dist, &cpu).into_data(),
            [a, b, c] => Tensor::<Flex, 3>::random([a, b, c], dist, &cpu).into_data(),
            [a, b, c, e] => Tensor::<Flex, 4>::random([a, b, c, e], dist, &cpu).into_data(),
            _ => unreachable!(),
        }
    };
    let case = |hidden: usize,
                heads: usize,
                kv_heads: usize,
                d: usize,
                capacity: usize,
                start: usize,
                bias: bool,
                norm: bool,
                scheme: Option<Quantization>| Case {
        x: normal(&[1, 1, hidden]),
        weights: [
            normal(&[hidden, heads * d]),
            normal(&[hidden, kv_heads * d]),
            normal(&[hidden, kv_heads * d]),
        ],
        biases: bias.then(|| {
            [
                normal(&[heads * d]),
                normal(&[kv_heads * d]),
                normal(&[kv_heads * d]),
            ]
        }),
        norm: norm.then(|| normal(&[hidden])),
        keys: normal(&[1, kv_heads, capacity, d]),
        values: normal(&[1, kv_heads, capacity, d]),
        start,
        rope: [normal(&[1, 1, 1, d]), normal(&[1, 1, 1, d])],
        scheme,
    };
    let cases = [
        // 0.5B's grouping (14 heads over 2), shrunk.
        case(37, 4, 2, 64, 20, 11, true, true, None),
        // 7B's head size, one kv head, the last cache position.
        case(96, 7, 1, 128, 8, 7, true, true, None),
        // Small heads, no grouping, no biases, no norm, the first position.
        case(40, 2, 2, 16, 5, 0, false, false, None),
        // The same three quantized: q8 and q4 in groups of 64, q4 in groups of 32.
        case(128, 4, 2, 64, 20, 11, true, true, Some(Quantization::Q8)),
        case(192, 7, 1, 128, 8, 7, true, true, Some(Quantization::Q4)),
        case(
            64,
            2,
            2,
            16,
            5,
            0,
            false,
            false,
            Some("q4g32".parse().unwrap()),
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        let want = reference(case);
        for keep in [false, true] {
            for (backend, (got, held)) in [
                ("fused", run::<Wgpu<f32>>(case, keep)),
                ("bare", run::<Bare>(case, keep)),
            ] {
                for (j, (got, want)) in got.into_iter().zip(&want).enumerate() {
                    let err = rel_l2(Tensor::<Flex, 4>::from_data(got, &cpu), want.clone());
                    assert!(
                        err <= 1e-6,
                        "case {i} output {j} on {backend}: rel-L2 {err:.3e}"
                    );
                }
                if let Some([k, v]) = held {
                    k.assert_eq(&case.keys, true);
                    v.assert_eq(&case.values, true);
                }
            }
        }
        // The queries and the written keys follow the input row.
        let moved = Case {
            x: normal(&case.x.shape),
            weights: case.weights.clone(),
            biases: case.biases.clone(),
            norm: case.norm.clone(),
            keys: case.keys.clone(),
            values: case.values.clone(),
            start: case.start,
            rope: case.rope.clone(),
            scheme: case.scheme,
        };
        let (got, _) = run::<Wgpu<f32>>(&moved, false);
        for (j, got) in got.into_iter().enumerate() {
            let moved = rel_l2(Tensor::<Flex, 4>::from_data(got, &cpu), want[j].clone());
            assert!(moved > 1e-4, "case {i} output {j}: ignores x ({moved:.3e})");
        }
    }
}

/// burn 0.21's double-buffered matmuls (cubek-matmul 0.2.0) run an even number of k-stages: for
/// k an odd multiple of the stage's k (8 here, 32 or 64 on GPUs) the last one read past the
/// operands into the sum (rel-L2 0.25–0.95), and autotune picks them by timing alone, so a run
/// was right or wrong by chance (the tiny FastViTHD's 8 → 32 ConvFFN at f16: 1.48e-1). The
/// workspace patches cubek-matmul (`third_party/cubek-matmul/PATCH.md`); this launches each
/// double-buffered unit routine on the k that failed and on k that never did.
#[test]
fn wgpu_double_buffered_matmul_sums_only_k() {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
    use cubek::matmul::launch::{Strategy, launch_ref};
    use cubek::matmul::routines::double_unit::DoubleUnitSelectionArgs;
    use cubek::matmul::routines::{BlueprintStrategy, TileSizeSelection};
    use cubek::std::InputBinding;

    if !adapter(DType::F32) {
        return;
    }
    let (device, gpu) = (Default::default(), Default::default());
    let (m, n) = (1024, 64);
    // Either operand row-major or a transposed view (a 1×1 convolution's pixels × channels is
    // the transposed view of its NCHW map).
    let upload = |t: &Tensor<Flex, 2>, transposed: bool| {
        if transposed {
            let t = Tensor::<Bare, 2>::from_data(t.clone().transpose().to_data(), &gpu);
            t.transpose()
        } else {
            Tensor::<Bare, 2>::from_data(t.to_data(), &gpu)
        }
    };
    let mut failures = Vec::new();
    for k in [8, 24, 40, 56, 104, 16, 48, 96] {
        let lhs = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let rhs = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        let expected = lhs.clone().matmul(rhs.clone());
        for (tile_size, lhs_t, rhs_t) in [false, true].into_iter().flat_map(|a| {
            [false, true].into_iter().flat_map(move |b| {
                [
                    TileSizeSelection::MinTileSize,
                    TileSizeSelection::MaxTileSize,
                ]
                .map(|tile| (tile, a, b))
            })
        }) {
            let strategy =
                Strategy::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs {
                    tile_size,
                }));
            let (a, b) = (
                upload(&lhs, lhs_t).into_primitive().tensor(),
                upload(&rhs, rhs_t).into_primitive().tensor(),
            );
            let out = Tensor::<Bare, 2>::zeros([m, n], &gpu);
            let out_primitive = out.clone().into_primitive().tensor();
            let client = out_primitive.client.clone();
            let f32_type = a.dtype.into();
            let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
                lhs: f32_type,
                rhs: f32_type,
                out: f32_type,
            });
            let case =
                format!("{strategy}, k = {k}, lhs transposed {lhs_t}, rhs transposed {rhs_t}");
            launch_ref(
                &strategy,
                &client,
                InputBinding::new(a.binding(), f32_type),
                InputBinding::new(b.binding(), f32_type),
                out_primitive.binding(),
                &mut dtypes,
            )
            .unwrap_or_else(|e| panic!("{case}: {e:?}"));
            let got = Tensor::<Flex, 2>::from_data(out.into_data(), &device);
            let err = rel_l2(got, expected.clone());
            println!("{case}: rel-L2 {err:.3e}");
            if err > 1e-5 {
                failures.push(format!("{case}: rel-L2 {err:.3e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Quantized weights on wgpu (burn's integer ops dequantize them for the product: MLX's layout
/// in a `u32` tensor, shifts and masks per value) within 1e-6 of flex's product from the packed
/// words, at 8 and 4 bits, for one row (a decoding step) and for a prefill's rows; the
/// dequantized matrix itself equal to the host's; a bias added as `Linear::forward` does; a
/// batched vocabulary-table lookup through `select_rows`.
#[test]
fn wgpu_quantized_linear_matches_flex() {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use vlm_kernels::quant::{ScaleType, quantize};
    use vlm_kernels::{Linear, Quantization, QuantizedMatrix};

    if !adapter(DType::F32) {
        return;
    }
    let flex = Default::default();
    let gpu = Default::default();
    for scheme in [Quantization::Q8, Quantization::Q4] {
        let (rows, cols) = (300, 640);
        let w = Tensor::<Flex, 2>::random([rows, cols], Distribution::Normal(0.0, 0.05), &flex)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let host = quantize(&w, rows, cols, scheme, ScaleType::F32);
        let bias = Tensor::<Flex, 1>::random([rows], Distribution::Normal(0.0, 0.1), &flex);
        let on_flex = Linear::quantized(
            QuantizedMatrix::<Flex>::upload(&host, &flex),
            Some(bias.clone()),
        );
        let on_gpu = Linear::quantized(
            QuantizedMatrix::<Wgpu<f32>>::upload(&host, &gpu),
            Some(Tensor::from_data(bias.into_data(), &gpu)),
        );
        let q = on_gpu.quantized_weight().unwrap();
        assert_eq!(q.packed.val().dtype(), DType::U32);
        q.dequantize()
            .into_data()
            .assert_eq(&TensorData::new(host.dequantize(), [rows, cols]), true);
        for n in [1, 37] {
            let x = Tensor::<Flex, 3>::random([1, n, cols], Distribution::Normal(0.0, 1.0), &flex);
            let want = on_flex.forward(x.clone());
            let got = on_gpu.forward(Tensor::<Wgpu<f32>, 3>::from_data(x.into_data(), &gpu));
            let got = Tensor::<Flex, 3>::from_data(got.into_data(), &flex);
            let err = rel_l2(got, want);
            assert!(err < 1e-6, "{scheme} with {n} rows: {err}");
        }
        let ids = Tensor::from_data(TensorData::new(vec![299i64, 0, 17], [3]), &gpu);
        let picked = q.select_rows(ids).into_data().into_vec::<f32>().unwrap();
        let dense = host.dequantize();
        for (k, &r) in [299usize, 0, 17].iter().enumerate() {
            assert_eq!(
                picked[k * cols..(k + 1) * cols],
                dense[r * cols..(r + 1) * cols]
            );
        }
    }
}
