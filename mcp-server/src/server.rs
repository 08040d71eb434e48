//! The MCP server: one struct, one method per tool.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bpfsight_collector::Store;
use bpfsight_collector::host_query::{EventQuery, LatencyKind, LatencyQuery, Resource};
use bpfsight_collector::query::{ConnectionQuery, ERROR_RATE_DEFINITION, ErrorQuery, ServiceListQuery};
use bpfsight_collector::store::EventKind;
use rmcp::handler::server::common::schema_for_type;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    CompletionInfo, ContentBlock, GetPromptRequestParams, GetPromptResponse, Implementation,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference, ResourceContents,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::Serialize;

use bpfsight_casebase::{CaseBase, Filter, NewIncident, Query, Source, TimeRange};

use crate::args::{
    self, Args, ConnectionStatsArgs, EventKindArg, EventsArgs, GetIncidentArgs, HighLatencyArgs,
    IncidentSource, LatencyKindArg, ListServicesArgs, OneOrMany, PredictArgs, RecordIncidentArgs,
    ResourceArg, ResourceUsageArgs, ServiceErrorsArgs, SimilarIncidentsArgs,
};
use crate::audit::{AuditLog, AuditRecord, now_rfc3339};
use crate::auth::{Principal, Role};
use crate::redact::Redactor;
use crate::result_cache::{self, ResultCache};
use crate::{incidents, prompts, resources, summary, symptoms};

/// How a server instance treats callers: who they are by default, which tools exist, where
/// calls are audited.
#[derive(Clone)]
pub struct Policy {
    /// Principal for calls that carry none (stdio, or loopback HTTP without tokens).
    pub local_principal: Principal,
    /// `stdio` or `http`, for the audit log.
    pub transport: &'static str,
    /// Only these tools are listed and callable (None: all).
    pub allow_tools: Option<Vec<String>>,
    /// These tools are hidden and refused.
    pub deny_tools: Vec<String>,
    /// Where calls are recorded.
    pub audit: Option<Arc<AuditLog>>,
    /// Longest a tool call may take.
    pub call_timeout: Duration,
    /// Applied to every result (and to the arguments the audit log records).
    pub redactor: Arc<Redactor>,
    /// Call counters for the metrics endpoint.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Offer tools that change state (record_incident). Off by default: such tools are then
    /// neither listed nor callable, whatever the caller's role.
    pub write_tools: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            local_principal: Principal { name: "local".into(), role: Role::Read },
            transport: "stdio",
            allow_tools: None,
            deny_tools: Vec::new(),
            audit: None,
            call_timeout: Duration::from_secs(10),
            redactor: Arc::new(Redactor::default()),
            metrics: Arc::default(),
            write_tools: false,
        }
    }
}

/// A `--tools` / `--deny-tools` entry that names no tool.
#[derive(Debug, thiserror::Error)]
#[error("unknown tool {name:?} in {flag}; the tools are: {known}")]
pub struct UnknownTool {
    name: String,
    flag: &'static str,
    known: String,
}

/// Serves bpfsight's tools over any rmcp transport, reading from a collector's [`Store`].
#[derive(Clone)]
pub struct BpfsightServer {
    store: Arc<RwLock<Store>>,
    casebase: Option<Arc<CaseBase>>,
    predictor: Option<Arc<crate::predict::Predictor>>,
    tool_router: ToolRouter<Self>,
    policy: Arc<Policy>,
    /// Answers of the store-query tools at the store's current generation, shared by every
    /// session of this server.
    answers: Arc<ResultCache>,
}

const INSTRUCTIONS: &str = "bpfsight answers questions about this Linux host from eBPF data \
collected in the kernel, per service (process): TCP retransmits, failed connects and resets with \
their peers; failed syscalls by errno; OOM kills and failed exits; run-queue (CPU contention), \
block IO, fsync and TCP handshake latency; CPU time, memory and IO per service. Start with \
get_service_errors (what is failing) or get_high_latency_services (what is slow), then \
get_resource_usage or get_connection_stats for one service, and get_events for the discrete \
events; list_services shows the names to use. Windows are like \"30s\", \"5m\" (default), \"1h\", \
\"2d\" (up to 7 days); observed_s tells how much of a window was watched (less just after \
the server started), and rates are per observed second. Counts are exact kernel counts, not samples. Prompts triage_host, \
investigate_service and write_postmortem lay out a whole investigation; resources bpfsight://health, \
bpfsight://services and bpfsight://services/{service} are the same data as attachable JSON.";

