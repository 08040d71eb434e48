//! Self-observability: a Prometheus text endpoint with tool calls by tool and outcome, their
//! latency, open SSE sessions, the collector's drops and each BPF program's run time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bpfsight_collector::{ProgramStatsHandle, Store};

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters the MCP layer updates.
#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Legacy SSE sessions open now.
    pub sse_sessions: AtomicI64,
    /// Calls answered with the answer already computed at the same store generation.
    pub answers_reused: AtomicU64,
}

impl Metrics {
    /// Records one tool call.
    pub fn record_call(&self, tool: &str, outcome: &'static str, seconds: f64) {
        // Look up before inserting: the tool names are few, so allocate a key only once each.
        if let Ok(mut c) = self.calls.lock() {
            if !c.contains_key(tool) {
                c.insert(tool.to_string(), BTreeMap::new());
            }
            *c.get_mut(tool).expect("inserted above").entry(outcome).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            if !l.contains_key(tool) {
                l.insert(tool.to_string(), Histogram::default());
            }
            let h = l.get_mut(tool).expect("inserted above");
            h.count += 1;
            h.sum += seconds;
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    h.counts[i] += 1;
                }
            }
        }
    }
}

/// Everything the endpoint reports.
#[derive(Clone)]
pub struct Exporter {
    /// MCP-layer counters.
    pub metrics: Arc<Metrics>,
    /// The collector's store (health, services).
    pub store: Arc<RwLock<Store>>,
    /// BPF program statistics.
    pub programs: ProgramStatsHandle,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Exporter {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        o += "# HELP bpfsight_tool_calls_total MCP tool calls by tool and outcome.\n# TYPE bpfsight_tool_calls_total counter\n";
        if let Ok(c) = self.metrics.calls.lock() {
            for (tool, outcomes) in c.iter() {
                for (outcome, n) in outcomes {
                    let _ = writeln!(
                        o,
                        "bpfsight_tool_calls_total{{tool=\"{}\",outcome=\"{outcome}\"}} {n}",
                        esc(tool)
                    );
                }
            }
        }
        o += "# HELP bpfsight_tool_call_seconds MCP tool call latency.\n# TYPE bpfsight_tool_call_seconds histogram\n";
        if let Ok(l) = self.metrics.latency.lock() {
            for (tool, h) in l.iter() {
                let t = esc(tool);
                for (b, n) in BUCKETS.iter().zip(h.counts) {
                    let _ = writeln!(o, "bpfsight_tool_call_seconds_bucket{{tool=\"{t}\",le=\"{b}\"}} {n}");
                }
                let _ =
                    writeln!(o, "bpfsight_tool_call_seconds_bucket{{tool=\"{t}\",le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(o, "bpfsight_tool_call_seconds_sum{{tool=\"{t}\"}} {}", h.sum);
                let _ = writeln!(o, "bpfsight_tool_call_seconds_count{{tool=\"{t}\"}} {}", h.count);
            }
        }
        let _ = writeln!(
            o,
            "# HELP bpfsight_tool_answers_reused_total Tool calls answered with the answer computed for the same \
             tool and arguments since the collector last wrote.\n# TYPE bpfsight_tool_answers_reused_total \
             counter\nbpfsight_tool_answers_reused_total {}",
            self.metrics.answers_reused.load(Ordering::Relaxed)
        );
        o += "# HELP bpfsight_sse_sessions Legacy SSE sessions open.\n# TYPE bpfsight_sse_sessions gauge\n";
        let _ = writeln!(o, "bpfsight_sse_sessions {}", self.metrics.sse_sessions.load(Ordering::Relaxed));
        if let Ok(store) = self.store.read() {
            let _ = writeln!(
                o,
                "# HELP bpfsight_collector_history_bytes Approximate bytes held by per-service history and \
                 events.\n# TYPE bpfsight_collector_history_bytes gauge\nbpfsight_collector_history_bytes {}\n\
                 # HELP bpfsight_collector_history_slots Time slots held over all services and \
                 resolutions.\n# TYPE bpfsight_collector_history_slots gauge\nbpfsight_collector_history_slots {}\n\
                 # HELP bpfsight_collector_services Services with history.\n# TYPE bpfsight_collector_services \
                 gauge\nbpfsight_collector_services {}",
                store.approx_bytes(),
                store.slot_count(),
                store.service_count()
            );
            let h = store.health();
            for (name, help, v) in [
                ("ringbuf_drops", "Events lost because the ring buffer was full.", h.ringbuf_drops),
                (
                    "conn_stats_full",
                    "Counter updates lost because the aggregate map was full.",
                    h.conn_stats_full,
                ),
                ("sock_insert_failed", "Sockets the kernel side could not track.", h.sock_insert_failed),
                ("send_stats_full", "Sends not counted because the send map was full.", h.send_stats_full),
                ("events_evicted", "Events aged out of the bounded event log.", h.events_evicted),
                ("services_evicted", "Services evicted from bounded history.", h.services_evicted),
                (
                    "slots_trimmed",
                    "Old fine history slots dropped to stay within the history budget (still counted at a coarser resolution).",
                    h.slots_trimmed,
                ),
            ] {
                let _ = writeln!(
                    o,
                    "# HELP bpfsight_collector_{name}_total {help}\n# TYPE bpfsight_collector_{name}_total counter\nbpfsight_collector_{name}_total {v}"
                );
            }
            let _ = writeln!(
                o,
                "# HELP bpfsight_collector_last_poll_timestamp_seconds Last kernel map poll.\n# TYPE bpfsight_collector_last_poll_timestamp_seconds gauge\nbpfsight_collector_last_poll_timestamp_seconds {}",
                h.last_poll
            );
            // An alert on this going stale catches a data directory that stopped taking saves.
            if let Some(last) = h.history.as_ref().and_then(|s| s.last_saved_at) {
                let _ = writeln!(
                    o,
                    "# HELP bpfsight_history_last_save_timestamp_seconds Last save of the history kept across restarts.
# TYPE bpfsight_history_last_save_timestamp_seconds gauge
bpfsight_history_last_save_timestamp_seconds {last}"
                );
            }
        }
        o += "# HELP bpfsight_bpf_program_run_seconds_total In-kernel run time per program (counted while kernel.bpf_stats_enabled=1).\n# TYPE bpfsight_bpf_program_run_seconds_total counter\n";
        let progs = self.programs.get();
        for p in &progs {
            let _ = writeln!(
                o,
                "bpfsight_bpf_program_run_seconds_total{{program=\"{}\"}} {}",
                esc(&p.name),
                p.run_time.as_secs_f64()
            );
        }
        o += "# HELP bpfsight_bpf_program_runs_total Runs per program (counted while kernel.bpf_stats_enabled=1).\n# TYPE bpfsight_bpf_program_runs_total counter\n";
        for p in &progs {
            let _ = writeln!(
                o,
                "bpfsight_bpf_program_runs_total{{program=\"{}\"}} {}",
                esc(&p.name),
                p.run_count
            );
        }
        o
    }
}

/// Serves `GET /metrics` on `addr` until the process exits.
pub async fn serve(addr: std::net::SocketAddr, exporter: Exporter) -> anyhow::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let e = exporter.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], e.render()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("bpfsight: metrics on http://{}/metrics", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
