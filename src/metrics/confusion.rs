//! Classification metrics: confusion matrix, per-class accuracy, top-k.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// `counts[true][predicted]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub counts: Vec<Vec<i64>>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion {
            counts: vec![vec![0; classes]; classes],
        }
    }
    pub fn add(&mut self, truth: &[i64], predicted: &[i64]) {
        for (&t, &p) in truth.iter().zip(predicted) {
            self.counts[t as usize][p as usize] += 1;
        }
    }
    pub fn total(&self) -> i64 {
        self.counts.iter().flatten().sum()
    }
    pub fn accuracy(&self) -> f64 {
        let correct: i64 = (0..self.counts.len()).map(|i| self.counts[i][i]).sum();
        correct as f64 / self.total().max(1) as f64
    }
    /// The class every image was predicted as, when there was only one answer for two or more
    /// images of a problem with two or more classes (an evaluation that collapsed).
    pub fn single_prediction(&self) -> Option<usize> {
        let classes = self.counts.len();
        let column = |c: usize| self.counts.iter().map(|row| row[c]).sum::<i64>();
        let total = self.total();
        if classes < 2 || total < 2 {
            return None;
        }
        (0..classes).find(|&c| column(c) == total)
    }
    /// Recall of each class: correct / images of that class (NaN-free: 0 for an absent class).
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let n: i64 = row.iter().sum();
                if n == 0 {
                    0.0
                } else {
                    row[i] as f64 / n as f64
                }
            })
            .collect()
    }
}

/// How many rows of `logits` have the label among their `k` highest scores.
pub fn topk_correct(logits: &Tensor, labels: &Tensor, k: i64) -> i64 {
    topk_hits(logits, labels, k).int64_value(&[])
}

/// `topk_correct` as a device scalar (no host sync).
pub fn topk_hits(logits: &Tensor, labels: &Tensor, k: i64) -> Tensor {
    let k = k.min(logits.size()[1]);
    let (_, top) = logits.topk(k, 1, true, true);
    top.eq_tensor(&labels.unsqueeze(1))
        .any_dim(1, false)
        .sum(Kind::Int64)
}

#[cfg(test)]
mod tests {
    use super::Confusion;

    #[test]
    fn one_answer_for_every_image_is_found() {
        let mut c = Confusion::new(3);
        c.add(&[0, 1, 2, 2], &[1, 1, 1, 1]);
        assert_eq!(c.single_prediction(), Some(1));
        c.add(&[0], &[0]);
        assert_eq!(c.single_prediction(), None);
        let mut one = Confusion::new(3);
        one.add(&[2], &[2]);
        assert_eq!(one.single_prediction(), None, "one image is not a pattern");
    }
}
