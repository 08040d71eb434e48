//! Tool arguments: typed, documented for the model, validated into collector queries.

use bpfsight_collector::Window;
use bpfsight_collector::query::{QueryError, check_limit};
use rmcp::ErrorData;
use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::tool::ToolCallContext;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Tool arguments extracted from a call. Unlike rmcp's `Parameters`, whose decoding failures
/// become tool-level errors, a decoding failure here (wrong type, unknown field) is an MCP
/// invalid-params error, like every other bad argument, with serde's account of what is wrong
/// and which fields exist.
pub struct Args<T>(pub T);

impl<S, T: DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Args<T> {
    fn from_context_part(ctx: &mut ToolCallContext<'_, S>) -> Result<Self, ErrorData> {
        let object = ctx.arguments.take().unwrap_or_default();
        // With the path of the field at fault: serde alone says "expected u64", not where.
        serde_path_to_error::deserialize(serde_json::Value::Object(object)).map(Args).map_err(|e| {
            let message = match e.path().to_string().as_str() {
                "." => format!("invalid arguments: {}", e.inner()),
                path => format!("invalid argument {path}: {}", e.inner()),
            };
            ErrorData::invalid_params(message, None)
        })
    }
}

/// Arguments of `list_services`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListServicesArgs {
    /// Only services whose name contains this text (case-insensitive).
    pub name_contains: Option<String>,
    /// Only services with TCP activity in the last 5 minutes or connections open now. Default false.
    #[serde(default)]
    pub active_only: bool,
    /// Only services with any recorded activity (CPU, IO, syscalls, TCP) within this window,
    /// e.g. "1m". Default: no such filter.
    pub active_within: Option<String>,
    /// Most services to return, 1-500. Default 50.
    pub limit: Option<i64>,
}

/// Arguments of `get_connection_stats`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionStatsArgs {
    /// Only this service (a process name as shown by list_services). Default: every service with TCP activity.
    pub service: Option<String>,
    /// How far back to look: a number and a unit s, m, h or d, e.g. "30s", "5m", "1h", "2d"; at most "7d". Default "5m".
    pub window: Option<String>,
    /// Most services to return, 1-500. Default 20.
    pub limit: Option<i64>,
}

/// Arguments of `get_service_errors`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceErrorsArgs {
    /// Report services whose TCP error rate is at least this percentage, 0-100. Default 1.0.
    pub threshold_pct: Option<f64>,
    /// Report services with at least this many failed syscalls per second (benign ones not
    /// counted: EAGAIN, EINPROGRESS, EINTR, futex timeouts). Default 5.0: a starting
    /// interpreter fails ~100 path probes, which is not an error.
    pub min_syscall_errors_per_s: Option<f64>,
    /// How far back to look: a number and a unit s, m, h or d, e.g. "30s", "5m", "1h", "2d"; at most "7d". Default "5m".
    pub window: Option<String>,
    /// Most services to return, 1-500. Default 20.
    pub limit: Option<i64>,
}

/// Which latency `get_high_latency_services` compares.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LatencyKindArg {
    /// Run-queue delay: runnable but waiting for a CPU (CPU contention).
    #[default]
    Runqueue,
    /// Block IO request latency, from the request's start (queued, as iostat's await) to
    /// completion.
    Io,
    /// Latency of connect, accept, accept4, fsync, fdatasync, sync_file_range, per syscall.
    Syscall,
    /// TCP handshake time of successful connects.
    Connect,
}

/// Arguments of `get_high_latency_services`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HighLatencyArgs {
    /// Report services whose latency at `percentile` is at least this many milliseconds.
    pub threshold_ms: f64,
    /// Which latency. Default runqueue.
    pub kind: Option<LatencyKindArg>,
    /// Percentile to compare, in (0, 100], e.g. 50, 95, 99, 99.9. Default 99.
    pub percentile: Option<f64>,
    /// How far back to look: a number and a unit s, m, h or d, e.g. "30s", "5m", "1h", "2d"; at most "7d". Default "5m".
    pub window: Option<String>,
    /// Most rows to return, 1-500. Default 20.
    pub limit: Option<i64>,
}

/// Arguments of `predict_anomaly`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictArgs {
    /// A service name from list_services; omit for the whole host plus the services scoring highest.
    pub service: Option<String>,
    /// How far ahead to forecast: "10s" to "5m". Default "1m".
    pub horizon: Option<String>,
    /// Recent span judged (the worst second in it is reported): "1s" to "5m". Default "30s".
    pub window: Option<String>,
}

/// Parses a duration argument of `predict_anomaly` within `min..=max` seconds.
pub fn seconds(field: &str, v: Option<&str>, default: u64, min: u64, max: u64) -> Result<u64, ErrorData> {
    let Some(v) = v else { return Ok(default) };
    let secs =
        v.parse::<Window>().map_err(|e| ErrorData::invalid_params(format!("{field}: {e}"), None))?.secs();
    if !(min..=max).contains(&secs) {
        return Err(ErrorData::invalid_params(
            format!("{field} {v:?} is {secs}s; allowed {min}s to {max}s, e.g. \"{}s\"", default),
            None,
        ));
    }
    Ok(secs)
}

/// Which resource `get_resource_usage` reports.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceArg {
    /// CPU time, run-queue delay, context switches.
    Cpu,
    /// Resident memory, page allocations, OOM kills.
    Memory,
    /// Block IO bytes, operations, latency per device; fsync latency.
    Io,
    /// TCP connections, errors, handshake latency.
    Network,
    /// Everything.
    #[default]
    All,
}

