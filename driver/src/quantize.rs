//! `xlac quantize`: a Hugging Face checkpoint with its matrices (linear
//! layers, embedding tables, the LM head) in int8, the form
//! [`QWEIGHT`](xlac_compiler::frontend::hf::QWEIGHT) describes, written as
//! a new checkpoint directory that `run`, `generate` and artifacts read like
//! any other. Norms, biases and anything else stay as they were.

use crate::Error;
use std::path::Path;
use xlac_compiler::frontend::hf::{self, QWEIGHT, SCALES};
use xlac_compiler::DType;
use xlac_core::view::convert_floats;
use xlac_runtime::weights::WeightFile;

/// The largest magnitude an int8 value takes (symmetric: -127..=127).
const INT8_MAX: f32 = 127.0;

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
    let mut values = Vec::with_capacity(rows * cols);
    let mut scales = Vec::with_capacity(rows);
    for row in w.chunks(cols).take(rows) {
        let largest = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = if largest > 0.0 { largest / INT8_MAX } else { 1.0 };
        values.extend(row.iter().map(|x| (x / scale).round_ties_even().clamp(-INT8_MAX, INT8_MAX) as i8));
        scales.push(scale);
    }
    (values, scales)
}

/// Writes the checkpoint in `dir` to `out` (a new or empty directory) with
/// every matrix its model multiplies by in int8: one `model.safetensors`,
/// config.json with a `quantization_config` saying so, and the tokenizer and
/// generation files as they were.
pub fn quantize_checkpoint(dir: &Path, out: &Path) -> Result<QuantizeReport, Error> {
    let bad = |message: String| Error::Data { dir: out.into(), message };
    if out.canonicalize().ok().is_some_and(|o| dir.canonicalize().is_ok_and(|d| d == o)) {
        return Err(bad("is the checkpoint itself: write the quantized one elsewhere".into()));
    }
    if out.is_dir() && std::fs::read_dir(out).map_err(|e| bad(e.to_string()))?.next().is_some() {
        return Err(bad("is not empty: give a new directory for the quantized checkpoint".into()));
    }
    let matrices = hf::matrices(dir)?;
    let mut report = QuantizeReport { matrices: 0, bytes_before: 0, bytes_after: 0, max_relative_error: 0.0 };
    // (name, dtype, shape, bytes) of every tensor written.
    let mut tensors: Vec<(String, DType, Vec<u64>, Vec<u8>)> = Vec::new();
    for file in hf::weight_files(dir)? {
        let weights = WeightFile::open(&dir.join(&file))?;
        for name in weights.names() {
            let t = weights.tensor(name)?;
            let bytes = t.dense_bytes().into_owned();
            report.bytes_before += bytes.len() as u64;
            let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
            let matrix = matrices.iter().find(|m| m.tensor == name).filter(|_| t.ty.is_float() && shape.len() == 2);
            let Some(matrix) = matrix else {
                tensors.push((name.to_string(), t.ty, shape, bytes));
                continue;
            };
            let floats = convert_floats(t.ty, &bytes, DType::F32).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            let mut w: Vec<f32> =
                floats.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let (mut rows, mut cols) = (shape[0] as usize, shape[1] as usize);
            if matrix.stored_in_out {
                w = transposed(&w, rows, cols);
                std::mem::swap(&mut rows, &mut cols);
            }
            let (values, scales) = int8_rows(&w, rows, cols);
            report.max_relative_error = report.max_relative_error.max(relative_error(&w, &values, &scales, cols));
            report.matrices += 1;
            tensors.push((
                format!("{name}{QWEIGHT}"),
                DType::I8,
                vec![rows as u64, cols as u64],
                values.iter().map(|&v| v as u8).collect(),
            ));
            tensors.push((
                format!("{name}{SCALES}"),
                DType::F32,
                vec![rows as u64],
                scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ));
        }
    }
    report.bytes_after = tensors.iter().map(|t| t.3.len() as u64).sum();
    std::fs::create_dir_all(out).map_err(|e| bad(format!("cannot create: {e}")))?;
    let refs: Vec<(&str, DType, &[u64], &[u8])> =
        tensors.iter().map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice())).collect();
    let weights = out.join("model.safetensors");
    xlac_core::safetensors::write(&weights, &refs)
        .map_err(|e| bad(format!("cannot write {}: {e}", weights.display())))?;
    write_config(dir, out)?;
    for extra in ["generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        if dir.join(extra).is_file() {
            std::fs::copy(dir.join(extra), out.join(extra)).map_err(|e| bad(format!("cannot copy {extra}: {e}")))?;
        }
    }
    Ok(report)
}

/// config.json with `quantization_config` naming xlac's int8 form.
fn write_config(dir: &Path, out: &Path) -> Result<(), Error> {
    let path = dir.join("config.json");
    let bad = |message: String| Error::Data { dir: path.clone(), message };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    config["quantization_config"] = serde_json::json!({
        "quant_method": "xlac-int8",
        "format": format!("each matrix W as W{QWEIGHT} (int8, [out, in]) and W{SCALES} (f32, [out]), symmetric per output channel"),
    });
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialize") + "\n";
    std::fs::write(out.join("config.json"), text)
        .map_err(|e| Error::Data { dir: out.into(), message: format!("cannot write config.json: {e}") })
}

fn transposed(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| w[r * cols + c])).collect()
}

/// The largest |w − values·scale| of a row relative to the row's largest |w|.
fn relative_error(w: &[f32], values: &[i8], scales: &[f32], cols: usize) -> f64 {
    let mut worst = 0.0f64;
    for ((row, q), &s) in w.chunks(cols).zip(values.chunks(cols)).zip(scales) {
        let largest = row.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
        if largest == 0.0 {
            continue;
        }
        for (&x, &v) in row.iter().zip(q) {
            worst = worst.max((x as f64 - v as f64 * s as f64).abs() / largest);
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
        assert!(relative_error(&w, &values, &scales, 16) <= 0.5 / 127.0 + 1e-7);
        assert_eq!(transposed(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
