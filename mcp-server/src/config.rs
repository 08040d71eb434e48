//! Configuration: a TOML file, environment variables and flags, in rising precedence.
//!
//! [`FileConfig`] is the file's shape (every key optional, unknown keys refused);
//! [`Settings`] is the effective configuration after flags and environment are applied, which
//! `bpfsight config check` prints (secrets masked) with every problem [`Settings::problems`]
//! finds. Secrets never live in the file: tokens come from a token file or `BPFSIGHT_TOKENS`,
//! an embedder API key from the variable the file names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use bpfsight_collector::plan::SignalGroup;

use crate::redact::Treatment;

/// Where the config file is looked for when neither `--config` nor `BPFSIGHT_CONFIG` names one.
pub const DEFAULT_CONFIG: &str = "/etc/bpfsight/config.toml";

/// The config file. Every key is optional; flags and environment variables override it.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Directory for recorded incidents and indexes, the predictor's model and saved history.
    pub data_dir: Option<PathBuf>,
    /// Offer tools that change state (record_incident).
    pub write_tools: Option<bool>,
    /// Only these tools.
    pub tools: Option<Vec<String>>,
    /// Never these tools.
    pub deny_tools: Option<Vec<String>>,
    /// Longest a tool call may run, seconds.
    pub call_timeout_secs: Option<u64>,
    /// Signal groups not to collect, e.g. `["syscalls"]`.
    pub without: Option<Vec<SignalGroup>>,
    /// Save history to the data directory this often and restore it at start ("5m"), or "off".
    pub keep_history: Option<String>,
    /// `[http]`
    #[serde(default)]
    pub http: HttpFile,
    /// `[redaction]`
    #[serde(default)]
    pub redaction: RedactionFile,
    /// `[audit]`
    #[serde(default)]
    pub audit: AuditFile,
    /// `[metrics]`
    #[serde(default)]
    pub metrics: MetricsFile,
    /// `[embedder]`
    #[serde(default)]
    pub embedder: EmbedderFile,
}

/// `[http]` of the config file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Serve over HTTP at this address instead of stdio.
    pub listen: Option<SocketAddr>,
    /// Token file (`NAME ROLE SECRET` per line).
    pub tokens_file: Option<PathBuf>,
    /// Browser origins allowed besides loopback.
    pub allowed_origins: Option<Vec<String>>,
    /// Host names allowed besides loopback.
    pub allowed_hosts: Option<Vec<String>>,
    /// Largest request body, bytes.
    pub max_body_bytes: Option<usize>,
    /// Idle sessions expire after this many seconds.
    pub session_idle_secs: Option<u64>,
    /// Most sessions open at once, per transport (streamable HTTP, legacy SSE).
    pub max_sessions: Option<usize>,
    /// PEM certificate chain: serve HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// `[redaction]` of the config file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionFile {
    /// IP addresses: keep, mask or hash.
    pub ips: Option<Treatment>,
    /// User names: keep, mask or hash.
    pub users: Option<Treatment>,
    /// Key file for hashing.
    pub key_file: Option<PathBuf>,
}

/// `[audit]` of the config file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// Audit log path.
    pub path: Option<PathBuf>,
    /// Rotate past this many bytes.
    pub max_bytes: Option<u64>,
}

/// `[metrics]` of the config file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Prometheus endpoint address.
    pub listen: Option<SocketAddr>,
}

/// Which text embedder the case base uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EmbedderKind {
    /// Built in, offline (hashed n-grams).
    #[default]
    Builtin,
    /// An OpenAI-compatible `/v1/embeddings` endpoint.
    Openai,
    /// An Ollama `/api/embeddings` endpoint.
    Ollama,
}

