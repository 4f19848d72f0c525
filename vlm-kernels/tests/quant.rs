//! MLX's affine quantization: the quantizer and dequantizer against `mlx.core` (the fixture of
//! `cargo xtask golden --only quant`), the products on flex against dequantize-then-f32-product,
//! and the loader reading MLX's layout.

use burn::backend::Flex;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use vlm_kernels::loader::{LoadError, Loader, NameMap, Params};
use vlm_kernels::ops::quantized_matmul;
use vlm_kernels::quant::{ScaleType, quantize};
use vlm_kernels::testing::{Fixture, fixtures, rel_l2};
use vlm_kernels::{Activations, Quantization, QuantizedMatrix};

fn mlx() -> Fixture {
    Fixture::open(&fixtures().join("quant/mlx.safetensors"))
}

fn floats(f: &Fixture, name: &str) -> Vec<f32> {
    f.get(name)
        .unwrap_or_else(|| panic!("fixture tensor `{name}`"))
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
}

fn words(f: &Fixture, name: &str) -> Vec<u32> {
    let data = f
        .get(name)
        .unwrap_or_else(|| panic!("fixture tensor `{name}`"));
    assert_eq!(data.dtype, DType::U32, "{name}");
    data.into_vec::<u32>().unwrap()
}

const CASES: [&str; 4] = ["normal", "edges", "heavy", "wide"];

