//! `xlac quantize`: a checkpoint's matrices in int8, written as a new checkpoint.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use xlac_driver::quantize::{quantize_checkpoint, Bits};
use xlac_runtime::memory::human_bytes;

#[derive(Args)]
pub struct QuantizeArgs {
    /// A Hugging Face checkpoint directory (BERT, GPT-2, Llama).
    checkpoint: PathBuf,
    /// The directory to write the quantized checkpoint to (new or empty).
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// 8: int8, one scale per output channel; 4: int4, one scale per --group columns, two values a byte.
    #[arg(long, default_value = "8", value_parser = clap::builder::PossibleValuesParser::new(["8", "4"]))]
    bits: String,
    /// For --bits 4: how many input columns of a row share a scale.
    #[arg(long, default_value = "64", value_parser = clap::builder::PossibleValuesParser::new(["16", "32", "64", "128"]))]
    group: String,
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let (bits, how) = match a.bits.as_str() {
        "8" => (Bits::Int8, "int8 (per output channel)".to_string()),
        _ => {
            let group = a.group.parse().expect("a listed value");
            (Bits::Int4 { group }, format!("int4 (groups of {group})"))
        }
    };
    let r = quantize_checkpoint(&a.checkpoint, &a.output, bits)?;
    println!(
        "{} matrices in {how}; weights {} -> {} ({:.2}x); largest error {:.3}% of a row's largest weight",
        r.matrices,
        human_bytes(r.bytes_before),
        human_bytes(r.bytes_after),
        r.bytes_after as f64 / r.bytes_before.max(1) as f64,
        r.max_relative_error * 100.0
    );
    println!("wrote {}", a.output.display());
    Ok(())
}