/// `[embedder]` of the config file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderFile {
    /// builtin, openai or ollama.
    pub kind: Option<EmbedderKind>,
    /// Full endpoint URL.
    pub url: Option<String>,
    /// Model name.
    pub model: Option<String>,
    /// Name of the environment variable holding the API key (the key itself stays out of files).
    pub api_key_env: Option<String>,
    /// Request timeout, seconds.
    pub timeout_secs: Option<u64>,
}

/// The effective configuration.
#[derive(Debug, Serialize)]
pub struct Settings {
    /// The config file read, if any.
    pub config_file: Option<PathBuf>,
    /// Directory for recorded incidents and indexes, the predictor's model and saved history.
    pub data_dir: PathBuf,
    /// Write tools offered.
    pub write_tools: bool,
    /// Only these tools (None: all).
    pub tools: Option<Vec<String>>,
    /// Never these tools.
    pub deny_tools: Vec<String>,
    /// Longest a tool call may run, seconds.
    pub call_timeout_secs: u64,
    /// Signal groups not collected (their hooks are not attached).
    pub without: Vec<SignalGroup>,
    /// History is saved to the data directory this often, seconds, and restored at start
    /// (absent: `off`, every start is empty).
    pub keep_history_secs: Option<u64>,
    /// HTTP settings; `listen` None means stdio.
    pub http: HttpSettings,
    /// Redaction policy.
    pub redaction: RedactionSettings,
    /// Audit log.
    pub audit: AuditSettings,
    /// Prometheus endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Text embedder.
    pub embedder: EmbedderSettings,
}

/// Effective HTTP settings.
#[derive(Debug, Serialize)]
pub struct HttpSettings {
    /// Listen address (None: stdio).
    pub listen: Option<SocketAddr>,
    /// Token file; else `BPFSIGHT_TOKENS`.
    pub tokens_file: Option<PathBuf>,
    /// Where tokens come from, and how many (secrets never shown).
    pub tokens: String,
    /// Browser origins allowed besides loopback.
    pub allowed_origins: Vec<String>,
    /// Host names allowed besides loopback.
    pub allowed_hosts: Vec<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Idle session expiry, seconds.
    pub session_idle_secs: u64,
    /// Most sessions per transport.
    pub max_sessions: usize,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
}

/// Effective redaction settings.
#[derive(Debug, Serialize)]
pub struct RedactionSettings {
    /// IP addresses.
    pub ips: Treatment,
    /// User names.
    pub users: Treatment,
    /// Hash key file.
    pub key_file: PathBuf,
}

/// Effective audit settings.
#[derive(Debug, Serialize)]
pub struct AuditSettings {
    /// Audit log path (None: no audit log).
    pub path: Option<PathBuf>,
    /// Rotation size, bytes.
    pub max_bytes: u64,
}

/// Effective embedder settings.
#[derive(Debug, Serialize)]
pub struct EmbedderSettings {
    /// builtin, openai or ollama.
    pub kind: EmbedderKind,
    /// Endpoint URL (remote kinds).
    pub url: Option<String>,
    /// Model (remote kinds).
    pub model: Option<String>,
    /// Variable holding the API key.
    pub api_key_env: Option<String>,
    /// Whether that variable is set (the key is never shown).
    pub api_key: &'static str,
    /// Request timeout, seconds.
    pub timeout_secs: u64,
}

/// Reads the config file: `path` if given (must exist), else [`DEFAULT_CONFIG`] if it exists.
pub fn read_file(path: Option<&Path>) -> anyhow::Result<(Option<PathBuf>, FileConfig)> {
    use anyhow::Context;
    let (path, required) = match path {
        Some(p) => (p.to_owned(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let cfg = toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
            Ok((Some(path), cfg))
        }
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok((None, FileConfig::default())),
        Err(e) => Err(e).with_context(|| format!("reading the config file {}", path.display())),
    }
}

/// The default data directory: `$XDG_DATA_HOME/bpfsight`, else `~/.local/share/bpfsight`,
/// else (no home, e.g. a system service) `/var/lib/bpfsight`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("bpfsight");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty() && h != "/") {
        Some(h) => PathBuf::from(h).join(".local/share/bpfsight"),
        None => PathBuf::from("/var/lib/bpfsight"),
    }
}