fn result<T: Serialize>(value: &T, text: String) -> Result<CallToolResult, ErrorData> {
    let json = serde_json::to_value(value)
        .map_err(|e| ErrorData::internal_error(format!("serialising result: {e}"), None))?;
    // Not `CallToolResult::structured`: it renders the whole JSON as the text block too, which
    // the summary replaces at once (7 % of the server's CPU under HTTP load).
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(json);
    Ok(r)
}

impl BpfsightServer {
    /// A server answering from `store` with the default policy (stdio, all tools, read role).
    pub fn new(store: Arc<RwLock<Store>>) -> Self {
        Self::with_policy(store, Policy::default()).expect("the default policy names no tools")
    }

    /// A server answering from `store` under `policy`; fails if the policy names unknown tools.
    pub fn with_policy(store: Arc<RwLock<Store>>, policy: Policy) -> Result<Self, UnknownTool> {
        let mut tool_router = Self::tool_router();
        let known: Vec<String> = tool_router.list_all().into_iter().map(|t| t.name.to_string()).collect();
        let check = |names: &[String], flag: &'static str| {
            for n in names {
                if !known.contains(n) {
                    return Err(UnknownTool { name: n.clone(), flag, known: known.join(", ") });
                }
            }
            Ok(())
        };
        if let Some(allow) = &policy.allow_tools {
            check(allow, "--tools")?;
        }
        check(&policy.deny_tools, "--deny-tools")?;
        let writes: Vec<String> =
            tool_router.list_all().into_iter().filter(changes_state).map(|t| t.name.to_string()).collect();
        for name in &known {
            let allowed = policy.allow_tools.as_ref().is_none_or(|a| a.contains(name));
            let write_hidden = !policy.write_tools && writes.contains(name);
            if !allowed || write_hidden || policy.deny_tools.contains(name) {
                tool_router.disable_route(name.clone());
            }
        }
        Ok(BpfsightServer {
            store,
            casebase: None,
            predictor: None,
            tool_router,
            policy: Arc::new(policy),
            answers: Arc::default(),
        })
    }

    /// Answers the incident tools from `casebase`; without one they report it missing.
    pub fn with_casebase(mut self, casebase: Arc<CaseBase>) -> Self {
        self.casebase = Some(casebase);
        self
    }

    /// Answers `predict_anomaly` from `predictor`; without one it reports it missing.
    pub fn with_predictor(mut self, predictor: Arc<crate::predict::Predictor>) -> Self {
        self.predictor = Some(predictor);
        self
    }

    /// Why `tool` cannot be called here, and what can.
    fn unavailable(&self, tool: &str) -> ErrorData {
        let listed: Vec<String> =
            self.tool_router.list_all().into_iter().map(|t| t.name.to_string()).collect();
        let why = if self.tool_router.has_route(tool) {
            let write = self.tool_router.get(tool).is_some_and(changes_state);
            if write && !self.policy.write_tools {
                format!("{tool} changes state and this server runs read-only (start it with --write-tools)")
            } else {
                format!("{tool} is turned off on this server (--tools / --deny-tools)")
            }
        } else {
            format!("unknown tool {tool:?}")
        };
        ErrorData::invalid_params(format!("{why}; available tools: {}", listed.join(", ")), None)
    }

    fn casebase(&self) -> Result<&CaseBase, ErrorData> {
        self.casebase.as_deref().ok_or_else(|| {
            ErrorData::internal_error("the incident case base is not loaded in this server", None)
        })
    }

    /// The call counters this server updates.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.policy.metrics.clone()
    }

    /// Every tool this server offers, as `tools/list` returns them.
    pub fn tools(&self) -> Vec<rmcp::model::Tool> {
        self.tool_router.list_all()
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, Store>, ErrorData> {
        self.store
            .read()
            .map_err(|_| ErrorData::internal_error("collector state is poisoned; restart bpfsight", None))
    }
}

