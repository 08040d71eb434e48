//! Anomaly prediction for bpfsight.
//!
//! - [`schema`]: the typed, versioned feature list a model reads.
//! - [`norm`]: robust normalisation fitted on a training window.
//! - [`lstm`] and [`model`]: the burn LSTM forecaster, its training and persistence.
//! - [`baseline`]: the rolling robust z-score that answers before a model exists.
//! - [`score`] and [`calibrate`]: forecast errors to a score, and a threshold calibrated on
//!   recent scores with extreme-value theory.
//! - [`engine`]: the online loop a server drives: history per scope, background training,
//!   predictions.
//! - [`nab`]: the evaluation harness on Numenta Anomaly Benchmark data.

pub mod baseline;
pub mod calibrate;
pub mod engine;
pub mod error;
pub mod lstm;
pub mod model;
pub mod nab;
pub mod norm;
pub mod rows;
pub mod schema;
pub mod score;

pub use error::PredictError;
pub use model::LstmModel;
pub use schema::{Feature, Schema};
