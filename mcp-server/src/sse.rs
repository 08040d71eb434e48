//! The 2024-11-05 HTTP+SSE transport, for clients that predate streamable HTTP: `GET /sse`
//! opens an event stream whose first event names the endpoint to POST messages to
//! (`/messages?sessionId=ID`); responses come back as `message` events on the stream.
//!
//! rmcp 3 ships no server for it, so this adapts each session to rmcp's generic sink/stream
//! transport: POSTed messages go into a channel the server reads, and what the server writes
//! goes out as SSE events. It sits behind the same gate (Origin, bearer token) as `/mcp`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rmcp::ServiceExt;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;

use crate::server::BpfsightServer;

/// Open SSE sessions: where each session's POSTed messages go.
pub struct SseSessions {
    server: BpfsightServer,
    sessions: Mutex<HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>>,
    max_sessions: usize,
}

impl SseSessions {
    /// Sessions served by `server`, at most `max_sessions` at once.
    pub fn new(server: BpfsightServer, max_sessions: usize) -> Arc<Self> {
        Arc::new(SseSessions { server, sessions: Mutex::new(HashMap::new()), max_sessions })
    }
}

/// An unguessable session id: the POST endpoint is addressed by it.
fn session_id() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `GET /sse`: starts a session and streams its messages.
pub async fn open(State(s): State<Arc<SseSessions>>) -> Response {
    let id = session_id();
    let (to_server, from_client) = mpsc::channel::<ClientJsonRpcMessage>(64);
    let (to_client, from_server) = mpsc::channel::<ServerJsonRpcMessage>(64);
    {
        let mut sessions = s.sessions.lock().expect("sessions lock");
        if sessions.len() >= s.max_sessions {
            return (StatusCode::SERVICE_UNAVAILABLE, "too many SSE sessions").into_response();
        }
        sessions.insert(id.clone(), to_server);
    }
    let gauge = s.server.metrics();
    gauge.sse_sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let server = s.server.clone();
    let registry = s.clone();
    let sid = id.clone();
    tokio::spawn(async move {
        let transport = (PollSender::new(to_client), ReceiverStream::new(from_client));
        match server.serve(transport).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => tracing::debug!(session = %sid, error = %e, "SSE session ended before initialising"),
        }
        registry.sessions.lock().expect("sessions lock").remove(&sid);
        gauge.sse_sessions.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    });
    let endpoint = Event::default().event("endpoint").data(format!("/messages?sessionId={id}"));
    let messages = ReceiverStream::new(from_server).map(|m| {
        let data = serde_json::to_string(&m).unwrap_or_default();
        Ok::<_, Infallible>(Event::default().event("message").data(data))
    });
    let stream = futures::stream::once(async move { Ok::<_, Infallible>(endpoint) }).chain(messages);
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// Query of `POST /messages`.
#[derive(serde::Deserialize)]
pub struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: String,
}

/// `POST /messages?sessionId=ID`: one JSON-RPC message for that session.
pub async fn post(
    State(s): State<Arc<SseSessions>>,
    Query(q): Query<SessionQuery>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes): Result<Bytes, _> = axum::body::to_bytes(body, 1 << 20).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let mut msg: ClientJsonRpcMessage = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not a JSON-RPC message: {e}")).into_response(),
    };
    // The tools read the caller (principal, session) from the request parts, as on /mcp.
    let mut parts = parts;
    if let Ok(v) = http::HeaderValue::from_str(&q.session_id) {
        parts.headers.insert("mcp-session-id", v);
    }
    msg.insert_extension(parts);
    let tx = s.sessions.lock().expect("sessions lock").get(&q.session_id).cloned();
    match tx {
        Some(tx) if tx.send(msg).await.is_ok() => (StatusCode::ACCEPTED, "Accepted").into_response(),
        _ => (StatusCode::NOT_FOUND, "unknown or closed session").into_response(),
    }
}
