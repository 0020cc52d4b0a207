//! `convkit export`.

use crate::export::{self, Format};
use crate::train::TrainedRun;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A run folder or a checkpoint file
    run: PathBuf,
    /// onnx (opset 17, normalisation inside, dynamic batch), torchscript (for torch.jit.load
    /// and libtorch; normalisation inside) or safetensors (torchvision's state-dict names)
    #[arg(long, value_enum)]
    format: Format,
    /// The file to write; `<FILE>.json` beside it states the input and the classes
    #[arg(long)]
    out: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<()> {
    crate::train::parallel::refuse_launch("convkit export")?;
    let run = TrainedRun::open(&a.run)?;
    let s = export::export(&run, a.format, &a.out)?;
    let i = &s.input;
    println!(
        "{}: {} ({} classes), input [N, {}, {}, {}] {}{}",
        a.out.display(),
        s.model,
        s.classes.len(),
        i.shape[1],
        i.shape[2],
        i.shape[3],
        i.values,
        if i.normalisation_inside {
            " (normalised inside)"
        } else {
            ""
        }
    );
    println!("described in {}", export::sidecar_path(&a.out).display());
    Ok(())
}
