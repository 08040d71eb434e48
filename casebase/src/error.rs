//! Errors of the case base.

use std::path::{Path, PathBuf};

/// What went wrong in the case base.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-supplied field breaks a rule; the message says which and how.
    #[error("{field} {why}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// The rule it breaks.
        why: String,
    },
    /// No incident has this id.
    #[error(
        "no incident with id {id:?}; ids look like \"inc-12\" (recorded) or a seed slug such as \"conn-pool-exhaustion\""
    )]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{}: {why}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A seed case file is invalid (a build-time mistake caught by tests).
    #[error("seed case {file}: {why}")]
    Seed {
        /// The case file.
        file: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The vector index failed.
    #[error("vector index: {0}")]
    Index(String),
    /// The text embedder failed.
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    /// The case base is read-only (opened without a data directory).
    #[error("the case base is read-only: start bpfsight with a writable --data-dir")]
    ReadOnly,
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_owned(), source }
    }

    pub(crate) fn index(e: impl std::fmt::Display) -> Error {
        Error::Index(e.to_string())
    }
}
