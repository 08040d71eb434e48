//! `bpfsight`: the command-line entry point. Thin: parses flags, starts the collector, serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bpfsight::audit::AuditLog;
use bpfsight::auth::Role;
use bpfsight::auth::Tokens;
use bpfsight::config::{
    self, AuditSettings, EmbedderKind, EmbedderSettings, HttpSettings, RedactionSettings, Settings,
};
use bpfsight::http::HttpConfig;
use bpfsight::redact::{Redactor, Treatment};
use bpfsight::{BpfsightServer, Policy};
use bpfsight_casebase::{CaseBase, Embedder, Error as CaseBaseError, RemoteApi, RemoteEmbedder};
use bpfsight_collector::plan::SignalGroup;
use bpfsight_collector::{Backend, Collector, CollectorConfig, CollectorError, HistoryConfig, Store, Window};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;

// Tool calls allocate many small, short-lived JSON values across threads; glibc's allocator
// spent about 15 % of the server's CPU under HTTP load (perf), mimalloc far less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's options (v3 numbering, `include/mimalloc.h`).
const MI_OPTION_ARENA_EAGER_COMMIT: i32 = 4;
const MI_OPTION_PURGE_DELAY: i32 = 15;

unsafe extern "C" {
    fn mi_option_set(option: i32, value: std::ffi::c_long);
}

