//! `convkit export`.

use crate::export::{self, Format};
use crate::train::TrainedRun;
use anyhow::Result;
use clap::Args;
use clap::ValueEnum;
use std::path::PathBuf;

/// `--format`'s values, as the command line spells them.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Onnx,
    Torchscript,
    Safetensors,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Onnx => Format::Onnx,
            FormatArg::Torchscript => Format::Torchscript,
            FormatArg::Safetensors => Format::Safetensors,
        }
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A run folder or a checkpoint file
    run: PathBuf,
    /// onnx (opset 17, normalisation inside, dynamic batch), torchscript (for torch.jit.load
    /// and libtorch; normalisation inside) or safetensors (torchvision's state-dict names)
    #[arg(long, value_enum)]
    format: FormatArg,
    /// The file to write; `<FILE>.json` beside it states the input and the classes
    #[arg(long)]
    out: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<()> {
    crate::train::parallel::refuse_launch("convkit export")?;
    let run = TrainedRun::open(&a.run)?;
    let s = export::export(&run, a.format.into(), &a.out)?;
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
