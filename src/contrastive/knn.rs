//! Weighted k-nearest-neighbour classification on L2-normalised embeddings (the monitor of
//! contrastive pre-training, Wu et al. 2018): each of the k most cosine-similar training
//! embeddings votes for its label with weight exp(similarity / t).

use tch::{Kind, Tensor};

/// Predicted labels `[M]` for `query` `[M, D]` from `bank` `[N, D]` with `bank_labels` `[N]`.
pub fn knn_predict(
    query: &Tensor,
    bank: &Tensor,
    bank_labels: &Tensor,
    classes: i64,
    k: i64,
    t: f64,
) -> Tensor {
    let k = k.min(bank.size()[0]);
    let chunks: Vec<Tensor> = query
        .split(1024, 0)
        .iter()
        .map(|q| {
            let sim = q.matmul(&bank.transpose(0, 1));
            let (top_sim, top_idx) = sim.topk(k, 1, true, true);
            let votes = bank_labels
                .index_select(0, &top_idx.flatten(0, -1))
                .reshape([-1, k]);
            let weights = (top_sim / t).exp();
            let scores = Tensor::zeros([q.size()[0], classes], (Kind::Float, q.device()));
            scores
                .scatter_add(1, &votes, &weights.to_kind(Kind::Float))
                .argmax(1, false)
        })
        .collect();
    Tensor::cat(&chunks, 0)
}

/// Fraction of `query_labels` that kNN predicts correctly.
pub fn knn_accuracy(
    query: &Tensor,
    query_labels: &Tensor,
    bank: &Tensor,
    bank_labels: &Tensor,
    classes: i64,
    k: i64,
    t: f64,
) -> f64 {
    let pred = knn_predict(query, bank, bank_labels, classes, k, t);
    pred.eq_tensor(query_labels)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}
