//! `bpfsight`: the command-line entry point. Thin: parses flags, starts the collector, serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bpfsight::audit::AuditLog;
use bpfsight::auth::Tokens;
use bpfsight::http::HttpConfig;
use bpfsight::redact::{Redactor, Treatment};
use bpfsight::{BpfsightServer, Policy};
use bpfsight_collector::{Collector, CollectorConfig, Store, Window};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;

/// eBPF observability for LLM agents, over the Model Context Protocol.
#[derive(Parser)]
#[command(name = "bpfsight", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MCP server: on stdin/stdout (what an MCP client's config points at), or with
    /// --http over streamable HTTP.
    Serve(ServeArgs),
    /// Print the tools with their input schemas and annotations, as JSON (needs no privileges).
    Tools(PolicyArgs),
    /// Collect for a moment, run one tool, print its result; exit 1 if the tool failed.
    /// For CI jobs: "what did the kernel see while the tests ran".
    Call(CallArgs),
}

#[derive(Args)]
struct PolicyArgs {
    /// IP addresses in results: keep, mask, or hash (stable keyed hash). Loopback stays as is.
    #[arg(long, value_enum, default_value = "keep")]
    redact_ips: Treatment,
    /// User names in results (in /home/NAME and user=NAME): keep, mask, or hash.
    #[arg(long, value_enum, default_value = "keep")]
    redact_users: Treatment,
    /// Key file for `hash` redaction (created with a random key if missing), so the same
    /// address hashes the same across restarts. BPFSIGHT_REDACTION_KEY overrides it.
    #[arg(long, value_name = "PATH", default_value = "/var/lib/bpfsight/redaction.key")]
    redaction_key_file: PathBuf,
    /// Only offer these tools (comma-separated), for clients that cap the tool count.
    #[arg(long, value_delimiter = ',')]
    tools: Option<Vec<String>>,
    /// Never offer these tools (comma-separated).
    #[arg(long, value_delimiter = ',')]
    deny_tools: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Serve MCP over streamable HTTP at http://ADDR/mcp instead of stdio (e.g. 127.0.0.1:8765).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Bearer tokens for --http, one `NAME ROLE SECRET` per line (ROLE read or write). Also read
    /// from the BPFSIGHT_TOKENS environment variable; never from the command line.
    #[arg(long, value_name = "PATH")]
    tokens_file: Option<PathBuf>,
    /// Browser origin allowed to call the HTTP endpoint besides loopback ones (repeatable).
    #[arg(long, value_name = "ORIGIN")]
    allowed_origin: Vec<String>,
    /// Host name clients use to reach a non-loopback --http address (repeatable).
    #[arg(long, value_name = "HOST")]
    allowed_host: Vec<String>,
    /// Append one JSON line per tool call to this file.
    #[arg(long, value_name = "PATH")]
    audit_log: Option<PathBuf>,
    /// Rotate the audit log to PATH.1 past this many bytes.
    #[arg(long, default_value_t = 64 << 20)]
    audit_max_bytes: u64,
    /// Largest HTTP request body accepted, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Longest a tool call may run, seconds.
    #[arg(long, default_value_t = 10)]
    call_timeout_secs: u64,
    /// HTTP sessions idle this long are closed, seconds.
    #[arg(long, default_value_t = 600)]
    session_idle_secs: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (opt-in; unauthenticated, so keep it on
    /// loopback or a monitoring network).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Most legacy SSE sessions open at once.
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
    #[command(flatten)]
    policy: PolicyArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Table,
}

#[derive(Args)]
struct CallArgs {
    /// Tool name (see `bpfsight tools`).
    tool: String,
    /// Tool arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// How long to collect before calling, e.g. "3s", "1m".
    #[arg(long, default_value = "3s")]
    collect: String,
    #[command(flatten)]
    policy: PolicyArgs,
}

fn main() -> ExitCode {
    // Logs go to stderr: stdout carries only MCP frames in stdio mode, and results in `call`.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BPFSIGHT_LOG")
                .unwrap_or_else(|_| "info,rmcp=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bpfsight: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Serve(a) => rt.block_on(serve(a)),
        Command::Tools(a) => tools(a),
        Command::Call(a) => rt.block_on(call(a)),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpfsight: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn policy_from(a: &PolicyArgs) -> anyhow::Result<Policy> {
    let hashing = a.redact_ips == Treatment::Hash || a.redact_users == Treatment::Hash;
    let key = if hashing { redaction_key(&a.redaction_key_file)? } else { (0, 0) };
    Ok(Policy {
        allow_tools: a.tools.clone(),
        deny_tools: a.deny_tools.clone(),
        redactor: Arc::new(Redactor::new(a.redact_ips, a.redact_users, key)),
        ..Policy::default()
    })
}

/// The per-deployment redaction hash key: from BPFSIGHT_REDACTION_KEY, else from the key
/// file, created with 16 random bytes (mode 600) on first use.
fn redaction_key(path: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    use std::hash::Hasher;
    let material = match std::env::var("BPFSIGHT_REDACTION_KEY") {
        Ok(k) if !k.is_empty() => k.into_bytes(),
        _ => match std::fs::read(path) {
            Ok(k) if k.len() >= 16 => k,
            _ => {
                let mut k = [0u8; 16];
                std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut k)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("writing the redaction key {}", path.display()))?;
                std::io::Write::write_all(&mut f, &k)?;
                k.to_vec()
            }
        },
    };
    let half = |salt: u64| {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(salt, !salt);
        h.write(&material);
        h.finish()
    };
    Ok((half(1), half(2)))
}

fn load_tokens(path: Option<&PathBuf>) -> anyhow::Result<Option<Arc<Tokens>>> {
    let tokens = match path {
        Some(p) => Some(Tokens::from_file(p)?),
        None => Tokens::from_env("BPFSIGHT_TOKENS")?,
    };
    Ok(tokens.map(Arc::new))
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut policy = policy_from(&a.policy)?;
    policy.call_timeout = Duration::from_secs(a.call_timeout_secs.max(1));
    if let Some(path) = &a.audit_log {
        let log = AuditLog::open(path.clone(), a.audit_max_bytes)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        policy.audit = Some(Arc::new(log));
    }
    // Refuse unsafe HTTP set-ups before touching the kernel.
    let http = match a.http {
        Some(addr) => {
            policy.transport = "http";
            let cfg = HttpConfig {
                addr,
                tokens: load_tokens(a.tokens_file.as_ref())?,
                allowed_origins: a.allowed_origin.clone(),
                allowed_hosts: a.allowed_host.clone(),
                max_body_bytes: a.max_body_bytes,
                session_idle: Duration::from_secs(a.session_idle_secs.max(1)),
                max_sessions: a.max_sessions,
            };
            bpfsight::http::check(&cfg)?;
            Some(cfg)
        }
        None => None,
    };
    let collector = Collector::start(CollectorConfig::default()).context("starting the eBPF collector")?;
    let server = BpfsightServer::with_policy(collector.store().clone(), policy)?;
    if let Some(addr) = a.metrics {
        let exporter = bpfsight::metrics::Exporter {
            metrics: server.metrics(),
            store: collector.store().clone(),
            programs: collector.program_stats_handle(),
        };
        tokio::spawn(async move {
            if let Err(e) = bpfsight::metrics::serve(addr, exporter).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    match http {
        Some(cfg) => {
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            bpfsight::http::serve(server, cfg, shutdown).await?;
        }
        None => {
            let running = server.serve(rmcp::transport::stdio()).await.context("MCP handshake on stdio")?;
            tracing::info!("serving MCP on stdio");
            running.waiting().await.context("MCP session")?;
        }
    }
    drop(collector);
    Ok(ExitCode::SUCCESS)
}

fn tools(a: PolicyArgs) -> anyhow::Result<ExitCode> {
    // The tool list does not depend on data: an empty store will do, and no privileges.
    let store = Arc::new(std::sync::RwLock::new(Store::default()));
    let server = BpfsightServer::with_policy(store, policy_from(&a)?)?;
    println!("{}", serde_json::to_string_pretty(&server.tools())?);
    Ok(ExitCode::SUCCESS)
}

async fn call(a: CallArgs) -> anyhow::Result<ExitCode> {
    let args: serde_json::Value = serde_json::from_str(&a.args).context("--args is not valid JSON")?;
    let serde_json::Value::Object(args) = args else {
        bail!("--args must be a JSON object, like '{{\"window\": \"1m\"}}'")
    };
    let collect: Window = a.collect.parse().map_err(|e| anyhow::anyhow!("--collect: {e}"))?;
    policy_from(&a.policy)?; // refuse a bad policy before collecting
    let collector = Collector::start(CollectorConfig::default()).context("starting the eBPF collector")?;
    tokio::time::sleep(Duration::from_secs(collect.secs()) + Duration::from_millis(1100)).await;
    // The call goes through the real MCP server and client, over an in-process pipe.
    let server = BpfsightServer::with_policy(collector.store().clone(), policy_from(&a.policy)?)?;
    let (server_io, client_io) = tokio::io::duplex(1 << 20);
    let server_task = tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    let client = ().serve(client_io).await.context("MCP handshake")?;
    let outcome = client.call_tool(CallToolRequestParams::new(a.tool.clone()).with_arguments(args)).await;
    let _ = client.cancel().await;
    server_task.abort();
    drop(collector);
    let result = match outcome {
        Ok(r) => r,
        Err(rmcp::ServiceError::McpError(e)) => {
            eprintln!("bpfsight: {} failed: {}", a.tool, e.message);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => bail!("calling {}: {e}", a.tool),
    };
    if result.is_error == Some(true) {
        let text: Vec<String> =
            result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect();
        eprintln!("bpfsight: {} failed: {}", a.tool, text.join(" "));
        return Ok(ExitCode::FAILURE);
    }
    let value = result.structured_content.unwrap_or(serde_json::Value::Null);
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Format::Table => print!("{}", table(&value)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders the first array of objects in a result (e.g. `services`) as a text table of its
/// scalar columns; other fields go on a header line.
fn table(v: &serde_json::Value) -> String {
    use serde_json::Value;
    let Value::Object(map) = v else { return format!("{v}\n") };
    let mut out = String::new();
    let scalars: Vec<String> = map
        .iter()
        .filter(|(_, x)| !x.is_array() && !x.is_object())
        .map(|(k, x)| format!("{k}={x}"))
        .collect();
    out += &scalars.join("  ");
    out.push('\n');
    let Some((_, Value::Array(rows))) =
        map.iter().find(|(_, x)| x.as_array().is_some_and(|a| a.iter().all(Value::is_object)))
    else {
        return out;
    };
    let Some(Value::Object(first)) = rows.first() else { return out };
    let cols: Vec<&String> =
        first.iter().filter(|(_, x)| !x.is_array() && !x.is_object()).map(|(k, _)| k).collect();
    let cell = |r: &Value, c: &str| match r.get(c) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| rows.iter().map(|r| cell(r, c).len()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let line = |vals: Vec<String>| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    out += &line(cols.iter().map(|c| c.to_string()).collect());
    for r in rows {
        out += &line(cols.iter().map(|c| cell(r, c)).collect());
    }
    out
}
