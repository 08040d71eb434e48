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
        serde_json::from_value(serde_json::Value::Object(object))
            .map(Args)
            .map_err(|e| ErrorData::invalid_params(format!("invalid arguments: {e}"), None))
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
    /// Most services to return, 1-500. Default 50.
    pub limit: Option<i64>,
}

/// Arguments of `get_connection_stats`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionStatsArgs {
    /// Only this service (a process name as shown by list_services). Default: every service with TCP activity.
    pub service: Option<String>,
    /// How far back to look: a number and a unit s, m or h, e.g. "30s", "5m", "1h"; at most "6h". Default "5m".
    pub window: Option<String>,
    /// Most services to return, 1-500. Default 20.
    pub limit: Option<i64>,
}

/// Arguments of `get_service_errors`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceErrorsArgs {
    /// Report services whose error rate is at least this percentage, 0-100. Default 1.0.
    pub threshold_pct: Option<f64>,
    /// How far back to look: a number and a unit s, m or h, e.g. "30s", "5m", "1h"; at most "6h". Default "5m".
    pub window: Option<String>,
    /// Most services to return, 1-500. Default 20.
    pub limit: Option<i64>,
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
