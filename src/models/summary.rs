//! `convkit summary`: each layer's output shape, parameters and FLOPs, and for convolutions the
//! parameters a fully connected layer of the same input and output sizes would need.

use super::{Ctx, LayerInfo, Model};
use tch::{Kind, Tensor};

pub struct Summary {
    pub layers: Vec<LayerInfo>,
    pub parameters: i64,
    pub flops: i64,
    pub input: [i64; 3],
}

/// Traces one forward pass of a single `input`-shaped image.
pub fn summarise(model: &Model, input: [i64; 3]) -> Summary {
    let x = Tensor::zeros(
        [1, input[0], input[1], input[2]],
        (Kind::Float, model.device()),
    );
    let ctx = Ctx::tracing();
    let _ = tch::no_grad(|| model.forward(&x, &ctx));
    let layers = ctx.take_trace();
    Summary {
        flops: layers.iter().map(|l| l.flops).sum(),
        parameters: model.parameter_count(),
        layers,
        input,
    }
}

/// Groups digits by thousands: 11689512 -> "11,689,512".
pub fn thousands(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

impl Summary {
    pub fn render(&self, name: &str) -> String {
        let mut out = format!(
            "{name}, input {}x{}x{}\n{:<34} {:<10} {:<18} {:>12} {:>14} {:>18}\n",
            self.input[0],
            self.input[1],
            self.input[2],
            "layer",
            "kind",
            "output",
            "params",
            "FLOPs",
            "dense-equivalent"
        );
        for l in &self.layers {
            let shape = l.output[1..]
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x");
            let dense = l.dense_params.map(thousands).unwrap_or_default();
            out += &format!(
                "{:<34} {:<10} {:<18} {:>12} {:>14} {:>18}\n",
                l.name,
                l.kind,
                shape,
                thousands(l.params),
                thousands(l.flops),
                dense
            );
        }
        let conv: Vec<&LayerInfo> = self.layers.iter().filter(|l| l.kind == "conv").collect();
        let conv_params: i64 = conv.iter().map(|l| l.params).sum();
        let dense_params: i64 = conv.iter().filter_map(|l| l.dense_params).sum();
        out += &format!("parameters: {}\n", thousands(self.parameters));
        out += &format!(
            "FLOPs per image: {} ({:.3} GFLOPs; a multiply-add counts 2)\n",
            thousands(self.flops),
            self.flops as f64 / 1e9
        );
        if conv_params > 0 {
            out += &format!(
                "convolutions hold {} parameters; fully connected layers with the same input and output sizes would need {} ({:.0}x more): weight sharing and local connectivity\n",
                thousands(conv_params),
                thousands(dense_params),
                dense_params as f64 / conv_params as f64
            );
        }
        out
    }
}