/// Packed words, scales and biases equal MLX's bit for bit, for f32 and bf16 matrices at 4 and 8
/// bits in groups of 32, 64 and 128; MLX's dequantization too (f32: the same two roundings).
#[test]
fn quantize_and_dequantize_equal_mlx() {
    let f = mlx();
    let mut checked = 0;
    for case in CASES {
        for dtype in ["f32", "bf16"] {
            let input = f.get(&format!("{case}.{dtype}.input")).unwrap();
            let [rows, cols] = [input.shape[0], input.shape[1]];
            let values = input.convert::<f32>().into_vec::<f32>().unwrap();
            let stored = if dtype == "bf16" {
                ScaleType::BF16
            } else {
                ScaleType::F32
            };
            for bits in [4, 8] {
                for group in [32, 64, 128] {
                    let key = format!("{case}.{dtype}.q{bits}g{group}");
                    let scheme = Quantization {
                        bits,
                        group_size: group,
                    };
                    let q = quantize(&values, rows, cols, scheme, stored);
                    q.check().unwrap();
                    assert_eq!(q.packed, words(&f, &format!("{key}.weight")), "{key} words");
                    let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits_of(&q.scales),
                        bits_of(&floats(&f, &format!("{key}.scales"))),
                        "{key} scales"
                    );
                    assert_eq!(
                        bits_of(&q.biases),
                        bits_of(&floats(&f, &format!("{key}.biases"))),
                        "{key} biases"
                    );
                    if dtype == "f32" {
                        assert_eq!(
                            bits_of(&q.dequantize()),
                            bits_of(&floats(&f, &format!("{key}.dequantized"))),
                            "{key} dequantized"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 48);
}

/// The device form: uploaded and read back unchanged; dequantized by burn's integer ops (the
/// path of every backend but flex) exactly as on the host; a row and selected rows as the
/// matrix's.
#[test]
fn device_dequantization_equals_the_host() {
    let f = mlx();
    let device = Default::default();
    for (bits, group) in [(4, 64), (8, 64), (4, 32), (8, 128)] {
        let input = floats(&f, "heavy.f32.input");
        let scheme = Quantization {
            bits,
            group_size: group,
        };
        let host = quantize(&input, 6, 256, scheme, ScaleType::F32);
        let q = QuantizedMatrix::<Flex>::upload(&host, &device);
        assert_eq!(q.to_host(), host);
        assert_eq!([q.rows(), q.cols()], [6, 256]);
        let want =
            Tensor::<Flex, 2>::from_data(TensorData::new(host.dequantize(), [6, 256]), &device);
        q.dequantize().into_data().assert_eq(&want.to_data(), true);
        q.row(4)
            .into_data()
            .assert_eq(&want.clone().narrow(0, 4, 1).to_data(), true);
        let ids = Tensor::from_data(TensorData::new(vec![5i64, 0, 5, 2], [4]), &device);
        q.select_rows(ids.clone())
            .into_data()
            .assert_eq(&want.select(0, ids).to_data(), true);
    }
}

fn random<const D: usize>(shape: [usize; D], std: f64) -> Tensor<Flex, D> {
    Tensor::random(shape, Distribution::Normal(0.0, std), &Default::default())
}

/// The flex products (matrix–vector for up to four rows, tiles + gemm beyond) within 1e-6 of the
/// f32 product with the dequantized matrix, at both widths and group sizes, for shapes that
/// are not multiples of the tasks' blocks; each input moves the output.
#[test]
fn flex_products_equal_dequantize_then_matmul() {
    let device = Default::default();
    for (bits, group) in [(4, 64), (8, 64), (4, 32), (8, 128)] {
        let scheme = Quantization {
            bits,
            group_size: group,
        };
        for (rows, cols) in [(200, 896), (37, 128), (1000, 4864)] {
            let w = random([rows, cols], 0.05)
                .into_data()
                .into_vec::<f32>()
                .unwrap();
            let host = quantize(&w, rows, cols, scheme, ScaleType::F32);
            let q = QuantizedMatrix::<Flex>::upload(&host, &device);
            let dense = Tensor::<Flex, 2>::from_data(
                TensorData::new(host.dequantize(), [rows, cols]),
                &device,
            );
            for m in [1, 2, 4, 5, 37] {
                let x = random([m, cols], 1.0);
                let want = x.clone().matmul(dense.clone().transpose());
                let got = quantized_matmul(x.clone(), &q);
                let err = rel_l2(got.clone(), want);
                assert!(err < 1e-6, "q{bits}g{group} {rows}×{cols}, {m} rows: {err}");
                let moved = rel_l2(quantized_matmul(x.clone() * 0.5 + 0.3, &q), got.clone());
                assert!(moved > 0.1, "the input does not move the output ({moved})");
                // Batched shapes read the same rows.
                let x3 = x.clone().reshape([1, m, cols]);
                let got3 = quantized_matmul(x3, &q).reshape([m, rows]);
                assert!(rel_l2(got3, got) < 1e-7);
            }
            // The quantized product is close to the unquantized one: 8 bits closer than 4.
            let x = random([1, cols], 1.0);
            let full = Tensor::<Flex, 2>::from_data(TensorData::new(w, [rows, cols]), &device);
            let err = rel_l2(quantized_matmul(x.clone(), &q), x.matmul(full.transpose()));
            let bound = if bits == 8 { 0.01 } else { 0.15 };
            assert!(err < bound && err > 0.0, "q{bits}: {err} from f32");
        }
    }
}

/// With the activations rounded to int8 ([`Activations::Int8`]), a decoding step's product
/// (up to four rows) stays within the rounding of `x` of the exact one (a few tenths of a
/// percent), differs from it, and moves with the input; more rows take the exact path.
#[test]
fn flex_int8_activations_stay_near_the_exact_product() {
    let device = Default::default();
    for (bits, group) in [(4, 64), (8, 64), (4, 32), (8, 128), (4, 128), (8, 32)] {
        let scheme = Quantization {
            bits,
            group_size: group,
        };
        // 96 columns: no SIMD kernel's step divides it at 4 bits (the portable loop runs).
        for (rows, cols) in [(200, 896), (37, 128), (61, 4864), (37, 96)] {
            if !scheme.fits(cols) {
                continue;
            }
            let w = random([rows, cols], 0.05)
                .into_data()
                .into_vec::<f32>()
                .unwrap();
            let host = quantize(&w, rows, cols, scheme, ScaleType::F32);
            let exact = QuantizedMatrix::<Flex>::upload(&host, &device);
            let rounded =
                QuantizedMatrix::<Flex>::upload(&host, &device).with_activations(Activations::Int8);
            for m in [1, 3, 5] {
                let x = random([m, cols], 1.0);
                let want = quantized_matmul(x.clone(), &exact);
                let got = quantized_matmul(x.clone(), &rounded);
                let err = rel_l2(got.clone(), want.clone());
                if m <= 4 {
                    assert!(
                        err < 0.01 && err > 0.0,
                        "q{bits}g{group} {rows}×{cols}, {m} rows: {err} from the exact product"
                    );
                    let moved = rel_l2(
                        quantized_matmul(x.clone() * 0.5 + 0.3, &rounded),
                        got.clone(),
                    );
                    assert!(moved > 0.1, "the input does not move the output ({moved})");
                } else {
                    assert!(err < 1e-7, "a prefill takes the exact path: {err}");
                }
            }
        }
    }
}

/// Several matrices side by side in one pass (`flex::quantized_rows`: a layer's q, k, v with
/// biases, or gate and up without) equal each matrix's own product plus its bias bit for bit,
/// with f32 and int8 activations, for one row and a few; mixed schemes or activations, and more
/// than a few rows, are handed back.
#[test]
fn flex_stacked_products_equal_each_product() {
    use vlm_kernels::flex::{MATVEC_ROWS, quantized_rows};
    let device = Default::default();
    for (bits, group) in [(4, 64), (8, 64), (4, 32)] {
        let scheme = Quantization {
            bits,
            group_size: group,
        };
        let cols = 896;
        for activations in [Activations::F32, Activations::Int8] {
            let make = |rows: usize| {
                let w = random([rows, cols], 0.05)
                    .into_data()
                    .into_vec::<f32>()
                    .unwrap();
                let host = quantize(&w, rows, cols, scheme, ScaleType::F32);
                QuantizedMatrix::<Flex>::upload(&host, &device).with_activations(activations)
            };
            let matrices = [make(896), make(128), make(96)];
            let biases = [
                Some(random([896], 1.0)),
                Some(random([128], 1.0)),
                Some(random([96], 1.0)),
            ];
            for (with_bias, m) in [(true, 1), (false, 1), (true, MATVEC_ROWS)] {
                let x = random([1, m, cols], 1.0);
                let parts: Vec<_> = matrices
                    .iter()
                    .zip(&biases)
                    .map(|(w, b)| (w, b.clone().filter(|_| with_bias)))
                    .collect();
                let got = quantized_rows(x.clone(), &parts).expect("flex f32");
                assert_eq!(got.dims(), [1, m, 896 + 128 + 96]);
                let want = Tensor::cat(
                    parts
                        .iter()
                        .map(|(w, b)| {
                            let y = quantized_matmul(x.clone(), w);
                            match b {
                                Some(b) => y + b.clone().unsqueeze::<3>(),
                                None => y,
                            }
                        })
                        .collect(),
                    2,
                );
                got.into_data().assert_eq(&want.into_data(), true);
            }
            let x = random([1, MATVEC_ROWS + 1, cols], 1.0);
            let two: Vec<_> = matrices[..2].iter().map(|w| (w, None)).collect();
            assert!(quantized_rows(x, &two).is_err(), "a prefill stacks nothing");
        }
        let x = random([1, 1, 896], 1.0);
        let f32s = make_one(scheme, Activations::F32);
        let int8 = make_one(scheme, Activations::Int8);
        let other = make_one(
            Quantization {
                bits: 12 - bits,
                group_size: group,
            },
            Activations::F32,
        );
        assert!(quantized_rows(x.clone(), &[(&f32s, None), (&int8, None)]).is_err());
        assert!(quantized_rows(x, &[(&f32s, None), (&other, None)]).is_err());
    }
}

fn make_one(scheme: Quantization, activations: Activations) -> QuantizedMatrix<Flex> {
    let w = random([64, 896], 0.05)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let host = quantize(&w, 64, 896, scheme, ScaleType::F32);
    QuantizedMatrix::<Flex>::upload(&host, &Default::default()).with_activations(activations)
}

/// MLX's layout (`.weight` uint32, `.scales`, `.biases`) loads as a quantized linear layer
/// through a name map, with the bits and group size read from the shapes; quantizing at load
/// gives the same layer; broken layouts are refused naming the tensor.
#[test]
fn loader_reads_mlx_layout_and_quantizes_at_load() {
    let f = mlx();
    let device = burn::backend::flex::FlexDevice;
    let values = floats(&f, "normal.f32.input");
    let stored = |key: &str, name: &str| -> Vec<(String, TensorData)> {
        vec![
            (
                format!("{name}.weight"),
                f.get(&format!("{key}.weight")).unwrap(),
            ),
            (
                format!("{name}.scales"),
                f.get(&format!("{key}.scales")).unwrap(),
            ),
            (
                format!("{name}.biases"),
                f.get(&format!("{key}.biases")).unwrap(),
            ),
        ]
    };
    let names = NameMap::new("language_model.", &[]);
    for (bits, group) in [(4, 64), (8, 32)] {
        let key = format!("normal.f32.q{bits}g{group}");
        let tensors = stored(&key, "language_model.l");
        let mut source = |n: &str| tensors.iter().find(|(k, _)| k == n).map(|(_, d)| d.clone());
        let mut loader = Loader::<Flex>::new(&mut source, &names, &device);
        let linear = loader.linear("l", 256, 6, false).unwrap();
        let q = linear.quantized_weight().expect("loaded quantized");
        assert_eq!(
            q.scheme(),
            Quantization {
                bits,
                group_size: group
            }
        );
        let want = quantize(&values, 6, 256, q.scheme(), ScaleType::F32);
        assert_eq!(q.to_host(), want);

        // The same from the f32 matrix, quantized as it loads.
        let dense = [(
            "language_model.l.weight".to_string(),
            f.get("normal.f32.input").unwrap(),
        )];
        let mut source = |n: &str| dense.iter().find(|(k, _)| k == n).map(|(_, d)| d.clone());
        let mut loader =
            Loader::<Flex>::new(&mut source, &names, &device).with_quantization(Some(q.scheme()));
        let at_load = loader.linear_quantizable("l", 256, 6, false).unwrap();
        assert_eq!(at_load.quantized_weight().unwrap().to_host(), want);
        let plain = loader.linear("l", 256, 6, false).unwrap();
        assert!(
            plain.quantized_weight().is_none(),
            "`linear` keeps f32 weights f32"
        );
        let x = random([3, 256], 1.0);
        let err = rel_l2(at_load.forward(x.clone()), linear.forward(x));
        assert!(err < 1e-6, "{err}");
    }

    // Words that fit no scheme, scales of the wrong rows, floats where words belong.
    let mut broken = stored("normal.f32.q4g64", "language_model.l");
    broken[0].1 = TensorData::new(vec![0u32; 6 * 24], [6, 24]);
    let mut source = |n: &str| broken.iter().find(|(k, _)| k == n).map(|(_, d)| d.clone());
    let err = Loader::<Flex>::new(&mut source, &names, &device)
        .linear("l", 256, 6, false)
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::Config(m) if m.contains("language_model.l.weight")),
        "{err}"
    );
    let mut broken = stored("normal.f32.q4g64", "language_model.l");
    broken[0].1 = TensorData::new(vec![0.5f32; 6 * 32], [6, 32]);
    let mut source = |n: &str| broken.iter().find(|(k, _)| k == n).map(|(_, d)| d.clone());
    let err = Loader::<Flex>::new(&mut source, &names, &device)
        .linear("l", 256, 6, false)
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::DType { name, .. } if name == "language_model.l.weight"),
        "{err}"
    );
    let mut broken = stored("normal.f32.q4g64", "language_model.l");
    broken[1].1 = TensorData::new(vec![0.5f32; 5 * 4], [5, 4]);
    let mut source = |n: &str| broken.iter().find(|(k, _)| k == n).map(|(_, d)| d.clone());
    let err = Loader::<Flex>::new(&mut source, &names, &device)
        .linear("l", 256, 6, false)
        .unwrap_err();
    assert!(err.to_string().contains("language_model.l"), "{err}");
}

/// Schemes parse from the CLI's names and refuse others.
#[test]
fn schemes_parse() {
    assert_eq!("q4".parse::<Quantization>().unwrap(), Quantization::Q4);
    assert_eq!("q8".parse::<Quantization>().unwrap(), Quantization::Q8);
    assert_eq!(
        "q4g32".parse::<Quantization>().unwrap(),
        Quantization {
            bits: 4,
            group_size: 32
        }
    );
    assert_eq!(Quantization::Q4.to_string(), "q4");
    for bad in ["q3", "int4", "q4g48", "", "q"] {
        assert!(bad.parse::<Quantization>().is_err(), "{bad}");
    }
    assert_eq!("int8".parse::<Activations>().unwrap(), Activations::Int8);
    assert_eq!("f32".parse::<Activations>().unwrap(), Activations::F32);
    assert_eq!(Activations::Int8.to_string(), "int8");
    for bad in ["int4", "", "F32x"] {
        let e = bad.parse::<Activations>().unwrap_err();
        assert!(e.contains("unknown activations"), "{bad}: {e}");
    }
}
