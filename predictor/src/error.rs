//! Errors of the predictor.

use std::path::PathBuf;

/// What can go wrong training, saving, loading or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// Not enough data to train.
    #[error("not enough data to train: {windows} windows, at least {needed} needed")]
    NotEnoughData {
        /// Windows available.
        windows: usize,
        /// Windows needed.
        needed: usize,
    },
    /// A saved model was trained on another feature schema.
    #[error(
        "model at {path} was trained on schema {found}, this build reads {expected}; delete it or retrain"
    )]
    SchemaMismatch {
        /// The model file.
        path: PathBuf,
        /// Its schema.
        found: String,
        /// The schema expected.
        expected: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file did not parse.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl PredictError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PredictError {
        let path = path.into();
        move |source| PredictError::Io { path, source }
    }
}
