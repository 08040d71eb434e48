//! Repeated tool calls answered at the HTTP layer.
//!
//! rmcp routes every streamable-HTTP request through its session: the session lookup, a
//! channel to the session's worker task, a task for the handler, a channel back, and an SSE
//! stream for the reply, with the result tree cloned and serialised on the way. Under load
//! that plumbing is most of the server's CPU per call, far more than the query. When the
//! call is one whose answer is already kept for the store's current generation
//! ([`crate::result_cache`]), the reply is fixed bytes: this layer sends them in the form rmcp
//! would (an SSE `data:` event holding the JSON-RPC reply), counted and audited like any
//! other call ([`BpfsightServer::answer_again`]).
//!
//! It only answers what rmcp would answer the same way, and hands everything else over
//! untouched: a `tools/call` with nothing but a name and arguments, in a session that exists
//! and that rmcp itself has served lately, with the headers rmcp checks in their ordinary
//! form (a protocol version from before per-request metadata, JSON in, JSON and SSE
//! accepted). "Lately" matters because only traffic through rmcp resets a session's idle
//! timer: a session whose calls were all answered here would expire under a busy client, so
//! one call per session goes through rmcp every [`Reuse::refresh`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, header};
use rmcp::model::{JsonObject, RequestId};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde::Deserialize;

use crate::auth::Principal;
use crate::server::BpfsightServer;

/// Requests larger than this are never answered here (tool calls are a few hundred bytes).
const MAX_CALL_BYTES: usize = 16 * 1024;

/// Protocol versions whose requests rmcp serves in a session without per-request metadata
/// or header checks against the body; later versions go to rmcp.
const SESSION_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// State of the layer (see the module docs).
pub struct Reuse {
    server: BpfsightServer,
    sessions: Arc<LocalSessionManager>,
    /// When rmcp last answered a request of each session.
    served: Mutex<HashMap<String, Instant>>,
    /// How long after rmcp last served a session this layer may answer for it.
    refresh: Duration,
    /// Entries kept in `served` before stale ones are dropped.
    max_served: usize,
}

impl Reuse {
    /// A layer answering for `server`'s sessions in `sessions`, which expire after
    /// `session_idle` without traffic through rmcp.
    pub fn new(
        server: BpfsightServer,
        sessions: Arc<LocalSessionManager>,
        session_idle: Duration,
        max_sessions: usize,
    ) -> Self {
        Reuse {
            server,
            sessions,
            served: Mutex::default(),
            refresh: (session_idle / 4).min(Duration::from_secs(30)),
            max_served: 2 * max_sessions.max(16),
        }
    }

    fn recently_served(&self, session: &str) -> bool {
        let served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        served.get(session).is_some_and(|t| t.elapsed() < self.refresh)
    }

    fn mark_served(&self, session: &str) {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if served.len() >= self.max_served {
            served.retain(|_, t| t.elapsed() < self.refresh);
            if served.len() >= self.max_served {
                // Sessions opened and closed faster than `refresh`: forgetting them only sends
                // their next call through rmcp.
                served.clear();
            }
        }
        served.insert(session.to_string(), Instant::now());
    }
}

/// A JSON-RPC `tools/call` request with only a name and arguments; anything more (a `_meta`,
/// a task, other fields) does not parse and goes to rmcp.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCall<'a> {
    jsonrpc: &'a str,
    id: RequestId,
    method: &'a str,
    params: CallParams,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallParams {
    name: String,
    #[serde(default)]
    arguments: Option<JsonObject>,
}

/// Middleware for the streamable-HTTP endpoint (see the module docs).
pub async fn answer_repeated_calls(State(r): State<Arc<Reuse>>, req: Request, next: Next) -> Response {
    let Some(session) = session_of(&req) else {
        return next.run(req).await;
    };
    let req = if r.recently_served(&session) {
        match try_answer(&r, &session, req).await {
            Ok(resp) => return resp,
            Err(req) => req,
        }
    } else {
        req
    };
    let resp = next.run(req).await;
    if resp.status().is_success() {
        r.mark_served(&session);
    }
    resp
}

/// The session of a POST that could be a plain tool call, judged from its headers alone.
fn session_of(req: &Request) -> Option<String> {
    if req.method() != http::Method::POST {
        return None;
    }
    let h = req.headers();
    let plain = accepts_json_and_sse(h)
        && essence(h.get(header::CONTENT_TYPE)?.to_str().ok()?).eq_ignore_ascii_case("application/json")
        && h.get("mcp-protocol-version")
            .is_none_or(|v| v.to_str().is_ok_and(|v| SESSION_VERSIONS.contains(&v)));
    plain.then(|| h.get("mcp-session-id")?.to_str().ok().map(str::to_string))?
}

