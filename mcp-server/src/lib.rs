//! bpfsight's MCP server: the tools an LLM client calls, wired to the collector's queries.
//!
//! This crate only translates: MCP arguments into collector queries, and the answers into
//! structured tool results with a one-line summary. All computation lives in
//! `bpfsight-collector`.

pub mod args;
pub mod audit;
pub mod auth;
pub mod config;
pub mod http;
pub mod incidents;
pub mod metrics;
pub mod one_write;
pub mod predict;
pub mod prompts;
pub mod redact;
pub mod resources;
pub mod result_cache;
pub mod reuse;
pub mod server;
pub mod sse;
mod summary;
pub mod symptoms;
pub mod tls;

pub use server::{BpfsightServer, Policy};
