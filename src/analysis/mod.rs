//! Measures and maps of a representation space (alignment, uniformity, class cosines,
//! silhouette, exact t-SNE).

pub mod embedding;