#[tool_router]
impl BpfsightServer {
    #[tool(
        description = "List the services (processes, by name) on this host: live pids, TCP connections open now, \
connections opened and network errors (failed connects + resets + retransmits) in the last 5 minutes, CPU use \
in the last minute, resident memory. Kernel threads are one service, [kernel]. Services with network activity \
come first. Use the names it returns as `service` in other tools. Filters: name_contains, active_only (TCP), \
active_within (any activity, e.g. \"1m\"). Returns {services: [{service, identity, pids, process_count, running, \
active_connections, opened_5m, network_errors_5m, last_tcp_activity_s_ago, last_seen_s_ago, cpu_pct_1m, \
rss_bytes, cmdline, exe}], total, truncated, collector: {drops...}}. cmdline and exe are a live process's, or \
the last seen for a service that stopped or crashed.",
        input_schema = schema_for_type::<ListServicesArgs>(),
        annotations(title = "List services", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_services(&self, Args(a): Args<ListServicesArgs>) -> Result<CallToolResult, ErrorData> {
        let limit = args::limit(a.limit, 50)?;
        let active_within = a.active_within.as_deref().map(|w| args::window(Some(w))).transpose()?;
        let q = ServiceListQuery {
            name_contains: a.name_contains,
            active_only: a.active_only,
            active_within,
            limit: Some(limit),
        };
        let list = self.read()?.list_services(&q);
        result(&list, summary::services(&list))
    }

    #[tool(
        description = "TCP connection health per service over a time window, from kernel tracepoints: connections \
opened (active = we connected, passive = we accepted), closed, still established, failed connects \
(SYN_SENT -> CLOSE: refused, timed out, unreachable) and of those `refused_connects` (the peer answered \
the SYN with a RST: nothing listens, or a firewall rejects; the rest timed out: SYNs dropped, peer \
unreachable), resets sent and received, retransmitted segments \
(total and per second), sends and bytes sent, mean connection lifetime, and the top 5 peers \
(addr, port) by errors. Services with the most errors come first. Pass `service` for one service.",
        input_schema = schema_for_type::<ConnectionStatsArgs>(),
        annotations(title = "Connection stats", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn get_connection_stats(
        &self,
        Args(a): Args<ConnectionStatsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let window = args::window(a.window.as_deref())?;
        let limit = args::limit(a.limit, 20)?;
        let q = ConnectionQuery { service: a.service, window, limit: Some(limit) };
        let report = self.read()?.connection_stats(&q).map_err(args::invalid)?;
        result(&report, summary::noting_unavailable(summary::connections(&report), &report.unavailable))
    }

    #[tool(
        description = "Services with errors over the window, worst first: OOM kills, processes that exited \
with a failure (non-zero status or a crash signal; SIGKILL/SIGTERM/SIGINT/SIGHUP are counted as `killed`, not \
as failures), a TCP error rate at or above `threshold_pct` (default 1.0), or failed syscalls at or above \
`min_syscall_errors_per_s` (default 5.0 per second watched; benign ones such as EAGAIN, EINPROGRESS, EINTR, futex timeouts, \
ENOENT from stat/access existence checks and from execve searching PATH are listed but not counted). Each row has the counts \
behind the rate, the worst peers, the top failed syscalls by errno (e.g. openat ENOENT), oom_kills, \
failed_exits and the latest events. TCP error rate definition: error_rate_pct = 100 * errors / attempts, where \
errors = failed_connects + resets_sent + resets_received + retransmits, less refused_connects (a connect the peer \
refused with a RST is one error, not two), and attempts = connect attempts (connections the service opened + its \
failed connects) + accepted connections + sends (sendmsg calls on its TCP sockets that sent data) + retransmits; \
an error with no attempt in the window (a reset on an older connection) counts as its own attempt, so the rate is \
at most 100. failed_connects - refused_connects are connects that timed out or were given up (SYNs dropped, \
peer unreachable). \
Pseudo-services in brackets are kernel traffic with no owning process, e.g. [no-socket] for resets \
answering connects to closed ports.",
        input_schema = schema_for_type::<ServiceErrorsArgs>(),
        annotations(title = "Services with network errors", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn get_service_errors(
        &self,
        Args(a): Args<ServiceErrorsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let window = args::window(a.window.as_deref())?;
        let limit = args::limit(a.limit, 20)?;
        let q = ErrorQuery {
            threshold_pct: a.threshold_pct.unwrap_or(1.0),
            min_syscall_errors_per_s: a.min_syscall_errors_per_s.unwrap_or(5.0),
            window,
            limit,
        };
        let report = self.read()?.service_errors(&q).map_err(args::invalid)?;
        debug_assert_eq!(report.definition, ERROR_RATE_DEFINITION);
        result(&report, summary::noting_unavailable(summary::errors(&report), &report.unavailable))
    }

    #[tool(
        description = "Which services are slow right now? Services whose latency at `percentile` (default 99) \
over the window is at least `threshold_ms`, worst first. kind: runqueue (default; waiting for a CPU: CPU \
contention), io (block requests, queued to completion as iostat's await, attributed to the issuing process), syscall (connect, \
accept, accept4, fsync, fdatasync, sync_file_range; one row per service and syscall), connect (TCP handshake of \
successful connects). Percentiles come from in-kernel log2 histograms, so they are within a factor of two; mean \
is exact. Returns {kind, percentile, threshold_ms, services: [{service, syscall?, value_ms, p50_ms, p99_ms, \
mean_ms, max_ms, samples}], total, truncated, method, source}.",
        input_schema = schema_for_type::<HighLatencyArgs>(),
        annotations(title = "Services with high latency", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn get_high_latency_services(
        &self,
        Args(a): Args<HighLatencyArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let q = LatencyQuery {
            threshold_ms: a.threshold_ms,
            kind: match a.kind.unwrap_or_default() {
                LatencyKindArg::Runqueue => LatencyKind::Runqueue,
                LatencyKindArg::Io => LatencyKind::Io,
                LatencyKindArg::Syscall => LatencyKind::Syscall,
                LatencyKindArg::Connect => LatencyKind::Connect,
            },
            percentile: a.percentile.unwrap_or(99.0),
            window: args::window(a.window.as_deref())?,
            limit: args::limit(a.limit, 20)?,
        };
        let report = self.read()?.high_latency(&q).map_err(args::invalid)?;
        result(&report, summary::noting_unavailable(summary::latency(&report), &report.unavailable))
    }

    #[tool(
        description = "What one service used over the window. cpu: cpu_pct (share of one CPU), run-queue delay \
p50/p99, voluntary and involuntary context switches per second. memory: rss_bytes now, page allocations per \
second, OOM kills. io: read/write bytes per second, operations, discards (blocks released, not data moved), errors, \
request latency p50/p99, per device, and fsync/fdatasync latency. network: TCP connections, errors, peers and handshake latency. \
Always: process starts and exits, and the top failed syscalls by errno (benign ones marked). resource: cpu, memory, io, network or all (default).",
        input_schema = schema_for_type::<ResourceUsageArgs>(),
        annotations(title = "Resource usage of a service", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn get_resource_usage(
        &self,
        Args(a): Args<ResourceUsageArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let window = args::window(a.window.as_deref())?;
        let resource = match a.resource.unwrap_or_default() {
            ResourceArg::Cpu => Resource::Cpu,
            ResourceArg::Memory => Resource::Memory,
            ResourceArg::Io => Resource::Io,
            ResourceArg::Network => Resource::Network,
            ResourceArg::All => Resource::All,
        };
        let report = self.read()?.resource_usage(&a.service, resource, window).map_err(args::invalid)?;
        result(&report, summary::noting_unavailable(summary::resources(&report), &report.unavailable))
    }

    #[tool(
        description = "Discrete events, newest first: failed_connect, reset_received, reset_sent (with local and \
peer endpoints), oom_kill (victim's virtual and anonymous resident memory), failed_exit (exit_status, or the \
signal that killed it, and core_dumped). Filter by service, kind (one or a list) and window; page with limit and the \
returned next_cursor. Returns {events: [{seq, time_ms, kind, service, pid, ...}], total, next_cursor, evicted}.",
        input_schema = schema_for_type::<EventsArgs>(),
        annotations(title = "Events", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn get_events(&self, Args(a): Args<EventsArgs>) -> Result<CallToolResult, ErrorData> {
        let q = EventQuery {
            service: a.service,
            kinds: a
                .kind
                .map(OneOrMany::into_vec)
                .unwrap_or_default()
                .into_iter()
                .map(|k| match k {
                    EventKindArg::FailedConnect => EventKind::FailedConnect,
                    EventKindArg::ResetReceived => EventKind::ResetReceived,
                    EventKindArg::ResetSent => EventKind::ResetSent,
                    EventKindArg::OomKill => EventKind::OomKill,
                    EventKindArg::FailedExit => EventKind::FailedExit,
                })
                .collect(),
            window: args::window(a.window.as_deref())?,
            limit: args::limit(a.limit, 50)?,
            cursor: a.cursor,
        };
        let page = self.read()?.events(&q).map_err(args::invalid)?;
        result(&page, summary::noting_unavailable(summary::events(&page), &page.unavailable))
    }

    #[tool(
        description = "Is this host (or one service) behaving abnormally, and where is it heading? Judges every \
second of the last `window` (default 30s) on eight per-second features (run-queue delay p99, page allocations/s, \
TCP retransmits/s, block IO latency p99, context switches/s, failed syscalls/s, failed connects/s, CPU %) against \
what the detector expected: an LSTM forecaster trained in the background on this host's own history (after 10 \
minutes by default, retrained hourly), or before that a rolling robust z-score. The threshold is calibrated on \
the scope's recent scores (extreme-value fit), not a constant. Without `service`: the host plus the 5 services \
scoring highest. Returns {service, detector (lstm|robust-z), is_anomaly, score, threshold, at, contributors: \
[{feature, value, expected, z, share}], forecast: [{feature, unit, values (one per second over `horizon`, default \
1m), threshold, crosses_at (seconds until the forecast reaches the threshold)}], services?, model: {state, samples, \
trained_at, val_error, ...}}.",
        input_schema = schema_for_type::<PredictArgs>(),
        annotations(title = "Predict anomalies", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn predict_anomaly(&self, Args(a): Args<PredictArgs>) -> Result<CallToolResult, ErrorData> {
        let horizon = args::seconds("horizon", a.horizon.as_deref(), 60, 10, 300)?;
        let window = args::seconds("window", a.window.as_deref(), 30, 1, 300)?;
        let service = non_empty("service", a.service)?;
        let predictor = self.predictor.as_ref().ok_or_else(|| {
            ErrorData::internal_error("the anomaly predictor does not run in this server", None)
        })?;
        let p = predictor
            .predict(service.as_deref(), horizon, window)
            .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
        let text = summary::prediction(&p);
        result(&p, text)
    }

    #[tool(
        description = "Have we seen this before? Finds the past incidents and known failure patterns closest to \
what is happening now, with their root cause and the fix that worked. Give `service` to match its live kernel \
symptoms over `window` (retransmits, failed connects, resets, connection churn, latencies, CPU, IO, failed \
syscalls, OOM kills, crashes), `description` to match words (\"clients time out connecting to the database\"), \
or both (fused). With neither, the whole host's symptoms are used. Symptoms are matched only when one is at \
least noticeable (1 on the 0..5 scale). Returns {query: {signature_summary: {scope, measured, unmeasured, counts}, text}, matches: [{id, title, \
score (-1..1, higher is closer), signature_score, text_score, matched_on (shared symptoms, and description), \
root_cause, resolution, tags, source (seeded pattern or recorded here)}]}. get_incident gives the full record.",
        input_schema = schema_for_type::<SimilarIncidentsArgs>(),
        annotations(title = "Similar incidents", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn similar_incidents(
        &self,
        Args(a): Args<SimilarIncidentsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let window = args::window(a.window.as_deref())?;
        let top_k = args::top_k(a.top_k)?;
        let description = non_empty("description", a.description)?;
        let casebase = self.casebase()?;
        // Symptoms from the service, or from the host when there is nothing else to go on.
        let symptoms = if a.service.is_some() || description.is_none() {
            Some(symptoms::live(&*self.read()?, a.service.as_deref(), window).map_err(args::invalid)?)
        } else {
            None
        };
        let text = match &description {
            Some(d) => Some(casebase.embedder().embed(d).await.map_err(|e| casebase_error(e.into()))?),
            None => None,
        };
        let noticeable = symptoms.as_ref().is_some_and(|(_, s)| s.noticeable());
        if description.is_none()
            && !noticeable
            && let Some((_, seen)) = &symptoms
        {
            let strongest = match seen.strongest() {
                Some((f, v)) if v > 0.0 => format!(" (the strongest, {f}, is at {v:.2}; 1 is noticeable)"),
                _ => String::new(),
            };
            return Err(ErrorData::invalid_params(
                format!(
                    "{} shows no abnormal symptoms in {}{strongest}, so there is nothing to match; add a \
                     description of the problem, or widen the window",
                    seen.scope,
                    summary::span(seen.window_s, seen.observed_s)
                ),
                None,
            ));
        }
        let filter = Filter {
            service: None,
            tags: a.tags.map(OneOrMany::into_vec).unwrap_or_default(),
            source: a.source.map(|s| match s {
                IncidentSource::Seeded => Source::Seeded,
                IncidentSource::Recorded => Source::Recorded,
            }),
        };
        let q = Query {
            // Symptoms below noticeable would steer a text search by their shape alone.
            signature: symptoms.as_ref().map(|(s, _)| s).filter(|_| noticeable),
            text: text.as_deref(),
            top_k,
            filter,
            text_weight: 0.5,
        };
        let matches = casebase.search(&q).map_err(casebase_error)?;
        let report = incidents::SimilarReport::new(symptoms.map(|(_, s)| s), description, matches);
        let text = report.summary();
        result(&report, text)
    }

    #[tool(
        description = "Remember an incident so similar_incidents finds it next time: title, root cause and the fix, \
with the live kernel symptoms of `service` (or the host) over `window` as its signature. Changes state: it needs a \
write token and a server started with write tools enabled. Returns {incident: {id, ...}, signature_summary}.",
        input_schema = schema_for_type::<RecordIncidentArgs>(),
        annotations(title = "Record incident", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn record_incident(&self, Args(a): Args<RecordIncidentArgs>) -> Result<CallToolResult, ErrorData> {
        let window = args::window(a.window.as_deref())?;
        let casebase = self.casebase()?;
        let (signature, summary) =
            symptoms::live(&*self.read()?, a.service.as_deref(), window).map_err(args::invalid)?;
        let now = now_ms();
        let new = NewIncident {
            title: a.title,
            services: a.service.into_iter().collect(),
            time_range: Some(TimeRange { start_ms: now.saturating_sub(window.secs() * 1000), end_ms: now }),
            signature,
            description: a.description.unwrap_or_default(),
            root_cause: a.root_cause,
            resolution: a.resolution,
            tags: a.tags.map(OneOrMany::into_vec).unwrap_or_default(),
        };
        let incident = casebase.record(new, now).await.map_err(casebase_error)?;
        let text = format!("Recorded {}: {}", incident.id, incident.title);
        result(&serde_json::json!({"incident": incident, "signature_summary": summary}), text)
    }

    #[tool(
        description = "The full record of one incident or failure pattern by id (from similar_incidents or \
record_incident): title, services, time range, symptom signature (deviation per metric, 0 normal .. 5 extreme), \
description, root cause, resolution, tags, source.",
        input_schema = schema_for_type::<GetIncidentArgs>(),
        annotations(title = "Get incident", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn get_incident(&self, Args(a): Args<GetIncidentArgs>) -> Result<CallToolResult, ErrorData> {
        let incident = self.casebase()?.get(a.id.trim()).map_err(casebase_error)?;
        let text = format!(
            "{}: {}\nRoot cause: {}\nResolution: {}",
            incident.id, incident.title, incident.root_cause, incident.resolution
        );
        result(&incident, text)
    }
}

fn casebase_error(e: bpfsight_casebase::Error) -> ErrorData {
    use bpfsight_casebase::Error as E;
    match e {
        E::Invalid { .. } | E::NotFound { .. } => ErrorData::invalid_params(e.to_string(), None),
        E::ReadOnly => ErrorData::invalid_request(e.to_string(), None),
        _ => ErrorData::internal_error(e.to_string(), None),
    }
}

fn non_empty(field: &str, v: Option<String>) -> Result<Option<String>, ErrorData> {
    match v {
        Some(s) if s.trim().is_empty() => Err(ErrorData::invalid_params(
            format!("invalid {field}: it is empty; leave it out or give some text"),
            None,
        )),
        other => Ok(other),
    }
}

/// Whether `tool` may change state: anything not annotated read-only counts as a write.
fn changes_state(tool: &rmcp::model::Tool) -> bool {
    tool.annotations.as_ref().and_then(|a| a.read_only_hint) != Some(true)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Who is calling, from the HTTP layer's extensions, else the policy's local principal.
fn caller(ctx: &RequestContext<RoleServer>, policy: &Policy) -> (Principal, String) {
    let parts = ctx.extensions.get::<http::request::Parts>();
    let principal = parts
        .and_then(|p| p.extensions.get::<Principal>().cloned())
        .unwrap_or_else(|| policy.local_principal.clone());
    let session = parts
        .and_then(|p| p.headers.get("mcp-session-id"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or(policy.transport)
        .to_string();
    (principal, session)
}

/// One finished call, as the metrics and the audit log record it.
struct Outcome<'a> {
    started: Instant,
    principal: &'a Principal,
    session: &'a str,
    tool: &'a str,
    /// Redacted; `None` when there is no audit log to write them to.
    arguments: Option<&'a serde_json::Value>,
    outcome: &'static str,
    error: Option<&'a str>,
    result_bytes: usize,
}

impl BpfsightServer {
    /// The JSON of the answer `tool(arguments)` had at the store's current generation, if it
    /// may be given again (see [`result_cache`]); the call is then counted and audited as if
    /// it had run. The HTTP layer answers repeated calls with it without a trip through the
    /// MCP session (see [`crate::reuse`]). Redacted, like every answer that was kept.
    pub fn answer_again(
        &self,
        tool: &str,
        arguments: Option<&rmcp::model::JsonObject>,
        principal: &Principal,
        session: &str,
    ) -> Option<bytes::Bytes> {
        let started = Instant::now();
        // Kept answers are of read-only tools, which every role may call; checked anyway, so
        // that a tool that changes state can never be answered past the role check.
        let read_only = self.tool_router.get(tool).is_some_and(|t| !changes_state(t));
        if !read_only || self.tool_router.is_disabled(tool) {
            return None;
        }
        let key = result_cache::key(tool, arguments)?;
        let generation = self.store.read().ok()?.generation();
        let json = self.answers.get_json(generation, &key)?;
        self.policy.metrics.answers_reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.account(Outcome {
            started,
            principal,
            session,
            tool,
            arguments: self.audited_arguments(arguments).as_ref(),
            outcome: "ok",
            error: None,
            result_bytes: json.len(),
        });
        Some(json)
    }

    /// The arguments as the audit log records them (redacted), if there is an audit log.
    fn audited_arguments(&self, arguments: Option<&rmcp::model::JsonObject>) -> Option<serde_json::Value> {
        self.policy.audit.as_ref().map(|_| {
            let mut a = serde_json::Value::Object(arguments.cloned().unwrap_or_default());
            self.policy.redactor.redact_value(&mut a);
            a
        })
    }

    /// Counts and audits a request that is not a tool call (a prompt or a resource read) under
    /// its method name, like a call: who asked, with what, and how it ended.
    fn account_request(
        &self,
        started: Instant,
        context: &RequestContext<RoleServer>,
        method: &str,
        arguments: &rmcp::model::JsonObject,
        error: Option<&ErrorData>,
    ) {
        let (principal, session) = caller(context, &self.policy);
        let arguments = self.audited_arguments(Some(arguments));
        let outcome = match error {
            None => "ok",
            Some(e) if e.code == rmcp::model::ErrorCode::INVALID_PARAMS => "invalid_params",
            Some(e) if e.code == rmcp::model::ErrorCode::RESOURCE_NOT_FOUND => "not_found",
            Some(_) => "error",
        };
        self.account(Outcome {
            started,
            principal: &principal,
            session: &session,
            tool: method,
            arguments: arguments.as_ref(),
            outcome,
            error: error.map(|e| e.message.as_ref()),
            result_bytes: 0,
        });
    }

    /// Counts a finished call and writes its audit line.
    fn account(&self, o: Outcome<'_>) {
        let elapsed = o.started.elapsed().as_secs_f64();
        // Metric labels only for names this server knows: a client naming a new tool in every
        // call would otherwise grow the counters without bound. The audit line keeps the name.
        let known = self.tool_router.has_route(o.tool) || o.tool.contains('/');
        self.policy.metrics.record_call(if known { o.tool } else { "(unknown)" }, o.outcome, elapsed);
        if let Some(audit) = &self.policy.audit {
            audit.write(&AuditRecord {
                time: now_rfc3339(),
                session: o.session,
                principal: &o.principal.name,
                transport: self.policy.transport,
                tool: o.tool,
                arguments: o.arguments.unwrap_or(&serde_json::Value::Null),
                outcome: o.outcome,
                error: o.error,
                result_bytes: o.result_bytes,
                latency_ms: elapsed * 1e3,
            });
        }
    }

    /// Runs a permitted call, redacted, or gives the answer it had at this store generation.
    async fn answer(
        &self,
        tool: &str,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // (store generation, key) when this answer may be reused.
        let reusable = result_cache::key(tool, request.arguments.as_ref())
            .and_then(|k| Some((self.store.read().ok()?.generation(), k)));
        if let Some((g, k)) = &reusable
            && let Some(hit) = self.answers.get(*g, k)
        {
            self.policy.metrics.answers_reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(CallToolResponse::Complete(hit));
        }
        let call = self.tool_router.call(ToolCallContext::new(self, request, context));
        let mut result = match tokio::time::timeout(self.policy.call_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(ErrorData::internal_error(
                format!("{tool} did not finish within {:?}", self.policy.call_timeout),
                None,
            )),
        };
        if let Ok(CallToolResponse::Complete(r)) = &mut result {
            // Nothing leaves the process unredacted.
            self.policy.redactor.redact_result(r);
            if let Some((g, k)) = reusable {
                self.answers.put(g, k, r);
            }
        }
        result
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BpfsightServer {
    /// Every call goes through here: role check, timeout, and one audit line.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let started = Instant::now();
        let (principal, session) = caller(&context, &self.policy);
        let tool = request.name.to_string();
        // The audit log is the only reader of the arguments after the call.
        let arguments = self.audited_arguments(request.arguments.as_ref());
        let read_only = self.tool_router.get(&tool).is_none_or(|t| !changes_state(t));
        let result = if !self.tool_router.has_route(&tool) || self.tool_router.is_disabled(&tool) {
            Err(self.unavailable(&tool))
        } else if !read_only && principal.role < Role::Write {
            Err(ErrorData::invalid_request(
                format!("{} has the read role; {tool} changes state and needs a write token", principal.name),
                None,
            ))
        } else {
            self.answer(&tool, request, context).await
        };
        let (outcome, error, bytes) = match &result {
            Ok(CallToolResponse::Complete(r)) => {
                // Serialising again only to measure costs as much as the call itself: only
                // the audit log needs the size.
                let bytes = match &self.policy.audit {
                    Some(_) => serde_json::to_vec(r).map_or(0, |v| v.len()),
                    None => 0,
                };
                let err = r.is_error == Some(true);
                (if err { "tool_error" } else { "ok" }, None, bytes)
            }
            Ok(_) => ("ok", None, 0),
            Err(e) if e.code == rmcp::model::ErrorCode::INVALID_PARAMS => {
                ("invalid_params", Some(e.message.to_string()), 0)
            }
            Err(e) if e.code == rmcp::model::ErrorCode::INVALID_REQUEST => {
                ("denied", Some(e.message.to_string()), 0)
            }
            Err(e) => ("error", Some(e.message.to_string()), 0),
        };
        self.account(Outcome {
            started,
            principal: &principal,
            session: &session,
            tool: &tool,
            arguments: arguments.as_ref(),
            outcome,
            error: error.as_deref(),
            result_bytes: bytes,
        });
        result
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(
            prompts::all().iter().map(prompts::Template::describe).collect(),
        ))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let started = Instant::now();
        let result = prompts::get(&request.name).and_then(|t| t.render(request.arguments.as_ref()));
        let mut arguments = request.arguments.clone().unwrap_or_default();
        arguments.insert("name".into(), request.name.clone().into());
        self.account_request(started, &context, "prompts/get", &arguments, result.as_ref().err());
        Ok(GetPromptResponse::Complete(result?))
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let kind = match &request.r#ref {
            Reference::Prompt(p) => prompts::get(&p.name)?.argument_kind(&request.argument.name),
            Reference::Resource(r) if r.uri == resources::SERVICE && request.argument.name == "service" => {
                Some(prompts::ArgKind::Service)
            }
            Reference::Resource(r) if r.uri != resources::SERVICE => {
                return Err(ErrorData::invalid_params(
                    format!("no resource template {:?}; the template is {}", r.uri, resources::SERVICE),
                    None,
                ));
            }
            _ => None,
        };
        let typed = request.argument.value.as_str();
        let (values, total) = match kind {
            Some(prompts::ArgKind::Service) => {
                self.read()?.complete_service(typed, CompletionInfo::MAX_VALUES)
            }
            Some(prompts::ArgKind::Window) => {
                let v: Vec<String> = prompts::WINDOW_SUGGESTIONS
                    .iter()
                    .filter(|w| w.starts_with(typed))
                    .map(|w| w.to_string())
                    .collect();
                let n = v.len();
                (v, n)
            }
            _ => (Vec::new(), 0),
        };
        let has_more = total > values.len();
        let info = CompletionInfo::with_pagination(values, Some(total as u32), has_more)
            .map_err(|e| ErrorData::internal_error(e, None))?;
        Ok(CompleteResult::new(info))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(resources::list()))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(resources::templates()))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let started = Instant::now();
        let text =
            self.read().and_then(|store| resources::read(&store, &request.uri)).and_then(|mut value| {
                // Nothing leaves the process unredacted, resources included.
                self.policy.redactor.redact_value(&mut value);
                serde_json::to_string_pretty(&value)
                    .map_err(|e| ErrorData::internal_error(format!("serialising {}: {e}", request.uri), None))
            });
        let mut arguments = rmcp::model::JsonObject::new();
        arguments.insert("uri".into(), request.uri.clone().into());
        self.account_request(started, &context, "resources/read", &arguments, text.as_ref().err());
        let contents = ResourceContents::text(text?, request.uri).with_mime_type("application/json");
        Ok(ReadResourceResponse::Complete(ReadResourceResult::new(vec![contents])))
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .enable_completions()
                .build(),
        )
        .with_server_info(Implementation::new("bpfsight", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }
}
