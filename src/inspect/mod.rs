//! How a CNN sees: receptive fields from the layer geometry, first-layer filters, the feature
//! maps of every stage for one image, and Grad-CAM (Selvaraju et al. 2017).

pub mod picture;
pub mod report;
pub mod shift;

use crate::models::{Ctx, LayerInfo, Model, Part};
use tch::{Kind, Tensor};

/// One stage's output and how much of the input each of its positions sees.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StageField {
    pub stage: String,
    /// `[1, C, H, W]` for one image.
    pub output: Vec<i64>,
    /// Side of the receptive field in input pixels, along the longest path (shortcuts add none).
    pub receptive_field: i64,
    /// Input pixels between neighbouring output positions (the product of the strides).
    pub jump: i64,
}

/// Receptive field and jump after every stage, from a trace of one forward pass:
/// r_out = r_in + (k - 1) j_in, j_out = j_in s. Projection shortcuts (`downsample`) are off the
/// longest path and left out.
pub fn receptive_fields(trace: &[LayerInfo], parts: &[Part]) -> Vec<StageField> {
    let (mut r, mut j) = (1i64, 1i64);
    let mut out: Vec<StageField> = Vec::new();
    for layer in trace {
        if layer.name.contains("downsample") || layer.kind == "linear" || layer.kind == "pool" {
            continue;
        }
        if let Some((k, s)) = layer.window {
            r += (k - 1) * j;
            j *= s;
        }
        let Some(stage) = parts
            .iter()
            .find(|p| p.owns(&layer.name))
            .map(|p| p.name.clone())
        else {
            continue;
        };
        let field = StageField {
            stage: stage.clone(),
            output: layer.output.clone(),
            receptive_field: r,
            jump: j,
        };
        match out.last_mut() {
            Some(last) if last.stage == stage => *last = field,
            _ => out.push(field),
        }
    }
    out
}

/// Traces one `[C, size, size]` input through the model.
pub fn trace(model: &Model, size: i64) -> Vec<LayerInfo> {
    crate::models::summary::summarise(model, [model.spec.in_channels, size, size]).layers
}

/// The first convolution's weight `[O, C, k, k]` (its name comes from the trace).
pub fn first_filters(model: &Model, size: i64) -> Option<(String, Tensor)> {
    let conv = trace(model, size).into_iter().find(|l| l.kind == "conv")?;
    let vars = model.vs.variables();
    let w = vars.get(&format!("{}.weight", conv.name))?;
    Some((conv.name, w.detach().to_device(tch::Device::Cpu)))
}

/// Every stage's output for a normalised input batch `x` (eval mode).
pub fn stage_outputs(model: &Model, x: &Tensor) -> Vec<(String, Tensor)> {
    let ctx = Ctx::capturing();
    let _ = tch::no_grad(|| model.net.features(x, &ctx));
    ctx.take_stages()
}

/// Grad-CAM of class `class` at stage `layer` for one normalised image `x` `[1, C, H, W]`:
/// the stage's feature maps weighted by the spatial mean of the class score's gradient, summed,
/// rectified and normalised to [0, 1], at the stage's resolution `[h, w]`. Returns the map and
/// the logits.
pub fn grad_cam(
    model: &Model,
    x: &Tensor,
    layer: &str,
    class: Option<i64>,
) -> Result<(Tensor, Tensor), String> {
    let ctx = Ctx::capturing();
    let logits = model.net.forward(x, &ctx);
    let stages = ctx.take_stages();
    let (_, maps) = stages.iter().find(|(n, _)| n == layer).ok_or_else(|| {
        let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "the model has no stage '{layer}'; its stages: {}",
            names.join(", ")
        )
    })?;
    let class = class.unwrap_or_else(|| logits.argmax(1, false).int64_value(&[0]));
    let score = logits.get(0).get(class);
    let grads = Tensor::run_backward(&[score], &[maps], false, false);
    let weights = grads[0].mean_dim([2i64, 3].as_slice(), true, Kind::Float);
    let cam = (weights * maps.detach())
        .sum_dim_intlist(1, false, Kind::Float)
        .relu();
    let cam = cam.get(0);
    let max = cam.max().double_value(&[]);
    let cam = if max > 0.0 { cam / max } else { cam };
    Ok((cam, logits.detach()))
}

/// The position `(x, y)` of the largest value of a map upsampled to `size` x `size`.
pub fn peak(cam: &Tensor, size: i64) -> (i64, i64) {
    let up = upsample(cam, size);
    let i = up.flatten(0, -1).argmax(0, false).int64_value(&[]);
    (i % size, i / size)
}

/// `[h, w]` -> `[size, size]`, bilinear.
pub fn upsample(map: &Tensor, size: i64) -> Tensor {
    map.unsqueeze(0)
        .unsqueeze(0)
        .upsample_bilinear2d([size, size], false, None::<f64>, None::<f64>)
        .squeeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, kind: &'static str, window: Option<(i64, i64)>) -> LayerInfo {
        LayerInfo {
            name: name.into(),
            kind,
            output: vec![],
            params: 0,
            flops: 0,
            dense_params: None,
            window,
        }
    }

    #[test]
    fn fields_grow_with_kernels_and_strides() {
        let trace = [
            layer("conv1", "conv", Some((7, 2))),
            layer("bn1", "batchnorm", None),
            layer("maxpool", "maxpool", Some((3, 2))),
            layer("layer1.0.conv1", "conv", Some((3, 1))),
            layer("layer2.0.conv1", "conv", Some((3, 2))),
            layer("layer2.0.downsample.0", "conv", Some((1, 2))),
            layer("fc", "linear", None),
        ];
        let parts = [
            Part::new("stem", &["conv1", "bn1", "maxpool"]),
            Part::stage("layer1".into()),
            Part::stage("layer2".into()),
            Part::new("head", &["fc"]),
        ];
        let f = receptive_fields(&trace, &parts);
        let got: Vec<(&str, i64, i64)> = f
            .iter()
            .map(|s| (s.stage.as_str(), s.receptive_field, s.jump))
            .collect();
        assert_eq!(got, [("stem", 11, 4), ("layer1", 19, 4), ("layer2", 27, 8)]);
    }
}
