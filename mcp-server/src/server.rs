//! The MCP server: one struct, one method per tool.

use std::sync::{Arc, RwLock};

use bpfsight_collector::Store;
use bpfsight_collector::query::{ConnectionQuery, ERROR_RATE_DEFINITION, ServiceListQuery};
use rmcp::handler::server::common::schema_for_type;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use serde::Serialize;

use crate::args::{self, Args, ConnectionStatsArgs, ListServicesArgs, ServiceErrorsArgs};
use crate::summary;

/// Serves bpfsight's tools over any rmcp transport, reading from a collector's [`Store`].
#[derive(Clone)]
pub struct BpfsightServer {
    store: Arc<RwLock<Store>>,
    tool_router: ToolRouter<Self>,
}

const INSTRUCTIONS: &str = "bpfsight answers questions about this Linux host from eBPF data \
collected in the kernel: which services (processes) have TCP retransmits, failed connects or \
resets, and with which peers. Start with get_service_errors to find services in trouble, then \
get_connection_stats for one service's detail; list_services shows the names to use. Windows \
are like \"30s\", \"5m\" (default), \"1h\". Counts are exact kernel counts, not samples.";

fn result<T: Serialize>(value: &T, text: String) -> Result<CallToolResult, ErrorData> {
    let json = serde_json::to_value(value)
        .map_err(|e| ErrorData::internal_error(format!("serialising result: {e}"), None))?;
    let mut r = CallToolResult::structured(json);
    r.content = vec![ContentBlock::text(text)];
    Ok(r)
}

impl BpfsightServer {
    /// A server answering from `store`.
    pub fn new(store: Arc<RwLock<Store>>) -> Self {
        BpfsightServer { store, tool_router: Self::tool_router() }
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
connections opened and network errors (failed connects + resets + retransmits) in the last 5 minutes. \
Services with network activity come first. Use the names it returns as `service` in other tools. \
Returns {services: [{service, pids, process_count, running, active_connections, opened_5m, \
network_errors_5m, last_tcp_activity_s_ago}], total, truncated, collector: {drops...}}.",
        input_schema = schema_for_type::<ListServicesArgs>(),
        annotations(title = "List services", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_services(&self, Args(a): Args<ListServicesArgs>) -> Result<CallToolResult, ErrorData> {
        let limit = args::limit(a.limit, 50)?;
        let q = ServiceListQuery {
            name_contains: a.name_contains,
            active_only: a.active_only,
            limit: Some(limit),
        };
        let list = self.read()?.list_services(&q);
        result(&list, summary::services(&list))
    }

    #[tool(
        description = "TCP connection health per service over a time window, from kernel tracepoints: connections \
opened (active = we connected, passive = we accepted), closed, still established, failed connects \
(SYN_SENT -> CLOSE: refused, timed out, unreachable), resets sent and received, retransmitted segments \
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
        result(&report, summary::connections(&report))
    }

    #[tool(
        description = "Services whose network error rate over the window is at or above `threshold_pct` \
(default 1.0), worst first, with the counts behind the rate, the worst peers and the latest failed-connect \
and reset events. Definition: error_rate_pct = 100 * (failed_connects + resets_sent + resets_received + \
retransmits) / (connect attempts + accepted connections + sends), where connect attempts = connections \
the service opened + its failed connects, and sends = sendmsg calls on its TCP sockets that sent data. \
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
        let threshold = a.threshold_pct.unwrap_or(1.0);
        let report = self.read()?.service_errors(threshold, window, limit).map_err(args::invalid)?;
        debug_assert_eq!(report.definition, ERROR_RATE_DEFINITION);
        result(&report, summary::errors(&report))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BpfsightServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bpfsight", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
