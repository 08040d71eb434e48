//! MCP over streamable HTTP (rmcp's transport, at `/mcp`) and the legacy HTTP+SSE transport
//! (`/sse` + `/messages`), behind bpfsight's own gate: Host and Origin validation
//! against DNS rebinding, bearer-token authentication, and a refusal to listen beyond loopback
//! without tokens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::auth::{Principal, Role, Tokens};
use crate::server::BpfsightServer;

/// How the HTTP endpoint is exposed.
pub struct HttpConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Bearer tokens; required unless `addr` is loopback.
    pub tokens: Option<Arc<Tokens>>,
    /// Browser origins allowed besides loopback ones (`https://host:port`).
    pub allowed_origins: Vec<String>,
    /// Host names clients use to reach the server, besides loopback names.
    pub allowed_hosts: Vec<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Sessions idle this long are closed.
    pub session_idle: Duration,
    /// Most sessions open at once, per transport.
    pub max_sessions: usize,
    /// Serve HTTPS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct Gate {
    tokens: Option<Arc<Tokens>>,
    allowed_origins: Vec<String>,
    /// Loopback names and `--allowed-host`s, parsed.
    allowed_hosts: Vec<Authority>,
    anonymous: Principal,
}

/// A host and optional port as rmcp compares them: lowercased, IPv6 without brackets.
#[derive(Debug, PartialEq)]
struct Authority {
    host: String,
    port: Option<u16>,
}

impl Authority {
    fn new(host: &str, port: Option<u16>) -> Self {
        Authority { host: host.trim_matches(['[', ']']).to_ascii_lowercase(), port }
    }

    /// An allowlist entry: `host` or `host:port` (a bare IPv6 address is a host).
    fn allowed(entry: &str) -> Option<Self> {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        Some(match http::uri::Authority::try_from(entry) {
            Ok(a) => Authority::new(a.host(), a.port_u16()),
            Err(_) => Authority::new(entry, None),
        })
    }

    /// Where the request says it is going: its Host header, else the URI's authority (HTTP/2).
    fn of(req: &Request) -> Option<Self> {
        let a = match req.headers().get(header::HOST) {
            Some(h) => http::uri::Authority::try_from(h.to_str().ok()?).ok()?,
            None => req.uri().authority()?.clone(),
        };
        Some(Authority::new(a.host(), a.port_u16()))
    }

    fn admitted_by(&self, allowed: &[Authority]) -> bool {
        allowed.iter().any(|a| a.host == self.host && a.port.is_none_or(|p| self.port == Some(p)))
    }
}

/// The host names the server answers to: loopback ones and the configured ones.
fn allowed_hosts(cfg: &HttpConfig) -> Vec<String> {
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into(), "[::1]".into()];
    hosts.extend(cfg.allowed_hosts.iter().cloned());
    hosts
}

fn deny(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": message}).to_string();
    let mut r = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"bpfsight\""));
    }
    r
}

/// `scheme://host[:port]` -> host, for the loopback check.
fn origin_host(origin: &str) -> Option<&str> {
    let rest = origin.split_once("://")?.1;
    let host =
        if let Some(v6) = rest.strip_prefix('[') { v6.split(']').next()? } else { rest.split(':').next()? };
    Some(host)
}

fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    matches!(origin_host(origin), Some("localhost" | "127.0.0.1" | "::1"))
}

async fn gate(State(g): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    // DNS rebinding: a page on a hostile name resolving to this address must not reach any
    // route, whichever transport it speaks.
    if !Authority::of(&req).is_some_and(|a| a.admitted_by(&g.allowed_hosts)) {
        return deny(StatusCode::FORBIDDEN, "Host not allowed; add the name clients use with --allowed-host");
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| origin_allowed(o, &g.allowed_origins));
        if !ok {
            return deny(StatusCode::FORBIDDEN, "origin not allowed; add it with --allowed-origin");
        }
    }
    let principal = match &g.tokens {
        None => g.anonymous.clone(),
        Some(tokens) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match presented.and_then(|t| tokens.authenticate(t.as_bytes())) {
                Some(p) => p,
                None => return deny(StatusCode::UNAUTHORIZED, "missing or invalid bearer token"),
            }
        }
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}

struct SessionCap {
    sessions: Arc<LocalSessionManager>,
    max: usize,
}

/// Refuses a request that would open a new streamable-HTTP session when `max` are open.
async fn session_cap(State(c): State<Arc<SessionCap>>, req: Request, next: Next) -> Response {
    let opens_session = req.method() == http::Method::POST && !req.headers().contains_key("mcp-session-id");
    if opens_session && c.sessions.sessions.read().await.len() >= c.max {
        let msg = format!(
            "too many open sessions ({}); close idle sessions, wait for them to expire, or raise --max-sessions",
            c.max
        );
        return deny(StatusCode::SERVICE_UNAVAILABLE, &msg);
    }
    next.run(req).await
}

/// Checks the configuration before binding: what would be unsafe is refused with how to fix it.
pub fn check(cfg: &HttpConfig) -> anyhow::Result<()> {
    if !cfg.addr.ip().is_loopback() && cfg.tokens.is_none() {
        bail!(
            "refusing to serve on {} without authentication: anyone who can reach it could query this \
             host. Put tokens in a file (one `NAME ROLE SECRET` per line, ROLE read or write) and pass \
             --tokens-file PATH, or set BPFSIGHT_TOKENS; or listen on 127.0.0.1",
            cfg.addr
        );
    }
    if !cfg.addr.ip().is_loopback() && cfg.allowed_hosts.is_empty() {
        bail!(
            "serving on {} needs --allowed-host NAME for each host name clients use to reach it (Host \
             header validation protects against DNS rebinding)",
            cfg.addr
        );
    }
    Ok(())
}

