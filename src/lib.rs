//! convkit: image classification with convolutional networks on libtorch (through tch).
//!
//! Data flows one way: a source becomes a [`data::Dataset`] of u8 images, the loader batches and
//! [`augment`] augments them on the device, a [`models::Model`] maps them to logits, the
//! [`optim`] optimiser and schedule update it, and [`train`] runs epochs, evaluates, checkpoints
//! and writes the run folder that [`report`] turns into charts and a page.

pub mod analysis;
pub mod augment;
pub mod bench;
pub mod cli;
pub mod config;
pub mod contrastive;
pub mod data;
pub mod dist;
pub mod error;
pub mod experiment;
pub mod export;
pub mod finetune;
pub mod inspect;
pub mod metrics;
pub mod models;
pub mod optim;
pub mod pickle;
pub mod predict;
pub mod probe;
pub mod report;
pub mod train;
pub mod transfer;
pub mod util;
pub mod weights;
