//! The collector: loads bpfsight's eBPF programs, turns their in-kernel aggregates into
//! per-service time series at one-second resolution, and answers typed queries over them.
//!
//! ```no_run
//! use bpfsight_collector::{Collector, CollectorConfig, Window};
//!
//! let collector = Collector::start(CollectorConfig::default())?;
//! std::thread::sleep(std::time::Duration::from_secs(2));
//! let store = collector.store().read().unwrap();
//! let report = store.connection_stats(&Default::default()).expect("default query is valid");
//! println!("{} services with TCP activity in the last {}", report.total, Window::DEFAULT);
//! # Ok::<(), bpfsight_collector::CollectorError>(())
//! ```
//!
//! Layout: [`kernel`] prepares the machine (mounts, privileges, tracepoint layouts),
//! [`loader`] loads and attaches the programs and reads their maps, [`store`] keeps bounded
//! history, [`query`] computes the answers the MCP tools return.

pub mod btf;
pub mod collector;
pub mod error;
pub mod history;
pub mod host;
pub mod host_query;
pub mod journal;
pub mod kernel;
pub mod loader;
pub mod names;
pub mod plan;
pub mod preexisting;
pub mod procfs;
pub mod procs;
pub mod query;
pub mod send_slots;
pub mod service;
pub mod shared_map;
pub mod sock_table;
pub mod store;
pub mod tcp;
pub mod ticks;
pub mod window;

/// The kernel/user shared types, for callers that need program or map names.
pub use bpfsight_common as common;
pub use collector::{Backend, Collector, CollectorConfig, HistoryConfig, ProgramStatsHandle};
pub use error::CollectorError;
pub use service::ServiceId;
pub use store::Store;
pub use window::Window;
