//! `xlac quantize`: a Hugging Face checkpoint with its matrices (linear
//! layers, embedding tables, the LM head) in int8 or int4, the forms
//! [`QWEIGHT`](xlac_compiler::frontend::hf::QWEIGHT) and
//! [`QWEIGHT4`](xlac_compiler::frontend::hf::QWEIGHT4) describe, written as
//! a new checkpoint directory that `run`, `generate` and artifacts read like
//! any other. Norms, biases and anything else stay as they were.

use crate::Error;
use std::path::Path;
use xlac_compiler::frontend::hf::{self, QWEIGHT, QWEIGHT4, SCALES};
use xlac_compiler::DType;
use xlac_core::view::convert_floats;
use xlac_runtime::weights::WeightFile;
use xlac_runtime::TensorRef;

/// The largest magnitude an int8 value takes (symmetric: -127..=127).
const INT8_MAX: f32 = 127.0;
/// The largest magnitude an int4 value takes (symmetric: -7..=7).
const INT4_MAX: f32 = 7.0;

/// How the matrices are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bits {
    /// Int8, one scale per output channel.
    Int8,
    /// Int4, one scale per group of this many input columns of a row (32, 64 or 128).
    Int4 { group: usize },
}

/// What a quantization wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeReport {
    /// Matrices stored in int8.
    pub matrices: usize,
    /// Weight bytes of the checkpoint before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// The largest |w − dequantized w| relative to its row's largest |w|, over every matrix.
    pub max_relative_error: f64,
}

/// `w` (`rows × cols`, row-major) quantized per row, symmetric: each row's
/// scale is its largest magnitude over 127 (1 for a row of zeros), its values
/// `w / scale` rounded to nearest, ties to even (`torch.round`), in −127..=127.
pub fn int8_rows(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    symmetric(w, rows, cols, INT8_MAX)
}

/// `w` (`rows × cols`) quantized in groups of `group` columns of a row,
/// symmetric int4 (each group's largest magnitude over 7, values in −7..=7),
/// packed two a byte as v + 8: byte j of a row holds column j in its low
/// nibble and column j + cols/2 in its high one. Returns the bytes
/// (`rows × cols/2`) and the scales (`rows × cols/group`).
pub fn int4_groups(w: &[f32], rows: usize, cols: usize, group: usize) -> (Vec<u8>, Vec<f32>) {
    let (values, scales) = symmetric(w, rows * cols / group, group, INT4_MAX);
    let half = cols / 2;
    let packed = values
        .chunks(cols)
        .flat_map(|row| (0..half).map(move |j| ((row[j] + 8) as u8) | (((row[j + half] + 8) as u8) << 4)))
        .collect();
    (packed, scales)
}

/// `w` split into `chunks` runs of `len`, each scaled by its largest magnitude
/// over `max` (1 for zeros) and rounded to nearest, ties to even, in −max..=max.
fn symmetric(w: &[f32], chunks: usize, len: usize, max: f32) -> (Vec<i8>, Vec<f32>) {
    let mut values = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(chunks);
    for run in w.chunks(len).take(chunks) {
        let largest = run.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = if largest > 0.0 { largest / max } else { 1.0 };
        values.extend(run.iter().map(|x| (x / scale).round_ties_even().clamp(-max, max) as i8));
        scales.push(scale);
    }
    (values, scales)
}

