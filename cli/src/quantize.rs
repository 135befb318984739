//! `xlac quantize`: a checkpoint's matrices in int8, written as a new checkpoint.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use xlac_driver::quantize::quantize_checkpoint;
use xlac_runtime::memory::human_bytes;

#[derive(Args)]
pub struct QuantizeArgs {
    /// A Hugging Face checkpoint directory (BERT, GPT-2, Llama).
    checkpoint: PathBuf,
    /// The directory to write the quantized checkpoint to (new or empty).
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let r = quantize_checkpoint(&a.checkpoint, &a.output)?;
    println!(
        "{} matrices in int8 (per output channel); weights {} -> {} ({:.2}x); largest error {:.3}% of a row's largest weight",
        r.matrices,
        human_bytes(r.bytes_before),
        human_bytes(r.bytes_after),
        r.bytes_after as f64 / r.bytes_before.max(1) as f64,
        r.max_relative_error * 100.0
    );
    println!("wrote {}", a.output.display());
    Ok(())
}