impl Settings {
    /// Where and how often the collector keeps its history, unless `keep_history` is off.
    pub fn history(&self) -> Option<bpfsight_collector::HistoryConfig> {
        self.keep_history_secs.map(|secs| bpfsight_collector::HistoryConfig {
            dir: self.data_dir.clone(),
            every: std::time::Duration::from_secs(secs),
        })
    }

    /// Everything wrong with this configuration that can be found without starting: each entry
    /// says what is wrong and how to fix it.
    pub fn problems(&self, known_tools: &[String]) -> Vec<String> {
        let mut p = Vec::new();
        for (list, key) in
            [(self.tools.as_deref().unwrap_or(&[]), "tools"), (&self.deny_tools[..], "deny_tools")]
        {
            for t in list {
                if !known_tools.contains(t) {
                    p.push(format!("{key}: unknown tool {t:?}; the tools are {}", known_tools.join(", ")));
                }
            }
        }
        let h = &self.http;
        if let Some(addr) = h.listen {
            let tokens = match &h.tokens_file {
                Some(f) => match crate::auth::Tokens::from_file(f) {
                    Ok(_) => true,
                    Err(e) => {
                        p.push(format!("http.tokens_file: {e}"));
                        false
                    }
                },
                None => match crate::auth::Tokens::from_env("BPFSIGHT_TOKENS") {
                    Ok(t) => t.is_some(),
                    Err(e) => {
                        p.push(format!("BPFSIGHT_TOKENS: {e}"));
                        false
                    }
                },
            };
            if !addr.ip().is_loopback() && !tokens {
                p.push(format!(
                    "http.listen {addr} is not loopback and no tokens are configured: set http.tokens_file or BPFSIGHT_TOKENS"
                ));
            }
            if !addr.ip().is_loopback() && h.allowed_hosts.is_empty() {
                p.push(format!("http.listen {addr} is not loopback: list the host names clients use in http.allowed_hosts"));
            }
            if !addr.ip().is_loopback() && h.tls_cert.is_none() {
                p.push(format!(
                    "warning: http.listen {addr} is not loopback and TLS is off: bearer tokens cross the network in clear; set http.tls_cert and http.tls_key"
                ));
            }
        }
        match (&h.tls_cert, &h.tls_key) {
            (Some(c), Some(k)) => {
                if let Err(e) = crate::tls::load(c, k) {
                    p.push(format!("TLS: {e:#}"));
                }
                if h.listen.is_none() {
                    p.push("http.tls_cert is set but http.listen is not: TLS applies only to --http".into());
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                p.push("TLS needs both http.tls_cert and http.tls_key".into())
            }
            (None, None) => {}
        }
        if let Some(a) = &self.audit.path
            && let Some(dir) = a.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            p.push(format!("audit.path: directory {} does not exist", dir.display()));
        }
        if let Err(e) = writable_dir(&self.data_dir) {
            p.push(format!("data_dir {}: {e}", self.data_dir.display()));
        }
        let e = &self.embedder;
        if e.kind != EmbedderKind::Builtin {
            if e.url.as_deref().is_none_or(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
                p.push("embedder.url: a remote embedder needs an http:// or https:// endpoint URL".into());
            }
            if e.model.is_none() {
                p.push("embedder.model: a remote embedder needs a model name".into());
            }
            if let Some(var) = &e.api_key_env
                && std::env::var_os(var).is_none()
            {
                p.push(format!("embedder.api_key_env: variable {var} is not set"));
            }
        }
        if self.call_timeout_secs == 0 {
            p.push("call_timeout_secs must be at least 1".into());
        }
        p
    }
}

/// Creates `dir` if needed and checks that a file can be written in it.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".bpfsight-write-test.{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(probe)
}