/// Writes the checkpoint in `dir` to `out` (a new or empty directory) with
/// every matrix its model multiplies by in int8 or int4: one
/// `model.safetensors`, config.json with a `quantization_config` saying so,
/// and the tokenizer and generation files as they were. The weights are
/// read through their memory maps and each matrix is quantized as its bytes
/// are written: one matrix at a time is in memory, not the checkpoint.
pub fn quantize_checkpoint(dir: &Path, out: &Path, bits: Bits) -> Result<QuantizeReport, Error> {
    let bad = |message: String| Error::Data { dir: out.into(), message };
    if out.canonicalize().ok().is_some_and(|o| dir.canonicalize().is_ok_and(|d| d == o)) {
        return Err(bad("is the checkpoint itself: write the quantized one elsewhere".into()));
    }
    if out.is_dir() && std::fs::read_dir(out).map_err(|e| bad(e.to_string()))?.next().is_some() {
        return Err(bad("is not empty: give a new directory for the quantized checkpoint".into()));
    }
    let matrices = hf::matrices(dir)?;
    let files: Vec<WeightFile> =
        hf::weight_files(dir)?.iter().map(|f| WeightFile::open(&dir.join(f))).collect::<Result<_, _>>()?;
    let mut report = QuantizeReport { matrices: 0, bytes_before: 0, bytes_after: 0, max_relative_error: 0.0 };
    // Every tensor written (name, dtype, shape) and where its bytes come from, in order.
    let mut entries: Vec<(String, DType, Vec<u64>)> = Vec::new();
    let mut sources: Vec<Source> = Vec::new();
    for weights in &files {
        for name in weights.names() {
            let t = weights.tensor(name)?;
            let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
            report.bytes_before += shape.iter().product::<u64>() * t.ty.size_bytes() as u64;
            let matrix = matrices.iter().find(|m| m.tensor == name).filter(|_| t.ty.is_float() && shape.len() == 2);
            let Some(matrix) = matrix else {
                entries.push((name.to_string(), t.ty, shape));
                sources.push(Source::Stored(t));
                continue;
            };
            let [rows, cols] = if matrix.stored_in_out { [shape[1], shape[0]] } else { [shape[0], shape[1]] };
            let (values, scales) = match bits {
                Bits::Int8 => ((format!("{name}{QWEIGHT}"), DType::I8, vec![rows, cols]), vec![rows]),
                Bits::Int4 { group } => {
                    if cols % (2 * group as u64) != 0 {
                        return Err(bad(format!(
                            "tensor `{name}`: halves of its rows of {cols} do not split into groups of {group} (give another --group)"
                        )));
                    }
                    ((format!("{name}{QWEIGHT4}"), DType::U8, vec![rows, cols / 2]), vec![rows, cols / group as u64])
                }
            };
            report.matrices += 1;
            entries.push(values);
            entries.push((format!("{name}{SCALES}"), DType::F32, scales));
            sources.push(Source::Values { name: name.to_string(), tensor: t, transpose: matrix.stored_in_out });
            sources.push(Source::Scales);
        }
    }
    report.bytes_after = entries.iter().map(|(_, d, s)| s.iter().product::<u64>() * d.size_bytes() as u64).sum();
    std::fs::create_dir_all(out).map_err(|e| bad(format!("cannot create: {e}")))?;
    let refs: Vec<(&str, DType, &[u64])> = entries.iter().map(|(n, d, s)| (n.as_str(), *d, s.as_slice())).collect();
    let weights = out.join("model.safetensors");
    // A matrix's scales are made with its values and written right after them.
    let mut scales = None;
    xlac_core::safetensors::write_each(&weights, &refs, |i| match &sources[i] {
        Source::Stored(t) => Ok(t.dense_bytes()),
        Source::Values { name, tensor, transpose } => {
            let q = quantize_matrix(tensor, *transpose, bits)
                .map_err(|e| std::io::Error::other(format!("tensor `{name}`: {e}")))?;
            report.max_relative_error = report.max_relative_error.max(q.relative_error);
            scales = Some(q.scales.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>());
            Ok(q.values.into())
        }
        Source::Scales => Ok(scales.take().expect("a matrix's scales follow its values").into()),
    })
    .map_err(|e| bad(format!("cannot write {}: {e}", weights.display())))?;
    write_config(dir, out, bits)?;
    for extra in ["generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        if dir.join(extra).is_file() {
            std::fs::copy(dir.join(extra), out.join(extra)).map_err(|e| bad(format!("cannot copy {extra}: {e}")))?;
        }
    }
    Ok(report)
}