/// Makes freed memory go back to the kernel. mimalloc by default commits its whole arena up
/// front and purges freed pages a second later; between the kernel BTF parsed at load (a
/// ~33 MB peak) and history buffers growing each second, a server with 1,000 services then
/// held ~55 MiB anonymous memory for ~16 MB of live data. Committing on demand and purging
/// after 100 ms holds it at ~25 MiB. `MIMALLOC_*` variables still override.
///
/// It runs as an ELF constructor, and allocates nothing itself: the first arena is reserved at
/// the first allocation, which Rust's runtime makes before `main`.
extern "C" fn allocator_defaults() {
    for (option, var, value) in [
        (MI_OPTION_ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT", 0),
        (MI_OPTION_PURGE_DELAY, c"MIMALLOC_PURGE_DELAY", 100),
    ] {
        // SAFETY: getenv with a NUL-terminated name, before any thread exists; mi_option_set
        // is a plain setter on mimalloc's option table, with a valid option index.
        unsafe {
            if libc::getenv(var.as_ptr()).is_null() {
                mi_option_set(option, value);
            }
        }
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static ALLOCATOR_DEFAULTS: extern "C" fn() = allocator_defaults;

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
    Tools(CommonArgs),
    /// Collect for a moment, run one tool, print its result; exit 1 if the tool failed.
    /// For CI jobs: "what did the kernel see while the tests ran".
    Call(CallArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Collect and write everything the collector sees to a recording, which
    /// `--source replay:FILE` serves later as if live (to share an incident, or test exactly).
    Record(RecordArgs),
    /// Score the anomaly detectors on labelled data.
    #[command(subcommand)]
    Eval(EvalCommand),
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Run the LSTM and the robust z-score baseline on a NAB-format data set and print
    /// point-wise precision / recall / F1, event recall, false alarms per day and the NAB
    /// standard-profile score, per category and overall.
    Nab(EvalNabArgs),
}

#[derive(Args)]
struct EvalNabArgs {
    /// Directory of `<category>/<name>.csv` files (`timestamp,value`).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Anomaly windows, NAB's `combined_windows.json` format.
    #[arg(long, value_name = "FILE")]
    labels: PathBuf,
    /// Print the full report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Only series whose `category/name.csv` contains this.
    #[arg(long)]
    only: Option<String>,
    /// Run the baseline alone (seconds instead of minutes).
    #[arg(long)]
    baseline_only: bool,
    /// Points between LSTM retrains.
    #[arg(long, default_value_t = 2000)]
    retrain_every: usize,
    /// LSTM training epochs.
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct RecordArgs {
    /// The recording to write (JSON lines; replaced if it exists).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// How long to record, e.g. "30s", "10m" (Ctrl-C stops earlier and keeps what was recorded).
    #[arg(long, default_value = "1m")]
    duration: String,
    #[command(flatten)]
    signals: SignalArgs,
}

/// Where the data tools answer from.
#[derive(Clone, Debug)]
enum Source {
    /// eBPF when it can start, else /proc (with a warning).
    Auto,
    /// The kernel, through the eBPF collector; fail if BPF is not permitted.
    Ebpf,
    /// /proc: coarser, needs no privileges.
    Procfs,
    /// A recording made with `bpfsight record` or `serve --record`.
    Replay(PathBuf),
}

fn parse_source(s: &str) -> Result<Source, String> {
    match s {
        "auto" => Ok(Source::Auto),
        "ebpf" => Ok(Source::Ebpf),
        "procfs" => Ok(Source::Procfs),
        _ => match s.strip_prefix("replay:") {
            Some(path) if !path.is_empty() => Ok(Source::Replay(PathBuf::from(path))),
            _ => Err(format!("{s:?} is not a source; use auto, ebpf, procfs or replay:FILE")),
        },
    }
}

/// The data behind the tools: a running collector, or a replayed recording.
enum Data {
    Live(Collector),
    Replay(Arc<std::sync::RwLock<Store>>),
}

impl Data {
    fn open(
        source: &Source,
        without: &[SignalGroup],
        record: Option<PathBuf>,
        history: Option<HistoryConfig>,
    ) -> anyhow::Result<Data> {
        let live = |backend| CollectorConfig {
            backend,
            record: record.clone(),
            without: without.to_vec(),
            history: history.clone(),
            ..CollectorConfig::default()
        };
        if !without.is_empty() && matches!(source, Source::Procfs | Source::Replay(_)) {
            tracing::warn!("--without chooses eBPF hooks; it changes nothing for /proc or a recording");
        }
        match source {
            Source::Ebpf => {
                Ok(Data::Live(Collector::start(live(Backend::Ebpf)).context("starting the eBPF collector")?))
            }
            Source::Procfs => Ok(Data::Live(
                Collector::start(live(Backend::Procfs)).context("starting the procfs collector")?,
            )),
            Source::Auto => match Collector::start(live(Backend::Ebpf)) {
                Ok(c) => Ok(Data::Live(c)),
                Err(
                    e @ (CollectorError::PermissionDenied { .. }
                    | CollectorError::Unsupported { .. }
                    | CollectorError::LayoutMismatch { .. }),
                ) => {
                    tracing::warn!(
                        reason = %e,
                        "eBPF is not available; answering from /proc instead (coarser; --source ebpf makes this an error)"
                    );
                    Ok(Data::Live(
                        Collector::start(live(Backend::Procfs)).context("starting the procfs collector")?,
                    ))
                }
                Err(e) => Err(e).context("starting the eBPF collector"),
            },
            Source::Replay(path) => {
                if record.is_some() {
                    bail!("--record needs a live source; a replay is already a recording");
                }
                let store = bpfsight_collector::journal::replay(path).context("reading the recording")?;
                tracing::info!(path = %path.display(), "serving a recording");
                Ok(Data::Replay(Arc::new(std::sync::RwLock::new(store))))
            }
        }
    }

    fn store(&self) -> Arc<std::sync::RwLock<Store>> {
        match self {
            Data::Live(c) => c.store().clone(),
            Data::Replay(s) => s.clone(),
        }
    }

    fn programs(&self) -> bpfsight_collector::ProgramStatsHandle {
        match self {
            Data::Live(c) => c.program_stats_handle(),
            Data::Replay(_) => bpfsight_collector::ProgramStatsHandle::default(),
        }
    }

    fn is_live(&self) -> bool {
        matches!(self, Data::Live(_))
    }
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (file, environment and flags merged; secrets masked)
    /// and every problem found; exit 1 if there are problems.
    Check(ServeArgs),
}

/// Options every subcommand shares. Each overrides the config file; most also read an
/// environment variable.
#[derive(Args, Clone)]
struct CommonArgs {
    /// TOML config file (default /etc/bpfsight/config.toml when it exists).
    #[arg(long, env = "BPFSIGHT_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Directory for recorded incidents, the predictor's model and saved history (default
    /// ~/.local/share/bpfsight).
    #[arg(long, env = "BPFSIGHT_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Offer tools that change state (record_incident); hidden and refused otherwise.
    #[arg(long, env = "BPFSIGHT_WRITE_TOOLS", num_args = 0..=1, default_missing_value = "true")]
    write_tools: Option<bool>,
    /// IP addresses in results: keep, mask, or hash (stable keyed hash). Loopback stays as is.
    #[arg(long, value_enum)]
    redact_ips: Option<Treatment>,
    /// User names in results (in /home/NAME and user=NAME): keep, mask, or hash.
    #[arg(long, value_enum)]
    redact_users: Option<Treatment>,
    /// Key file for `hash` redaction (created with a random key if missing), so the same
    /// address hashes the same across restarts. BPFSIGHT_REDACTION_KEY overrides it.
    #[arg(long, value_name = "PATH")]
    redaction_key_file: Option<PathBuf>,
    /// Only offer these tools (comma-separated), for clients that cap the tool count.
    #[arg(long, value_delimiter = ',')]
    tools: Option<Vec<String>>,
    /// Never offer these tools (comma-separated).
    #[arg(long, value_delimiter = ',')]
    deny_tools: Option<Vec<String>>,
    /// Text embedder for incident descriptions: builtin (offline), openai or ollama.
    #[arg(long, value_enum, env = "BPFSIGHT_EMBEDDER")]
    embedder: Option<EmbedderKind>,
    /// Endpoint of a remote embedder, e.g. http://localhost:11434/api/embeddings.
    #[arg(long, env = "BPFSIGHT_EMBEDDER_URL", value_name = "URL")]
    embedder_url: Option<String>,
    /// Model of a remote embedder, e.g. nomic-embed-text.
    #[arg(long, env = "BPFSIGHT_EMBEDDER_MODEL")]
    embedder_model: Option<String>,
    /// Save the collected history to the data directory this often (and at exit), and restore
    /// it at start, so a restart keeps it: a duration like "5m" (the default), or "off".
    #[arg(long, env = "BPFSIGHT_KEEP_HISTORY", value_name = "DURATION|off")]
    keep_history: Option<String>,
    /// Where the data comes from: auto (eBPF, or /proc when BPF is not permitted; default),
    /// ebpf, procfs, or replay:FILE (a recording).
    #[arg(long, env = "BPFSIGHT_SOURCE", value_parser = parse_source, default_value = "auto")]
    source: Source,
    #[command(flatten)]
    signals: SignalArgs,
}

/// Which signals the eBPF source collects (for every command that collects).
#[derive(Args, Clone)]
struct SignalArgs {
    /// Signal groups not to collect, comma-separated: tcp, tcp-sends, scheduler, process,
    /// memory, oom, block, syscalls. Their hooks are not attached (on a syscall-heavy host,
    /// `syscalls` spares every syscall the kernel's traced path), and answers list what is
    /// not collected.
    #[arg(long, env = "BPFSIGHT_WITHOUT", value_delimiter = ',', value_parser = SignalGroup::parse)]
    without: Vec<SignalGroup>,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Serve MCP over streamable HTTP at http://ADDR/mcp instead of stdio (e.g. 127.0.0.1:8765).
    #[arg(long, env = "BPFSIGHT_HTTP", value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Bearer tokens for --http, one `NAME ROLE SECRET` per line (ROLE read or write). Also read
    /// from the BPFSIGHT_TOKENS environment variable; never from the command line.
    #[arg(long, value_name = "PATH")]
    tokens_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS on --http.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Browser origin allowed to call the HTTP endpoint besides loopback ones (repeatable).
    #[arg(long, value_name = "ORIGIN")]
    allowed_origin: Vec<String>,
    /// Host name clients use to reach a non-loopback --http address (repeatable).
    #[arg(long, value_name = "HOST")]
    allowed_host: Vec<String>,
    /// Append one JSON line per tool call to this file.
    #[arg(long, env = "BPFSIGHT_AUDIT_LOG", value_name = "PATH")]
    audit_log: Option<PathBuf>,
    /// Rotate the audit log to PATH.1 past this many bytes (default 64 MiB).
    #[arg(long)]
    audit_max_bytes: Option<u64>,
    /// Largest HTTP request body accepted, bytes (default 1 MiB).
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Longest a tool call may run, seconds (default 10).
    #[arg(long)]
    call_timeout_secs: Option<u64>,
    /// HTTP sessions idle this long are closed, seconds (default 600).
    #[arg(long)]
    session_idle_secs: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (opt-in; unauthenticated, so keep it on
    /// loopback or a monitoring network).
    #[arg(long, env = "BPFSIGHT_METRICS", value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Most sessions open at once, per transport (streamable HTTP, legacy SSE); default 256.
    #[arg(long)]
    max_sessions: Option<usize>,
    /// Also record everything collected to this file, for `--source replay:FILE` later.
    #[arg(long, value_name = "PATH")]
    record: Option<PathBuf>,
    /// History the anomaly predictor collects before training its first LSTM (e.g. "10m").
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    train_after: String,
    /// Interval between LSTM retrains on the newest history (e.g. "1h").
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    retrain_every: String,
    #[command(flatten)]
    common: CommonArgs,
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
    common: CommonArgs,
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
        Command::Tools(a) => rt.block_on(tools(a)),
        Command::Call(a) => rt.block_on(call(a)),
        Command::Config(ConfigCommand::Check(a)) => config_check(a),
        Command::Record(a) => rt.block_on(record(a)),
        Command::Eval(EvalCommand::Nab(a)) => eval_nab(a),
    };
    // Everything worth finishing (the history's last save) is done by now. A stdin read still
    // blocked in a runtime thread (a signal stopped a stdio server) must not keep the process.
    rt.shutdown_timeout(Duration::from_millis(200));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpfsight: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn eval_nab(a: EvalNabArgs) -> anyhow::Result<ExitCode> {
    use bpfsight_predictor::nab;
    let mut series = nab::load(&a.data, &a.labels)?;
    if let Some(only) = &a.only {
        series.retain(|s| s.key.contains(only.as_str()));
        if series.is_empty() {
            bail!("no series matches --only {only:?}");
        }
    }
    let mut cfg = nab::EvalConfig {
        baseline_only: a.baseline_only,
        retrain_every: a.retrain_every.max(100),
        ..Default::default()
    };
    cfg.model.epochs = a.epochs.max(1);
    if let Some(t) = a.threads {
        cfg.threads = t.max(1);
    }
    tracing::info!(series = series.len(), "evaluating");
    let report = nab::evaluate(&a.data, &series, &cfg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags over environment over the config file over defaults.
fn settings(serve: Option<&ServeArgs>, common: &CommonArgs) -> anyhow::Result<Settings> {
    let (config_file, f) = config::read_file(common.config.as_deref())?;
    let s = serve;
    let tokens_file = s.and_then(|s| s.tokens_file.clone()).or(f.http.tokens_file);
    let tokens = match &tokens_file {
        Some(p) => format!("file {}", p.display()),
        None if std::env::var_os("BPFSIGHT_TOKENS").is_some() => "environment BPFSIGHT_TOKENS".into(),
        None => "none".into(),
    };
    let pick_vec = |flag: Vec<String>, file: Option<Vec<String>>| {
        if flag.is_empty() { file.unwrap_or_default() } else { flag }
    };
    let api_key_env = f.embedder.api_key_env.clone();
    let keep_history = common.keep_history.clone().or(f.keep_history).unwrap_or_else(|| "5m".into());
    Ok(Settings {
        keep_history_secs: parse_keep_history(&keep_history)?,
        config_file,
        data_dir: common.data_dir.clone().or(f.data_dir).unwrap_or_else(config::default_data_dir),
        write_tools: common.write_tools.or(f.write_tools).unwrap_or(false),
        tools: common.tools.clone().or(f.tools),
        deny_tools: common.deny_tools.clone().or(f.deny_tools).unwrap_or_default(),
        call_timeout_secs: s.and_then(|s| s.call_timeout_secs).or(f.call_timeout_secs).unwrap_or(10),
        without: if common.signals.without.is_empty() {
            f.without.unwrap_or_default()
        } else {
            common.signals.without.clone()
        },
        http: HttpSettings {
            listen: s.and_then(|s| s.http).or(f.http.listen),
            tokens_file,
            tokens,
            allowed_origins: pick_vec(
                s.map(|s| s.allowed_origin.clone()).unwrap_or_default(),
                f.http.allowed_origins,
            ),
            allowed_hosts: pick_vec(
                s.map(|s| s.allowed_host.clone()).unwrap_or_default(),
                f.http.allowed_hosts,
            ),
            max_body_bytes: s.and_then(|s| s.max_body_bytes).or(f.http.max_body_bytes).unwrap_or(1 << 20),
            session_idle_secs: s
                .and_then(|s| s.session_idle_secs)
                .or(f.http.session_idle_secs)
                .unwrap_or(600),
            max_sessions: s.and_then(|s| s.max_sessions).or(f.http.max_sessions).unwrap_or(256),
            tls_cert: s.and_then(|s| s.tls_cert.clone()).or(f.http.tls_cert),
            tls_key: s.and_then(|s| s.tls_key.clone()).or(f.http.tls_key),
        },
        redaction: RedactionSettings {
            ips: common.redact_ips.or(f.redaction.ips).unwrap_or_default(),
            users: common.redact_users.or(f.redaction.users).unwrap_or_default(),
            key_file: common
                .redaction_key_file
                .clone()
                .or(f.redaction.key_file)
                .unwrap_or_else(|| "/var/lib/bpfsight/redaction.key".into()),
        },
        audit: AuditSettings {
            path: s.and_then(|s| s.audit_log.clone()).or(f.audit.path),
            max_bytes: s.and_then(|s| s.audit_max_bytes).or(f.audit.max_bytes).unwrap_or(64 << 20),
        },
        metrics_listen: s.and_then(|s| s.metrics).or(f.metrics.listen),
        embedder: EmbedderSettings {
            kind: common.embedder.or(f.embedder.kind).unwrap_or_default(),
            url: common.embedder_url.clone().or(f.embedder.url),
            model: common.embedder_model.clone().or(f.embedder.model),
            api_key: match &api_key_env {
                Some(v) if std::env::var_os(v).is_some() => "set (masked)",
                Some(_) => "variable not set",
                None => "none",
            },
            api_key_env,
            timeout_secs: f.embedder.timeout_secs.unwrap_or(10),
        },
    })
}

/// `--keep-history`: how often history is saved, in seconds, or None for "off".
fn parse_keep_history(v: &str) -> anyhow::Result<Option<u64>> {
    if v.trim() == "off" {
        return Ok(None);
    }
    let w: Window =
        v.parse().map_err(|e| anyhow::anyhow!("--keep-history (keep_history): {e}; or \"off\""))?;
    Ok(Some(w.secs()))
}

fn policy_from(s: &Settings) -> anyhow::Result<Policy> {
    let r = &s.redaction;
    let hashing = r.ips == Treatment::Hash || r.users == Treatment::Hash;
    let key = if hashing { redaction_key(&r.key_file)? } else { (0, 0) };
    let mut policy = Policy {
        allow_tools: s.tools.clone(),
        deny_tools: s.deny_tools.clone(),
        redactor: Arc::new(Redactor::new(r.ips, r.users, key)),
        call_timeout: Duration::from_secs(s.call_timeout_secs.max(1)),
        write_tools: s.write_tools,
        ..Policy::default()
    };
    // Whoever runs the binary locally (stdio, `call`) is its operator: enabling write tools is
    // their decision. Remote callers still need a write token.
    if s.write_tools {
        policy.local_principal.role = Role::Write;
    }
    Ok(policy)
}

/// Opens the case base in `<data_dir>/casebase` with the configured embedder.
async fn open_casebase(s: &Settings) -> anyhow::Result<Arc<CaseBase>> {
    let e = &s.embedder;
    let embedder = match e.kind {
        EmbedderKind::Builtin => Embedder::default(),
        kind => {
            let api = if kind == EmbedderKind::Openai { RemoteApi::OpenAi } else { RemoteApi::Ollama };
            let url = e.url.clone().context("a remote embedder needs --embedder-url (or embedder.url)")?;
            let model =
                e.model.clone().context("a remote embedder needs --embedder-model (or embedder.model)")?;
            let key = e.api_key_env.as_ref().and_then(|v| std::env::var(v).ok());
            Embedder::Remote(RemoteEmbedder::new(
                api,
                url,
                model,
                key,
                Duration::from_secs(e.timeout_secs.max(1)),
            )?)
        }
    };
    let dir = s.data_dir.join("casebase");
    let cb = match CaseBase::open(&dir, embedder).await {
        Ok(cb) => cb,
        // Observability must not depend on a writable disk: answer from the seed library and
        // let record_incident say why it cannot write.
        Err(e @ (CaseBaseError::Io { .. } | CaseBaseError::Corrupt { .. })) => {
            tracing::warn!(error = %e, dir = %dir.display(), "case base unavailable; serving the seed library read-only");
            CaseBase::in_memory(Embedder::default()).await?
        }
        // A remote embedder that is down must not take the whole server down: the log is the
        // source of truth, so index with the built-in embedder now and rebuild when it is back.
        Err(e @ CaseBaseError::Embed(_)) => {
            tracing::warn!(error = %e, "remote embedder unavailable; using the built-in embedder");
            CaseBase::open(&dir, Embedder::default())
                .await
                .with_context(|| format!("opening the incident case base in {}", dir.display()))?
        }
        Err(e) => {
            return Err(e).with_context(|| format!("opening the incident case base in {}", dir.display()));
        }
    };
    let st = cb.stats();
    tracing::info!(seeded = st.seeded, recorded = st.recorded, dir = %dir.display(), "incident case base ready");
    Ok(Arc::new(cb))
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
    let shutdown = shutdown_signal();
    let s = settings(Some(&a), &a.common)?;
    let mut policy = policy_from(&s)?;
    if let Some(path) = &s.audit.path {
        let log = AuditLog::open(path.clone(), s.audit.max_bytes)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        policy.audit = Some(Arc::new(log));
    }
    // Refuse unsafe HTTP set-ups before touching the kernel.
    let http = match s.http.listen {
        Some(addr) => {
            policy.transport = "http";
            let h = &s.http;
            let tls = match (&h.tls_cert, &h.tls_key) {
                (Some(c), Some(k)) => Some(bpfsight::tls::load(c, k)?),
                (None, None) => None,
                _ => bail!("TLS needs both a certificate (--tls-cert) and a key (--tls-key)"),
            };
            let cfg = HttpConfig {
                addr,
                tokens: load_tokens(h.tokens_file.as_ref())?,
                allowed_origins: h.allowed_origins.clone(),
                allowed_hosts: h.allowed_hosts.clone(),
                max_body_bytes: h.max_body_bytes,
                session_idle: Duration::from_secs(h.session_idle_secs.max(1)),
                max_sessions: h.max_sessions,
                tls,
            };
            bpfsight::http::check(&cfg)?;
            Some(cfg)
        }
        None => None,
    };
    let data = Data::open(&a.common.source, &s.without, a.record.clone(), s.history())?;
    let casebase = open_casebase(&s).await?;
    let predictor = start_predictor(&s, &data, &a.train_after, &a.retrain_every)?;
    let server =
        BpfsightServer::with_policy(data.store(), policy)?.with_casebase(casebase).with_predictor(predictor);
    if let Some(addr) = s.metrics_listen {
        let exporter = bpfsight::metrics::Exporter {
            metrics: server.metrics(),
            store: data.store(),
            programs: data.programs(),
        };
        tokio::spawn(async move {
            if let Err(e) = bpfsight::metrics::serve(addr, exporter).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    match http {
        Some(cfg) => bpfsight::http::serve(server, cfg, shutdown).await?,
        None => {
            let session = async {
                let running =
                    server.serve(rmcp::transport::stdio()).await.context("MCP handshake on stdio")?;
                tracing::info!("serving MCP on stdio");
                running.waiting().await.context("MCP session")?;
                anyhow::Ok(())
            };
            // A signal that came during start-up wins over whatever stdin did meanwhile.
            tokio::select! {
                biased;
                () = shutdown => {}
                r = session => r?,
            }
        }
    }
    // Detaches the programs and saves the history.
    drop(data);
    Ok(ExitCode::SUCCESS)
}

/// Resolves at SIGINT or SIGTERM (how service managers and MCP clients stop a server), so
/// that either ends serving cleanly and the history is saved on the way out. The handlers are
/// installed when this is called, not when the future is first polled: a signal during
/// start-up (loading the programs takes seconds) is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                    tracing::info!(signal = name, "stopping");
                }
                Err(e) => {
                    tracing::warn!(error = %e, signal = name, "cannot watch for this signal");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(term, "SIGTERM") => {}
            () = wait(int, "SIGINT") => {}
        }
    }
}

/// Starts the anomaly predictor on `data`, its model kept in `<data_dir>/predictor`.
fn start_predictor(
    s: &Settings,
    data: &Data,
    train_after: &str,
    retrain_every: &str,
) -> anyhow::Result<Arc<bpfsight::predict::Predictor>> {
    let dur = |flag: &str, v: &str| -> anyhow::Result<usize> {
        let w: Window = v.parse().map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        Ok(w.secs() as usize)
    };
    let mut cfg = bpfsight_predictor::engine::EngineConfig::default();
    cfg.first_training_after = dur("--train-after", train_after)?.max(cfg.model.window + 30);
    cfg.retrain_every = dur("--retrain-every", retrain_every)?.max(60);
    let predictor = bpfsight::predict::Predictor::new(Some(s.data_dir.join("predictor")), cfg);
    predictor.spawn(data.store());
    Ok(predictor)
}

async fn record(a: RecordArgs) -> anyhow::Result<ExitCode> {
    let duration: Window = a.duration.parse().map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    let config = CollectorConfig {
        record: Some(a.out.clone()),
        without: a.signals.without.clone(),
        ..CollectorConfig::default()
    };
    let collector = Collector::start(config).context("starting the eBPF collector")?;
    tracing::info!(path = %a.out.display(), duration = %duration, "recording");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(duration.secs()) + Duration::from_millis(1100)) => {}
        () = shutdown_signal() => tracing::info!("keeping what was recorded"),
    }
    drop(collector);
    eprintln!("recorded to {}; serve it with --source replay:{}", a.out.display(), a.out.display());
    Ok(ExitCode::SUCCESS)
}

async fn tools(a: CommonArgs) -> anyhow::Result<ExitCode> {
    // The tool list does not depend on data: an empty store will do, and no privileges.
    let s = settings(None, &a)?;
    let store = Arc::new(std::sync::RwLock::new(Store::default()));
    let server = BpfsightServer::with_policy(store, policy_from(&s)?)?;
    println!("{}", serde_json::to_string_pretty(&server.tools())?);
    Ok(ExitCode::SUCCESS)
}

fn config_check(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let s = settings(Some(&a), &a.common)?;
    let store = Arc::new(std::sync::RwLock::new(Store::default()));
    let all = Policy { write_tools: true, ..Policy::default() };
    let known: Vec<String> =
        BpfsightServer::with_policy(store, all)?.tools().iter().map(|t| t.name.to_string()).collect();
    let problems = s.problems(&known);
    println!("# effective configuration (flags > environment > config file > defaults)");
    println!("{}", toml::to_string_pretty(&s).context("rendering the configuration")?);
    if problems.is_empty() {
        println!("# no problems found");
        return Ok(ExitCode::SUCCESS);
    }
    println!("# problems:");
    for p in &problems {
        println!("# - {p}");
    }
    let errors = problems.iter().filter(|p| !p.starts_with("warning:")).count();
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn call(a: CallArgs) -> anyhow::Result<ExitCode> {
    let args: serde_json::Value = serde_json::from_str(&a.args).context("--args is not valid JSON")?;
    let serde_json::Value::Object(args) = args else {
        bail!("--args must be a JSON object, like '{{\"window\": \"1m\"}}'")
    };
    let collect: Window = a.collect.parse().map_err(|e| anyhow::anyhow!("--collect: {e}"))?;
    let s = settings(None, &a.common)?;
    let policy = policy_from(&s)?; // refuse a bad policy before collecting
    let data = Data::open(&a.common.source, &s.without, None, s.history())?;
    let casebase = open_casebase(&s).await?;
    // The saved model answers at once; a short collect is too short to train one.
    let predictor = start_predictor(&s, &data, "7d", "7d")?;
    if data.is_live() {
        tokio::time::sleep(Duration::from_secs(collect.secs()) + Duration::from_millis(1100)).await;
    }
    // The call goes through the real MCP server and client, over an in-process pipe.
    let server =
        BpfsightServer::with_policy(data.store(), policy)?.with_casebase(casebase).with_predictor(predictor);
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
    drop(data);
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
