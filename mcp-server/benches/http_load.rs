//! Remote load: 64 concurrent streamable-HTTP sessions x 1,000 tool calls each against the
//! real binary with its live collector, authenticated with a bearer token. Prints errors,
//! throughput and latency percentiles. Needs root (the server loads eBPF).
//!
//! Run: `cargo bench -p bpfsight --bench http_load` (SESSIONS and CALLS override the sizes,
//! BPFSIGHT_BIN another server binary).
//!
//! Sessions ask the same three questions in turn, as dashboards and polling agents do, so most
//! calls are answered with the answer kept for the store's current generation; the report
//! says how many (from the server's `/metrics`). `ARGS=distinct` gives every call its own
//! `limit`, so that nearly every call runs its query: the cost of a call that computes.
//!
//! Client and server share the machine's cores, so the load generator's own CPU is part of
//! every latency. `CLIENT=raw` (the default) drives the protocol with plain HTTP requests on a
//! shared keep-alive pool (what wrk or hey would do); `CLIENT=rmcp` uses rmcp's full client
//! transport (a task and channels per session), which costs more CPU than the server does.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

const TOKEN: &str = "bench-secret-0123456789abcdef";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // reqwest is built without a bundled crypto provider (bpfsight brings ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sessions = env_or("SESSIONS", 64);
    let calls = env_or("CALLS", 1000);
    // BPFSIGHT_BIN runs another build (an A/B comparison on the same machine minutes apart).
    let bin = std::env::var("BPFSIGHT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bpfsight").to_string());
    let distinct = std::env::var("ARGS").is_ok_and(|a| a == "distinct");
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().unwrap()
    };
    let mut child = Command::new(bin)
        .args(["serve", "--http", "127.0.0.1:0", "--metrics", &metrics.to_string()])
        .env("BPFSIGHT_TOKENS", format!("bench read {TOKEN}"))
        .env("BPFSIGHT_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bpfsight serve --http");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut url = None;
    let mut lines = stderr.lines();
    for line in lines.by_ref() {
        let line = line.expect("read stderr");
        if let Some(u) = line.split("listening on ").nth(1) {
            url = Some(u.trim().to_string());
            break;
        }
        eprintln!("{line}");
    }
    std::thread::spawn(move || lines.for_each(drop));
    let url = url.expect("server did not start");
    std::thread::sleep(Duration::from_millis(1500)); // first collector poll

    let raw = std::env::var("CLIENT").map_or(true, |c| c != "rmcp");
    // One client thread with 64 connections, like `wrk -t1 -c64`: client and server share two
    // cores here, and a second client thread mostly competes with the server's two for them
    // (CLIENT_THREADS=2 measures that).
    let client_threads = env_or("CLIENT_THREADS", 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .enable_all()
        .build()
        .unwrap();
    let (lat, errors, wall) = if raw {
        rt.block_on(raw::run(url.clone(), sessions, calls, distinct))
    } else {
        rt.block_on(rmcp_client(url.clone(), sessions, calls, distinct))
    };
    let reused = rt.block_on(answers_reused(metrics));
    let _ = child.kill();
    let _ = child.wait();
    let mut lat = lat;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "bpfsight HTTP load: {sessions} sessions x {calls} calls (streamable HTTP, bearer token, live collector, {} client, {client_threads} client thread(s), {} arguments)",
        if raw { "raw HTTP" } else { "rmcp" },
        if distinct { "distinct" } else { "repeated" }
    );
    let reused = reused.map_or_else(|| "unknown".to_string(), |n| n.to_string());
    println!("   calls: {}  errors: {errors}  answered with a kept answer: {reused}", lat.len());
    println!(
        "   throughput: {:.0} calls/s over {:.1} s",
        lat.len() as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!(
        "   latency: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lat[lat.len() - 1]
    );
    if errors > 0 {
        std::process::exit(1);
    }
}

const TOOLS: [&str; 3] = ["list_services", "get_connection_stats", "get_service_errors"];

