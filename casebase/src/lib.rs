//! Incident memory for bpfsight: "have we seen this before, what caused it, what fixed it?"
//!
//! A [`CaseBase`] holds the curated seed library (`casebase/cases/*.toml`, compiled in) and the
//! incidents users record, and finds the closest ones to a live symptom [`Signature`], to a
//! description, or to both:
//!
//! - [`schema`]: the versioned metric schema of signatures ([`Feature`], deviations on one scale);
//! - [`embed`]: text embeddings, offline by default ([`HashedEmbedder`]) or from an
//!   OpenAI-compatible / Ollama endpoint ([`RemoteEmbedder`]);
//! - [`log`]: the append-only, checksummed, fsynced log that is the source of truth;
//! - [`index`]: usearch HNSW indexes, saved next to the log and rebuilt when stale.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bpfsight_casebase::Error> {
//! use bpfsight_casebase::{CaseBase, Embedder, Feature, Filter, Query, Signature};
//! let cb = CaseBase::open(std::path::Path::new("/var/lib/bpfsight/casebase"), Embedder::default()).await?;
//! let sig = Signature::default().with(Feature::Retransmits, 4.0).with(Feature::Traffic, -1.0);
//! let text = cb.embedder().embed("throughput collapsed, many retransmissions").await?;
//! let q = Query { signature: Some(&sig), text: Some(&text), top_k: 5, filter: Filter::default(), text_weight: 0.5 };
//! for m in cb.search(&q)? {
//!     println!("{:.2} {} -> {}", m.score, m.incident.title, m.incident.resolution);
//! }
//! # Ok(()) }
//! ```

pub mod casebase;
pub mod embed;
mod error;
pub mod incident;
pub mod index;
pub mod log;
pub mod schema;
mod seeds;

pub use casebase::{CaseBase, Filter, MAX_TOP_K, Match, Query, Stats};
pub use embed::{EmbedError, Embedder, HashedEmbedder, RemoteApi, RemoteEmbedder};
pub use error::Error;
pub use incident::{Incident, NewIncident, Source, TimeRange};
pub use schema::{Feature, SCHEMA_VERSION, Signature};
