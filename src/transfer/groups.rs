//! Parameter groups: the units that are frozen, unfrozen and given their own learning rate.
//! ResNets split into `stem`, `layer1`..`layer4` and `head` (fastai's and timm's split); other
//! registry models into their stem, each numbered stage (`features.0`, `stages.1`, ...) and head.

use crate::models::{Ctx, Model};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    /// Variable names (state-dict keys) in this group.
    pub vars: Vec<String>,
}

/// The group a variable belongs to; `head` is the classifier's name prefix plus a dot.
fn group_name(var: &str, head: &str) -> String {
    if var.starts_with(head) {
        return "head".into();
    }
    let parts: Vec<&str> = var.split('.').collect();
    match parts.as_slice() {
        [first, ..] if ["conv1", "bn1", "stem", "whiten"].contains(first) => "stem".into(),
        // A container of numbered stages (`features.0`, `stages.1`); `layer3.1` is block 1 of
        // the numbered stage layer3.
        [first, idx, _, ..]
            if idx.parse::<usize>().is_ok() && !first.ends_with(|c: char| c.is_ascii_digit()) =>
        {
            format!("{first}.{idx}")
        }
        [first, ..] => first.to_string(),
        [] => String::new(),
    }
}

/// Input order: stem first, head last, stages in natural order (layer2 before layer10).
fn order_key(name: &str) -> (u8, String, usize) {
    let rank = match name {
        "stem" => 0,
        "head" => 2,
        _ => 1,
    };
    let digits_at = name
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let (text, num) = name.split_at(digits_at);
    (rank, text.to_string(), num.parse().unwrap_or(0))
}

/// The model's parameter groups in input-to-output order.
pub fn param_groups(model: &Model) -> Vec<Group> {
    let head = format!("{}.", model.net.classifier().name);
    let mut groups: Vec<Group> = Vec::new();
    let mut names: Vec<String> = model.vs.variables().into_keys().collect();
    names.sort();
    for var in names {
        let g = group_name(&var, &head);
        match groups.iter_mut().find(|x| x.name == g) {
            Some(x) => x.vars.push(var),
            None => groups.push(Group {
                name: g,
                vars: vec![var],
            }),
        }
    }
    groups.sort_by_key(|g| order_key(&g.name));
    groups
}

/// Names of the model's BatchNorm layers, found by tracing one small forward pass.
pub fn batchnorm_layers(model: &Model) -> Vec<String> {
    let ctx = Ctx::tracing();
    let c = model.spec.in_channels;
    let x = Tensor::zeros([1, c, 64, 64], (Kind::Float, model.device()));
    let _ = tch::no_grad(|| model.forward(&x, &ctx));
    ctx.take_trace()
        .into_iter()
        .filter(|l| l.kind == "batchnorm")
        .map(|l| l.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_stage_structure() {
        assert_eq!(group_name("conv1.weight", "fc."), "stem");
        assert_eq!(group_name("bn1.running_var", "fc."), "stem");
        assert_eq!(group_name("layer3.1.conv2.weight", "fc."), "layer3");
        assert_eq!(group_name("features.2.conv.weight", "fc."), "features.2");
        assert_eq!(group_name("fc.bias", "fc."), "head");
        let mut names = vec!["head", "layer10", "layer2", "stem"];
        names.sort_by_key(|n| order_key(n));
        assert_eq!(names, ["stem", "layer2", "layer10", "head"]);
    }
}