/// Where the bytes of a tensor of the quantized checkpoint come from.
enum Source<'w> {
    /// The checkpoint's tensor as it is.
    Stored(TensorRef<'w>),
    /// A matrix's quantized values (`transpose`: stored `[in, out]`).
    Values { name: String, tensor: TensorRef<'w>, transpose: bool },
    /// The scales of the matrix before.
    Scales,
}

/// A matrix quantized: its values' bytes, its scales, and the largest error relative to its rows' largest magnitudes.
struct Quantized {
    values: Vec<u8>,
    scales: Vec<f32>,
    relative_error: f64,
}

/// `t` (`[out, in]`, or `[in, out]` when `transpose`) quantized as `bits`
/// say; besides `t`, the matrix in f32 and its quantized values are all it holds.
fn quantize_matrix(t: &TensorRef, transpose: bool, bits: Bits) -> Result<Quantized, String> {
    let f32s = |bytes: &[u8]| -> Vec<f32> {
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let mut w = match t.ty {
        DType::F32 => f32s(&t.dense_bytes()),
        ty => f32s(&convert_floats(ty, &t.dense_bytes(), DType::F32)?),
    };
    let (mut rows, mut cols) = (t.shape[0], t.shape[1]);
    if transpose {
        w = transposed(&w, rows, cols);
        std::mem::swap(&mut rows, &mut cols);
    }
    Ok(match bits {
        Bits::Int8 => {
            let (values, scales) = int8_rows(&w, rows, cols);
            let relative_error = relative_error(&w, |i| values[i] as f32, &scales, cols, cols);
            Quantized { values: values.into_iter().map(|v| v as u8).collect(), scales, relative_error }
        }
        Bits::Int4 { group } => {
            let (packed, scales) = int4_groups(&w, rows, cols, group);
            let half = cols / 2;
            let value = |i: usize| {
                let (r, c) = (i / cols, i % cols);
                let byte = packed[r * half + c % half];
                (if c < half { byte & 15 } else { byte >> 4 }) as f32 - 8.0
            };
            let relative_error = relative_error(&w, value, &scales, cols, group);
            Quantized { values: packed, scales, relative_error }
        }
    })
}

/// config.json with `quantization_config` naming xlac's int8 or int4 form.
fn write_config(dir: &Path, out: &Path, bits: Bits) -> Result<(), Error> {
    let path = dir.join("config.json");
    let bad = |message: String| Error::Data { dir: path.clone(), message };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    config["quantization_config"] = match bits {
        Bits::Int8 => serde_json::json!({
            "quant_method": "xlac-int8",
            "format": format!("each matrix W as W{QWEIGHT} (int8, [out, in]) and W{SCALES} (f32, [out]), symmetric per output channel"),
        }),
        Bits::Int4 { group } => serde_json::json!({
            "quant_method": "xlac-int4",
            "group_size": group,
            "format": format!("each matrix W as W{QWEIGHT4} (uint8, [out, in/2]: byte j holds column j + 8 in its low nibble, column j + in/2 + 8 in its high one) and W{SCALES} (f32, [out, in/{group}]), symmetric per group"),
        }),
    };
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialize") + "\n";
    std::fs::write(out.join("config.json"), text)
        .map_err(|e| Error::Data { dir: out.into(), message: format!("cannot write config.json: {e}") })
}

fn transposed(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| w[r * cols + c])).collect()
}

/// The largest |w − value(i)·scale| relative to the largest |w| of its row
/// (`cols` wide), each run of `len` values sharing a scale.
fn relative_error(w: &[f32], value: impl Fn(usize) -> f32, scales: &[f32], cols: usize, len: usize) -> f64 {
    let mut worst = 0.0f64;
    for (r, row) in w.chunks(cols).enumerate() {
        let largest = row.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
        if largest == 0.0 {
            continue;
        }
        for (c, &x) in row.iter().enumerate() {
            let i = r * cols + c;
            worst = worst.max((x as f64 - value(i) as f64 * scales[i / len] as f64).abs() / largest);
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_scaled_by_their_largest_magnitude_and_rounded_to_even() {
        // Row 0: scale 254/127 = 2; 3/2 = 1.5 → 2 (even), 1/2 = 0.5 → 0, -254/2 = -127.
        // Row 1: all zeros → scale 1, values 0.
        let (values, scales) = int8_rows(&[3.0, 1.0, -254.0, 0.0, 0.0, 0.0], 2, 3);
        assert_eq!(scales, vec![2.0, 1.0]);
        assert_eq!(values, vec![2, 0, -127, 0, 0, 0]);
    }

    #[test]
    fn the_error_is_at_most_half_a_step() {
        let w: Vec<f32> = (0..64).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let (values, scales) = int8_rows(&w, 4, 16);
        assert!(relative_error(&w, |i| values[i] as f32, &scales, 16, 16) <= 0.5 / 127.0 + 1e-7);
        let data: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = TensorRef::new(DType::F32, &[4, 16], &data).unwrap();
        let int4 = quantize_matrix(&t, false, Bits::Int4 { group: 4 }).unwrap();
        assert!(int4.relative_error > 0.0 && int4.relative_error <= 0.5 / 7.0 + 1e-7, "{}", int4.relative_error);
        // Multiples of a group's largest magnitude / 7 come back exactly, nibbles read from both halves of a row.
        let exact: Vec<f32> = (0..64).map(|i| [7.0, -3.0, 2.0, -7.0][i % 4] * (1 + i / 4 % 3) as f32).collect();
        let data: Vec<u8> = exact.iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = TensorRef::new(DType::F32, &[4, 16], &data).unwrap();
        assert_eq!(quantize_matrix(&t, false, Bits::Int4 { group: 4 }).unwrap().relative_error, 0.0);
        assert_eq!(transposed(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn int4_packs_a_rows_halves_into_the_low_and_high_nibbles() {
        // Groups of 2, each with its own scale: 7, -3.5 → 7, -4 (ties to even); 14, 0 → 7, 0.
        // Stored v + 8: 15, 4, 15, 8; byte j holds columns j (low) and j + 2 (high): 0xFF, 0x84.
        let (packed, scales) = int4_groups(&[7.0, -3.5, 14.0, 0.0], 1, 4, 2);
        assert_eq!(scales, vec![1.0, 2.0]);
        assert_eq!(packed, vec![0xFF, 0x84]);
    }
}