/// The arguments of call `c` of session `i`: none, or a `limit` of their own (1..=500, the
/// tools' range) so that concurrent calls rarely share an answer.
fn arguments(
    i: usize,
    c: usize,
    sessions: usize,
    distinct: bool,
) -> serde_json::Map<String, serde_json::Value> {
    let mut args = serde_json::Map::new();
    if distinct {
        // At any moment the sessions are at about the same `c`: each has its own limit then.
        args.insert("limit".into(), ((c * sessions + i) % 500 + 1).into());
    }
    args
}

/// `bpfsight_tool_answers_reused_total` from the server's metrics endpoint.
async fn answers_reused(metrics: std::net::SocketAddr) -> Option<u64> {
    let text = reqwest::get(format!("http://{metrics}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix("bpfsight_tool_answers_reused_total ")?.trim().parse().ok())
}

/// Latencies (ms), errors and wall time of `sessions` rmcp clients making `calls` calls each.
async fn rmcp_client(
    url: String,
    sessions: usize,
    calls: usize,
    distinct: bool,
) -> (Vec<f64>, usize, Duration) {
    let started = Instant::now();
    let url: Arc<str> = url.into();
    let tasks: Vec<_> = (0..sessions)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let cfg = StreamableHttpClientTransportConfig::with_uri(url).auth_header(TOKEN);
                let client =
                    ().serve(StreamableHttpClientTransport::from_config(cfg)).await.expect("initialize");
                let mut lat = Vec::with_capacity(calls);
                let mut errors = 0usize;
                for c in 0..calls {
                    let tool = TOOLS[(i + c) % TOOLS.len()];
                    let t = Instant::now();
                    let params =
                        CallToolRequestParams::new(tool).with_arguments(arguments(i, c, sessions, distinct));
                    let r = client.call_tool(params).await;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    if !matches!(r, Ok(ref res) if res.is_error != Some(true)) {
                        errors += 1;
                    }
                }
                let _ = client.cancel().await;
                (lat, errors)
            })
        })
        .collect();
    gather(tasks, started).await
}

/// Joins the session tasks: all latencies, total errors, wall time since `started`.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<(Vec<f64>, usize)>>,
    started: Instant,
) -> (Vec<f64>, usize, Duration) {
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("session task");
        all.extend(l);
        errors += e;
    }
    (all, errors, started.elapsed())
}

mod raw {
    //! The protocol over plain HTTP: one POST per JSON-RPC message on a shared keep-alive
    //! pool; replies arrive as JSON or as a short SSE stream whose `data:` line is the reply.
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{TOKEN, TOOLS, arguments};

    async fn post(
        client: &reqwest::Client,
        url: &str,
        session: Option<&str>,
        body: String,
    ) -> Result<(Option<String>, String), String> {
        let mut req = client
            .post(url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-06-18")
            .body(body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let sid = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((sid, text))
    }

    pub async fn run(
        url: String,
        sessions: usize,
        calls: usize,
        distinct: bool,
    ) -> (Vec<f64>, usize, Duration) {
        let client = reqwest::Client::builder().pool_max_idle_per_host(sessions).build().unwrap();
        let url: Arc<str> = url.into();
        let started = Instant::now();
        let tasks: Vec<_> = (0..sessions)
            .map(|i| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"http_load","version":"0"}}}"#;
                    let (sid, _) = post(&client, &url, None, init.into()).await.expect("initialize");
                    let sid = sid.expect("no mcp-session-id");
                    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
                    post(&client, &url, Some(&sid), note.into()).await.expect("initialized");
                    let mut lat = Vec::with_capacity(calls);
                    let mut errors = 0usize;
                    for c in 0..calls {
                        let tool = TOOLS[(i + c) % TOOLS.len()];
                        let body = format!(
                            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"{tool}","arguments":{}}}}}"#,
                            c + 1,
                            serde_json::Value::Object(arguments(i, c, sessions, distinct))
                        );
                        let t = Instant::now();
                        let r = post(&client, &url, Some(&sid), body).await;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        let ok = r.is_ok_and(|(_, text)| {
                            text.contains("\"result\"") && !text.contains("\"isError\":true")
                        });
                        errors += usize::from(!ok);
                    }
                    let _ = client.delete(&*url).bearer_auth(TOKEN).header("mcp-session-id", sid).send().await;
                    (lat, errors)
                })
            })
            .collect();
        super::gather(tasks, started).await
    }
}