/// The router: `/mcp` for streamable HTTP, `/sse` and `/messages` for legacy clients, all
/// behind the gate.
pub fn router(server: BpfsightServer, cfg: &HttpConfig) -> Router {
    let mut sc = StreamableHttpServerConfig::default();
    // rmcp checks the Host too; the gate already did, for every route.
    sc.allowed_hosts = allowed_hosts(cfg);
    sc.max_request_body_bytes = cfg.max_body_bytes;
    // A priming event lets a client resume a broken stream from an event store; there is no
    // event store here (tool results are recomputed, not replayed), so it is only overhead.
    sc.sse_retry = None;
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(cfg.session_idle);
    // The session layer primes every request's stream too (its own setting): a third write
    // and TCP segment per call, for the same resumption that has no store behind it here.
    sessions.session_config.sse_retry = None;
    let sessions = Arc::new(sessions);
    let server_for_sse = server.clone();
    let reuse = Arc::new(crate::reuse::Reuse::new(
        server.clone(),
        sessions.clone(),
        cfg.session_idle,
        cfg.max_sessions,
    ));
    let service = StreamableHttpService::new(move || Ok(server.clone()), sessions.clone(), sc);
    let cap = Arc::new(SessionCap { sessions, max: cfg.max_sessions });
    let gate_state = Arc::new(Gate {
        tokens: cfg.tokens.clone(),
        allowed_origins: cfg.allowed_origins.clone(),
        allowed_hosts: allowed_hosts(cfg).iter().filter_map(|h| Authority::allowed(h)).collect(),
        anonymous: Principal { name: "anonymous".into(), role: Role::Read },
    });
    let legacy = crate::sse::SseSessions::new(server_for_sse, cfg.max_sessions);
    Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn(crate::one_write::replies_in_one_write))
        .layer(middleware::from_fn_with_state(reuse, crate::reuse::answer_repeated_calls))
        .layer(middleware::from_fn_with_state(cap, session_cap))
        .route("/sse", axum::routing::get(crate::sse::open))
        .route("/messages", axum::routing::post(crate::sse::post))
        .with_state(legacy)
        .layer(middleware::from_fn_with_state(gate_state, gate))
}

/// How long open connections get to finish after a shutdown signal. A client's event stream
/// (a streamable-HTTP GET, a legacy SSE stream) never finishes by itself: waiting for it would
/// hang until the service manager's SIGKILL, which loses the history's last save.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves until `shutdown` resolves, then gives open requests [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    server: BpfsightServer,
    cfg: HttpConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let grace_over = async move {
        if stopping.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = serve_until(server, cfg, shutdown) => r,
        () = grace_over => {
            tracing::info!(grace_s = SHUTDOWN_GRACE.as_secs(), "closing the connections still open");
            Ok(())
        }
    }
}

async fn serve_until(
    server: BpfsightServer,
    cfg: HttpConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    check(&cfg)?;
    let app = router(server, &cfg);
    let listener =
        tokio::net::TcpListener::bind(cfg.addr).await.with_context(|| format!("binding {}", cfg.addr))?;
    let local = listener.local_addr()?;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %local, scheme, auth = cfg.tokens.as_ref().map_or(0, |t| t.len()), "serving MCP over streamable HTTP at /mcp");
    // Tests and scripts read the bound address (port 0 picks one) from this line on stderr.
    eprintln!("bpfsight: listening on {scheme}://{local}/mcp");
    match cfg.tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("HTTPS server")
        }
        None => {
            // Responses are streamed as several small writes (headers, SSE events, the final
            // chunk); with Nagle on, each reply waits for the client's delayed ACK (~40 ms).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY");
                }
            });
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("HTTP server")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins_pass_and_others_need_the_allowlist() {
        assert!(origin_allowed("http://localhost:6274", &[]));
        assert!(origin_allowed("http://127.0.0.1", &[]));
        assert!(origin_allowed("http://[::1]:80", &[]));
        assert!(!origin_allowed("https://evil.example", &[]));
        assert!(!origin_allowed("http://localhost.evil.example", &[]));
        assert!(origin_allowed("https://app.example.com", &["https://app.example.com".into()]));
    }

    #[test]
    fn hosts_match_by_name_and_by_port_when_the_entry_has_one() {
        let allowed: Vec<Authority> = ["localhost", "::1", "[::1]", "mcp.example.com:8443"]
            .iter()
            .filter_map(|h| Authority::allowed(h))
            .collect();
        let host = |h: &str| {
            let req = Request::builder().header(header::HOST, h).body(axum::body::Body::empty()).unwrap();
            Authority::of(&req).is_some_and(|a| a.admitted_by(&allowed))
        };
        assert!(host("localhost:9000") && host("LOCALHOST") && host("[::1]:80"));
        assert!(host("mcp.example.com:8443"));
        assert!(!host("mcp.example.com") && !host("mcp.example.com:80"));
        assert!(!host("evil.example") && !host("localhost.evil.example") && !host("10.0.0.1:80"));
        assert!(!host("local host"));
    }
}