fn essence(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or_default().trim()
}

fn accepts_json_and_sse(h: &HeaderMap) -> bool {
    let (mut json, mut sse) = (false, false);
    for value in h.get_all(header::ACCEPT) {
        for t in value.to_str().unwrap_or_default().split(',').map(essence) {
            json |= t.eq_ignore_ascii_case("application/json");
            sse |= t.eq_ignore_ascii_case("text/event-stream");
        }
    }
    json && sse
}

/// The reply to `req` from a kept answer, or `req` back (its body read and put back) for rmcp.
async fn try_answer(r: &Reuse, session: &str, req: Request) -> Result<Response, Request> {
    let small = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= MAX_CALL_BYTES);
    if !small {
        return Err(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_CALL_BYTES).await {
        Ok(b) => b,
        // The client went away or lied about the length: rmcp reports it as it would.
        Err(_) => return Err(Request::from_parts(parts, Body::empty())),
    };
    let answer = reply(r, session, &parts, &bytes).await;
    answer.ok_or_else(|| Request::from_parts(parts, Body::from(bytes)))
}

async fn reply(r: &Reuse, session: &str, parts: &http::request::Parts, body: &[u8]) -> Option<Response> {
    let call: ToolCall = serde_json::from_slice(body).ok()?;
    if call.jsonrpc != "2.0" || call.method != "tools/call" {
        return None;
    }
    let principal = parts.extensions.get::<Principal>()?;
    // A deleted or expired session gets rmcp's 404.
    if !r.sessions.sessions.read().await.contains_key(session) {
        return None;
    }
    let json =
        r.server.answer_again(&call.params.name, call.params.arguments.as_ref(), principal, session)?;
    Some(sse_reply(&call.id, &json))
}

/// The JSON-RPC reply carrying `result`, as one SSE event, with rmcp's headers.
fn sse_reply(id: &RequestId, result: &[u8]) -> Response {
    let mut body = Vec::with_capacity(result.len() + 64);
    body.extend_from_slice(br#"data: {"jsonrpc":"2.0","id":"#);
    // A number or a string: serialising either cannot fail.
    let _ = serde_json::to_writer(&mut body, id);
    body.extend_from_slice(br#","result":"#);
    body.extend_from_slice(result);
    body.extend_from_slice(b"}\n\n");
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from(body))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{CallToolResult, ContentBlock, ServerJsonRpcMessage, ServerResult};

    #[test]
    fn the_reply_is_the_json_rmcp_would_send() {
        let result = CallToolResult::success(vec![ContentBlock::text("quiet \"host\"")]);
        for id in [RequestId::Number(7), RequestId::String("a\"b".into())] {
            let rmcp_json = serde_json::to_vec(&ServerJsonRpcMessage::response(
                ServerResult::CallToolResult(result.clone()),
                id.clone(),
            ))
            .unwrap();
            let resp = sse_reply(&id, &serde_json::to_vec(&result).unwrap());
            let body =
                futures::executor::block_on(axum::body::to_bytes(resp.into_body(), usize::MAX)).unwrap();
            let event = body.strip_prefix(b"data: ").unwrap().strip_suffix(b"\n\n").unwrap();
            assert_eq!(event, &rmcp_json[..]);
        }
    }

    #[test]
    fn only_plain_tool_calls_parse() {
        let plain = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"list_services","arguments":{"limit":2}}}"#;
        let call: ToolCall = serde_json::from_slice(plain).unwrap();
        assert_eq!(call.params.name, "list_services");
        let with_meta = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":1}}}"#;
        assert!(serde_json::from_slice::<ToolCall>(with_meta).is_err());
        let float_id = br#"{"jsonrpc":"2.0","id":1.5,"method":"tools/call","params":{"name":"x"}}"#;
        assert!(serde_json::from_slice::<ToolCall>(float_id).is_err());
    }

    #[test]
    fn headers_decide_what_may_be_answered_here() {
        let req = |version: Option<&str>, accept: &str| {
            let mut b = Request::builder()
                .method("POST")
                .header("mcp-session-id", "s1")
                .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                .header(header::ACCEPT, accept);
            if let Some(v) = version {
                b = b.header("mcp-protocol-version", v);
            }
            b.body(Body::empty()).unwrap()
        };
        let both = "application/json, text/event-stream";
        assert_eq!(session_of(&req(None, both)).as_deref(), Some("s1"));
        assert_eq!(session_of(&req(Some("2025-11-25"), both)).as_deref(), Some("s1"));
        assert_eq!(session_of(&req(Some("2026-07-28"), both)), None);
        assert_eq!(session_of(&req(None, "application/json")), None);
    }
}