/// Arguments of `get_resource_usage`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceUsageArgs {
    /// The service (a name from list_services).
    pub service: String,
    /// Which resource. Default all.
    pub resource: Option<ResourceArg>,
    /// How far back to look: a number and a unit s, m, h or d, e.g. "30s", "5m", "1h", "2d"; at most "7d". Default "5m".
    pub window: Option<String>,
}

/// Kind of a discrete event.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKindArg {
    /// A TCP connect that never reached ESTABLISHED.
    FailedConnect,
    /// A TCP RST received.
    ResetReceived,
    /// A TCP RST sent.
    ResetSent,
    /// The OOM killer chose a process.
    OomKill,
    /// A process exited with a non-zero status or was killed by a signal.
    FailedExit,
}

/// One value or a list of them.
// Models pass either for a list argument ("oom_kill" as often as ["oom_kill"]); both mean the
// same, so neither is an error. (The doc line above is the schema's description.)
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list of values.
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The values, as a list.
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for OneOrMany<T> {
    // By hand rather than `untagged`: serde's untagged error ("did not match any variant")
    // would hide the value's own, which names the values allowed.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            v @ serde_json::Value::Array(_) => {
                serde_json::from_value(v).map(OneOrMany::Many).map_err(D::Error::custom)
            }
            v => serde_json::from_value(v).map(OneOrMany::One).map_err(D::Error::custom),
        }
    }
}

/// Arguments of `get_events`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsArgs {
    /// Only events of this service.
    pub service: Option<String>,
    /// Only these kinds: one (e.g. "oom_kill") or a list (e.g. ["failed_connect", "reset_received"]). Default all.
    pub kind: Option<OneOrMany<EventKindArg>>,
    /// How far back to look: a number and a unit s, m, h or d, e.g. "30s", "5m", "1h", "2d"; at most "7d". Default "5m".
    pub window: Option<String>,
    /// Most events to return, 1-500. Default 50.
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page, to continue with older events.
    pub cursor: Option<u64>,
}

/// Turns a collector query error into MCP invalid-params, keeping its message.
pub fn invalid(e: QueryError) -> ErrorData {
    ErrorData::invalid_params(e.to_string(), None)
}

/// Parses an optional window argument.
pub fn window(w: Option<&str>) -> Result<Window, ErrorData> {
    match w {
        None => Ok(Window::DEFAULT),
        Some(s) => s.parse().map_err(|e: bpfsight_collector::window::WindowError| {
            ErrorData::invalid_params(e.to_string(), None)
        }),
    }
}

/// Parses an optional limit argument.
pub fn limit(l: Option<i64>, default: usize) -> Result<usize, ErrorData> {
    check_limit(l, default).map_err(invalid)
}

/// Which incidents a search may return, by origin.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentSource {
    /// The curated failure patterns shipped with bpfsight.
    Seeded,
    /// Incidents recorded on this deployment.
    Recorded,
}

/// Arguments of `similar_incidents`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarIncidentsArgs {
    /// Match the live symptoms of this service (a name from list_services) over `window`.
    /// Without service and description: the whole host's symptoms.
    pub service: Option<String>,
    /// What is happening, in words (e.g. "clients time out connecting to postgres after the deploy").
    /// With a service too, symptoms and words are fused (equal weight).
    pub description: Option<String>,
    /// How many matches, 1-50. Default 5.
    pub top_k: Option<i64>,
    /// Symptom window: a number and a unit s, m, h or d, e.g. "30s", "5m", "1h", "2d"; at most "7d". Default "5m".
    pub window: Option<String>,
    /// Only incidents carrying all of these tags: one (e.g. "network") or a list (e.g. ["network", "database"]).
    pub tags: Option<OneOrMany<String>>,
    /// Only seeded patterns or only incidents recorded here. Default both.
    pub source: Option<IncidentSource>,
}

/// Arguments of `record_incident`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordIncidentArgs {
    /// One line naming the failure, 1-200 characters.
    pub title: String,
    /// The affected service; its live symptoms over `window` become the incident's signature.
    /// Default: the whole host.
    pub service: Option<String>,
    /// The window the incident covers, ending now: e.g. "5m", "1h"; at most "7d". Default "5m".
    pub window: Option<String>,
    /// What was observed.
    pub description: Option<String>,
    /// Why it happened (required).
    pub root_cause: String,
    /// What fixed it (required).
    pub resolution: String,
    /// Labels such as "network", "database" (one, or a list); at most 16.
    pub tags: Option<OneOrMany<String>>,
}

/// Arguments of `get_incident`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetIncidentArgs {
    /// The incident id, as returned by similar_incidents or record_incident (e.g. "inc-3" or "dns-timeouts").
    pub id: String,
}

/// Checks `top_k`: `1..=MAX_TOP_K`, default 5.
pub fn top_k(k: Option<i64>) -> Result<usize, ErrorData> {
    let max = bpfsight_casebase::MAX_TOP_K;
    match k {
        None => Ok(5),
        Some(n) if n >= 1 && n as u64 <= max as u64 => Ok(n as usize),
        Some(n) => Err(ErrorData::invalid_params(
            format!("invalid top_k: {n} is out of range; use an integer from 1 to {max}"),
            None,
        )),
    }
}
