//! Answers to the questions the MCP tools ask, computed from the [`Store`].
//!
//! Every answer is bounded: lists carry `total` (before the limit) and `truncated`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::host::HostCounters;
use crate::names;
use crate::service::{IdentitySource, Pid, ServiceId};
use crate::store::{Event, Health, Store};
use crate::tcp::{Peer, TcpCounters};
use crate::window::Window;

/// Largest `limit` any query accepts.
pub const MAX_LIMIT: usize = 500;
/// Peers listed per service.
pub const TOP_PEERS: usize = 5;
/// Recent events listed per service in error reports.
pub const RECENT_EVENTS: usize = 5;

/// A query argument that cannot be answered; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// No live process and no recorded activity has this service name.
    #[error(
        "unknown service {name:?}: no running process or recorded activity has that name{hint}; call list_services to see the names"
    )]
    UnknownService {
        /// What was asked for.
        name: String,
        /// ", did you mean ..." or empty.
        hint: String,
    },
    /// An argument is out of range.
    #[error("invalid {name}: {message}")]
    Invalid {
        /// Argument name.
        name: &'static str,
        /// What was wrong and what is accepted.
        message: String,
    },
}

/// Checks a list limit: `1..=MAX_LIMIT`, default `default`.
pub fn check_limit(limit: Option<i64>, default: usize) -> Result<usize, QueryError> {
    match limit {
        None => Ok(default),
        Some(n) if n >= 1 && n as u64 <= MAX_LIMIT as u64 => Ok(n as usize),
        Some(n) => Err(QueryError::Invalid {
            name: "limit",
            message: format!("{n} is out of range; use an integer from 1 to {MAX_LIMIT}"),
        }),
    }
}

/// Traffic with one peer.
#[derive(Clone, Debug, Serialize)]
pub struct PeerStats {
    /// Remote address (`0.0.0.0` with port 0 sums peers beyond the per-second cap and traffic
    /// of sockets whose peer is unknown).
    pub addr: String,
    /// Remote port; 0 for clients that connected to this service (their ports are ephemeral).
    pub port: u16,
    /// Retransmitted segments to this peer.
    pub retransmits: u64,
    /// Failed connects to this peer.
    pub failed_connects: u64,
    /// Of those, connects this peer refused (answered the SYN with a RST).
    pub refused_connects: u64,
    /// Resets sent to and received from this peer.
    pub resets: u64,
    /// Connections opened with this peer.
    pub opened: u64,
    /// sendmsg calls to this peer.
    pub sends: u64,
}

impl PeerStats {
    fn new(p: &Peer, c: &TcpCounters) -> Self {
        PeerStats {
            addr: p.addr.to_string(),
            port: p.port,
            retransmits: c.retransmits,
            failed_connects: c.failed_connects,
            refused_connects: c.refused_connects,
            resets: c.resets_sent + c.resets_received,
            opened: c.opened(),
            sends: c.sends,
        }
    }
}

/// Worst peers first: errors, then traffic.
fn top_peers(peers: HashMap<Peer, TcpCounters>, n: usize) -> (Vec<PeerStats>, usize) {
    let total = peers.len();
    let mut v: Vec<_> = peers.into_iter().collect();
    v.sort_by(|(pa, a), (pb, b)| {
        (b.errors(), b.sends + b.opened()).cmp(&(a.errors(), a.sends + a.opened())).then(pa.cmp(pb))
    });
    (v.iter().take(n).map(|(p, c)| PeerStats::new(p, c)).collect(), total)
}

/// TCP connection statistics of one service over the window.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceConnections {
    /// Service name.
    pub service: ServiceId,
    /// Connections opened (active + passive).
    pub opened: u64,
    /// Of which initiated by this service (connect).
    pub opened_active: u64,
    /// Of which accepted by this service.
    pub opened_passive: u64,
    /// Connections closed.
    pub closed: u64,
    /// Connections established now (opened since bpfsight started, not yet closed).
    pub active: u64,
    /// Connects that never reached ESTABLISHED (refused, timed out, unreachable).
    pub failed_connects: u64,
    /// Of those, connects the peer refused: it answered the SYN with a RST (nothing listens
    /// there, or a firewall rejects). The rest timed out or were given up (a peer or a
    /// firewall that drops SYNs, an unreachable network).
    pub refused_connects: u64,
    /// RSTs sent.
    pub resets_sent: u64,
    /// RSTs received (the ones that refused connects included).
    pub resets_received: u64,
    /// Retransmitted segments.
    pub retransmits: u64,
    /// Retransmits per second over the window.
    pub retransmits_per_s: f64,
    /// sendmsg calls that sent data.
    pub sends: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Mean lifetime of the connections closed in the window, ms.
    pub mean_connection_ms: Option<f64>,
    /// Peers with the most errors (then traffic), at most 5.
    pub top_peers: Vec<PeerStats>,
    /// Distinct peers in the window.
    pub peers_total: usize,
}

impl ServiceConnections {
    fn new(
        service: ServiceId,
        c: &TcpCounters,
        active: u64,
        observed_secs: u64,
        peers: HashMap<Peer, TcpCounters>,
    ) -> Self {
        let (top_peers, peers_total) = top_peers(peers, TOP_PEERS);
        ServiceConnections {
            service,
            opened: c.opened(),
            opened_active: c.opened_active,
            opened_passive: c.opened_passive,
            closed: c.closed,
            active,
            failed_connects: c.failed_connects,
            refused_connects: c.refused_connects,
            resets_sent: c.resets_sent,
            resets_received: c.resets_received,
            retransmits: c.retransmits,
            retransmits_per_s: round3(c.retransmits as f64 / observed_secs as f64),
            sends: c.sends,
            bytes_sent: c.bytes_sent,
            mean_connection_ms: (c.closed > 0).then(|| round3(c.duration_ns as f64 / c.closed as f64 / 1e6)),
            top_peers,
            peers_total,
        }
    }
}

/// Answer of [`Store::connection_stats`].
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionReport {
    /// Window length, seconds.
    pub window_s: u64,
    /// Seconds of the window the collector watched, which rates are per (see
    /// [`Store::observed_secs`]).
    pub observed_s: u64,
    /// Resolution the window was answered at, seconds.
    pub resolution_s: u64,
    /// Services, most errors first, then most traffic.
    pub services: Vec<ServiceConnections>,
    /// Services with TCP activity in the window (before the limit).
    pub total: usize,
    /// Whether `services` was cut to the limit.
    pub truncated: bool,
    /// Where the data came from.
    pub source: &'static str,
    /// Signals this kernel cannot give, so reported as zero here (the `bpfsight://health`
    /// resource says why); omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

/// Arguments of [`Store::connection_stats`].
#[derive(Clone, Debug, Default)]
pub struct ConnectionQuery {
    /// Only this service.
    pub service: Option<String>,
    /// Look-back window.
    pub window: Window,
    /// Most services returned (default 20).
    pub limit: Option<usize>,
}

/// How the error rate is defined (also the tool description's wording).
pub const ERROR_RATE_DEFINITION: &str = "error_rate_pct = 100 * errors / attempts, where errors = \
    failed_connects + resets_sent + resets_received + retransmits, less refused_connects (the \
    RST that refuses a connect is not counted again: a refused connect is one error), and \
    attempts = connect attempts (connections opened by the service + failed connects) + \
    accepted connections + sends (sendmsg calls on its TCP sockets that sent data) + \
    retransmits (each one a transmission too); an error with no attempt in the window (a reset \
    on an older connection, the kernel's answers to segments for no socket) counts as its own \
    attempt, so the rate is at most 100";

/// One service whose network error rate is above the threshold.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceErrors {
    /// Service name.
    pub service: ServiceId,
    /// See [`ERROR_RATE_DEFINITION`].
    pub error_rate_pct: f64,
    /// Numerator of the rate.
    pub errors: u64,
    /// Denominator of the rate (never less than `errors`).
    pub attempts: u64,
    /// Failed connects.
    pub failed_connects: u64,
    /// Of those, connects the peer refused with a RST.
    pub refused_connects: u64,
    /// RSTs sent.
    pub resets_sent: u64,
    /// RSTs received (the ones that refused connects included).
    pub resets_received: u64,
    /// Retransmitted segments.
    pub retransmits: u64,
    /// Connect attempts (opened actively + failed).
    pub connect_attempts: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// sendmsg calls that sent data.
    pub sends: u64,
    /// Peers with the most errors, at most 5.
    pub top_peers: Vec<PeerStats>,
    /// Failed syscalls by syscall and errno, most frequent first (at most 5).
    pub syscall_errors: Vec<SyscallErrors>,
    /// All failed syscalls in the window, benign ones included.
    pub syscall_errors_total: u64,
    /// Failed syscalls per second, benign ones excluded.
    pub syscall_errors_per_s: f64,
    /// Processes of the service the OOM killer chose.
    pub oom_kills: u64,
    /// Processes that exited with a non-zero status or a crash signal (SIGSEGV, SIGABRT, ...).
    pub failed_exits: u64,
    /// Processes stopped by SIGKILL, SIGTERM, SIGINT or SIGHUP (listed, not an error by itself).
    pub killed: u64,
    /// Latest discrete events of the service in the window (failed connects, resets, OOM kills,
    /// failed exits), newest first.
    pub recent_events: Vec<Event>,
}

/// Failures of one syscall with one errno.
#[derive(Clone, Debug, Serialize)]
pub struct SyscallErrors {
    /// Syscall name (`openat`).
    pub syscall: String,
    /// Errno symbol (`ENOENT`).
    pub errno: String,
    /// What the errno means.
    pub description: &'static str,
    /// Failures in the window.
    pub count: u64,
    /// Whether this means "not now" rather than a failure (EAGAIN, EINPROGRESS, EINTR, a futex
    /// wait timing out, the end of a BPF map iteration).
    pub benign: bool,
}

/// The top `n` syscall errors of `h`, and their total.
pub(crate) fn top_syscall_errors(h: &HostCounters, n: usize) -> (Vec<SyscallErrors>, u64) {
    let mut v = h.syscall_errors.clone();
    v.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    let total = v.iter().map(|e| e.2).sum::<u64>() + h.syscall_errors_other;
    let rows = v
        .into_iter()
        .take(n)
        .map(|(nr, errno, count)| SyscallErrors {
            syscall: names::syscall_name(nr),
            errno: names::errno_name(errno),
            description: names::errno_description(errno),
            count,
            benign: names::is_benign(nr, errno),
        })
        .collect();
    (rows, total)
}

/// Failed syscalls excluding the benign errnos.
pub(crate) fn harmful_syscall_errors(h: &HostCounters) -> u64 {
    h.syscall_errors.iter().filter(|e| !names::is_benign(e.0, e.1)).map(|e| e.2).sum::<u64>()
        + h.syscall_errors_other
}

/// Arguments of [`Store::service_errors`].
#[derive(Clone, Debug)]
pub struct ErrorQuery {
    /// Lowest TCP error rate listed, percent.
    pub threshold_pct: f64,
    /// Lowest rate of failed syscalls (benign errnos excluded) listed, per second.
    pub min_syscall_errors_per_s: f64,
    /// Look-back window.
    pub window: Window,
    /// Most services returned.
    pub limit: usize,
}

impl Default for ErrorQuery {
    fn default() -> Self {
        ErrorQuery { threshold_pct: 1.0, min_syscall_errors_per_s: 5.0, window: Window::DEFAULT, limit: 20 }
    }
}

/// Answer of [`Store::service_errors`].
#[derive(Clone, Debug, Serialize)]
pub struct ErrorReport {
    /// Window length, seconds.
    pub window_s: u64,
    /// Seconds of the window the collector watched, which rates are per (see
    /// [`Store::observed_secs`]).
    pub observed_s: u64,
    /// TCP error-rate threshold applied, percent.
    pub threshold_pct: f64,
    /// Failed-syscall rate threshold applied, per second.
    pub min_syscall_errors_per_s: f64,
    /// How `error_rate_pct` is computed.
    pub definition: &'static str,
    /// Services above the threshold, worst first.
    pub services: Vec<ServiceErrors>,
    /// Services above the threshold (before the limit).
    pub total: usize,
    /// Whether `services` was cut to the limit.
    pub truncated: bool,
    /// Where the data came from.
    pub source: &'static str,
    /// Signals this kernel cannot give, so reported as zero here (the `bpfsight://health`
    /// resource says why); omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

/// One service in [`ServiceList`].
#[derive(Clone, Debug, Serialize)]
pub struct ServiceSummary {
    /// Service name.
    pub service: ServiceId,
    /// How the name was derived.
    pub identity: IdentitySource,
    /// Live pids (at most 16), or the pids seen if none is alive.
    pub pids: Vec<Pid>,
    /// Number of live processes.
    pub process_count: usize,
    /// Command line of its lowest live pid, or the last one seen when none is alive
    /// (truncated; secrets are masked before it leaves).
    pub cmdline: Option<String>,
    /// Executable of its lowest live pid, or the last one seen when none is alive.
    pub exe: Option<String>,
    /// Whether any process of the service is alive.
    pub running: bool,
    /// TCP connections established now (opened since bpfsight started).
    pub active_connections: u64,
    /// TCP connections opened in the last 5 minutes.
    pub opened_5m: u64,
    /// Failed connects + resets + retransmits in the last 5 minutes.
    pub network_errors_5m: u64,
    /// Seconds since the last TCP activity, if any was seen.
    pub last_tcp_activity_s_ago: Option<u64>,
    /// Seconds since any activity (CPU, IO, syscalls, TCP) was seen, if any was.
    pub last_seen_s_ago: Option<u64>,
    /// Time on CPU in the last minute as a share of one CPU, percent (in the first minute
    /// after bpfsight started, of the seconds since).
    pub cpu_pct_1m: f64,
    /// Resident memory now, bytes (live processes only).
    pub rss_bytes: Option<u64>,
}

/// Answer of [`Store::list_services`].
#[derive(Clone, Debug, Serialize)]
pub struct ServiceList {
    /// Services: those with TCP activity first (most errors, then most connections), then by name.
    pub services: Vec<ServiceSummary>,
    /// Matching services (before the limit).
    pub total: usize,
    /// Whether `services` was cut to the limit.
    pub truncated: bool,
    /// The collector's own health: drops a user should know about.
    pub collector: Health,
}

/// Arguments of [`Store::list_services`].
#[derive(Clone, Debug, Default)]
pub struct ServiceListQuery {
    /// Case-insensitive substring of the service name.
    pub name_contains: Option<String>,
    /// Only services with TCP activity in the last 5 minutes.
    pub active_only: bool,
    /// Only services with any activity (CPU, IO, syscalls, TCP) within this window.
    pub active_within: Option<Window>,
    /// Most services returned (default 50).
    pub limit: Option<usize>,
}

/// The identity of a service known only from the process table, from the shape of its name.
fn identity_of_name(id: &ServiceId) -> IdentitySource {
    let n = id.as_str();
    if n.starts_with("pod:") {
        IdentitySource::KubernetesPod
    } else if n.starts_with("container:") {
        IdentitySource::Container
    } else if n.ends_with(".service") {
        IdentitySource::SystemdUnit
    } else {
        IdentitySource::ProcessName
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Store {
    /// Every service with history or a live process (a name may come twice).
    fn service_ids(&self) -> impl Iterator<Item = &ServiceId> {
        self.services.keys().chain(self.processes.keys())
    }

    /// [`Self::service_ids`] as names.
    fn service_names(&self) -> impl Iterator<Item = &str> {
        self.service_ids().map(ServiceId::as_str)
    }

    pub(crate) fn known_service(&self, name: &str) -> Result<ServiceId, QueryError> {
        let id = ServiceId::new(name);
        if self.services.contains_key(&id) || self.processes.contains_key(&id) {
            return Ok(id);
        }
        let lower = name.to_lowercase();
        let mut similar: Vec<&str> = self
            .service_names()
            .filter(|s| {
                let s = s.to_lowercase();
                !lower.is_empty() && (s.contains(&lower) || lower.contains(&s))
            })
            .collect();
        similar.sort_unstable();
        similar.dedup();
        similar.truncate(5);
        let hint = if similar.is_empty() {
            String::new()
        } else {
            format!(" (did you mean {}?)", similar.join(", "))
        };
        Err(QueryError::UnknownService { name: name.to_string(), hint })
    }

    /// TCP connection statistics per service over a window.
    pub fn connection_stats(&self, q: &ConnectionQuery) -> Result<ConnectionReport, QueryError> {
        let secs = q.window.secs();
        let observed = self.observed_secs(secs);
        let limit = q.limit.unwrap_or(20);
        let mut rows: Vec<ServiceConnections> = Vec::new();
        if let Some(name) = &q.service {
            let id = self.known_service(name)?;
            let row = match self.services.get(&id) {
                Some(st) => {
                    let (c, peers) = st.window(self.now, secs);
                    ServiceConnections::new(id, &c, st.active(), observed, peers)
                }
                None => ServiceConnections::new(id, &TcpCounters::default(), 0, observed, HashMap::new()),
            };
            rows.push(row);
        } else {
            for (id, st) in &self.services {
                let (c, peers) = st.window(self.now, secs);
                if c.is_zero() && st.active() == 0 {
                    continue;
                }
                rows.push(ServiceConnections::new(id.clone(), &c, st.active(), observed, peers));
            }
        }
        rows.sort_by(|a, b| {
            let errors = |r: &ServiceConnections| {
                r.failed_connects + r.resets_sent + r.resets_received - r.refused_connects + r.retransmits
            };
            let (ea, eb) = (errors(a), errors(b));
            (eb, b.opened + b.sends).cmp(&(ea, a.opened + a.sends)).then(a.service.cmp(&b.service))
        });
        let total = rows.len();
        rows.truncate(limit);
        Ok(ConnectionReport {
            window_s: secs,
            observed_s: observed,
            resolution_s: q.window.resolution_secs(),
            truncated: total > rows.len(),
            services: rows,
            total,
            source: self.health.source,
            unavailable: self.health.unavailable_signals(),
        })
    }

    /// Services with errors, worst first: any OOM kill or failed exit, a TCP error rate of at
    /// least `threshold_pct`, or failed syscalls at `min_syscall_errors_per_s` or more.
    pub fn service_errors(&self, q: &ErrorQuery) -> Result<ErrorReport, QueryError> {
        let threshold_pct = q.threshold_pct;
        if !threshold_pct.is_finite() || !(0.0..=100.0).contains(&threshold_pct) {
            return Err(QueryError::Invalid {
                name: "threshold_pct",
                message: format!(
                    "{threshold_pct} is out of range; use a percentage from 0 to 100 (default 1.0)"
                ),
            });
        }
        let min_sys = q.min_syscall_errors_per_s;
        if !min_sys.is_finite() || min_sys < 0.0 {
            return Err(QueryError::Invalid {
                name: "min_syscall_errors_per_s",
                message: format!("{min_sys} is out of range; use a rate >= 0 (default 5.0)"),
            });
        }
        let secs = q.window.secs();
        let observed = self.observed_secs(secs);
        let from_ms = self.now.saturating_sub(secs) * 1000;
        let mut rows = Vec::new();
        for (id, st) in &self.services {
            let (c, peers) = st.window(self.now, secs);
            let h = st.host_window(self.now, secs);
            let errors = c.errors();
            let attempts = c.attempts().max(errors);
            let rate = c.error_rate_pct();
            let sys_rate = harmful_syscall_errors(&h) as f64 / observed as f64;
            let tcp_hit = errors > 0 && rate >= threshold_pct;
            let sys_hit = sys_rate > 0.0 && sys_rate >= min_sys;
            let proc_hit = h.oom_kills > 0 || h.failed_exits > 0;
            if !(tcp_hit || sys_hit || proc_hit) {
                continue;
            }
            let (top, _) = top_peers(peers, TOP_PEERS);
            let (syscall_errors, syscall_errors_total) = top_syscall_errors(&h, TOP_PEERS);
            let recent_events = self
                .events
                .iter()
                .rev()
                .filter(|e| e.time_ms >= from_ms && e.service == *id)
                .take(RECENT_EVENTS)
                .cloned()
                .collect();
            rows.push(ServiceErrors {
                service: id.clone(),
                error_rate_pct: round3(rate),
                errors,
                attempts,
                failed_connects: c.failed_connects,
                refused_connects: c.refused_connects,
                resets_sent: c.resets_sent,
                resets_received: c.resets_received,
                retransmits: c.retransmits,
                connect_attempts: c.opened_active + c.failed_connects,
                accepted: c.opened_passive,
                sends: c.sends,
                top_peers: top,
                syscall_errors,
                syscall_errors_total,
                syscall_errors_per_s: round3(sys_rate),
                oom_kills: h.oom_kills,
                failed_exits: h.failed_exits,
                killed: h.killed,
                recent_events,
            });
        }
        // As documented: OOM kills, then failed exits (a process that failed is worse than a
        // call that failed and may have been handled: a crash loop must not rank below a
        // neighbour's probing of missing files), then the TCP error rate, then failed syscalls.
        rows.sort_by(|a, b| {
            b.oom_kills
                .cmp(&a.oom_kills)
                .then(b.failed_exits.cmp(&a.failed_exits))
                .then(b.error_rate_pct.total_cmp(&a.error_rate_pct))
                .then(b.errors.cmp(&a.errors))
                .then(b.syscall_errors_per_s.total_cmp(&a.syscall_errors_per_s))
                .then(a.service.cmp(&b.service))
        });
        let total = rows.len();
        rows.truncate(q.limit);
        Ok(ErrorReport {
            window_s: secs,
            observed_s: observed,
            threshold_pct,
            min_syscall_errors_per_s: min_sys,
            definition: ERROR_RATE_DEFINITION,
            truncated: total > rows.len(),
            services: rows,
            total,
            source: self.health.source,
            unavailable: self.health.unavailable_signals(),
        })
    }

    /// Service names for completing what a user has typed: those starting with `typed`
    /// (case-insensitive) first, then those containing it, each group sorted; at most `max`,
    /// with how many matched in all.
    pub fn complete_service(&self, typed: &str, max: usize) -> (Vec<String>, usize) {
        let needle = typed.to_lowercase();
        let mut names: Vec<(bool, &str)> = self
            .service_names()
            .filter_map(|name| {
                let lower = name.to_lowercase();
                if lower.starts_with(&needle) {
                    Some((false, name))
                } else {
                    lower.contains(&needle).then_some((true, name))
                }
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        let total = names.len();
        (names.into_iter().take(max).map(|(_, n)| n.to_string()).collect(), total)
    }

    /// Services known from live processes and from recorded activity.
    pub fn list_services(&self, q: &ServiceListQuery) -> ServiceList {
        let limit = q.limit.unwrap_or(50);
        let needle = q.name_contains.as_ref().map(|s| s.to_lowercase());
        let mut names: BTreeMap<&ServiceId, ()> = BTreeMap::new();
        for k in self.service_ids() {
            names.insert(k, ());
        }
        let minute = self.observed_secs(60);
        let mut rows: Vec<ServiceSummary> = names
            .into_keys()
            .filter(|id| needle.as_ref().is_none_or(|n| id.as_str().to_lowercase().contains(n)))
            .map(|id| {
                let live = self.processes.get(id);
                let st = self.services.get(id);
                let (c, _) = st.map(|s| s.window(self.now, 300)).unwrap_or_default();
                let oncpu_1m = st.map_or(0, |s| s.host_window(self.now, 60).oncpu_ns);
                let mut pids: Vec<Pid> = match (live, st) {
                    (Some(p), _) => p.clone(),
                    (None, Some(s)) => s.pids.iter().copied().collect(),
                    (None, None) => Vec::new(),
                };
                pids.truncate(16);
                ServiceSummary {
                    service: id.clone(),
                    identity: st.map(|s| s.identity).unwrap_or_else(|| identity_of_name(id)),
                    pids,
                    process_count: live.map_or(0, |p| p.len()),
                    cmdline: self.cmdlines.get(id).cloned(),
                    exe: self.exes.get(id).cloned(),
                    running: live.is_some(),
                    active_connections: st.map_or(0, |s| s.active()),
                    opened_5m: c.opened(),
                    network_errors_5m: c.errors(),
                    last_tcp_activity_s_ago: st
                        .filter(|s| s.last_active > 0)
                        .map(|s| self.now.saturating_sub(s.last_active)),
                    last_seen_s_ago: st
                        .filter(|s| s.last_seen > 0)
                        .map(|s| self.now.saturating_sub(s.last_seen)),
                    cpu_pct_1m: round3(oncpu_1m as f64 / (minute as f64 * 1e9) * 100.0),
                    rss_bytes: self.rss.get(id).copied(),
                }
            })
            .filter(|s| q.active_within.is_none_or(|w| s.last_seen_s_ago.is_some_and(|a| a < w.secs())))
            .filter(|s| {
                !q.active_only
                    || s.opened_5m + s.network_errors_5m > 0
                    || s.active_connections > 0
                    || s.last_tcp_activity_s_ago.is_some_and(|a| a < 300)
            })
            .collect();
        rows.sort_by(|a, b| {
            let ka = (
                a.last_tcp_activity_s_ago.is_some(),
                a.network_errors_5m,
                a.opened_5m + a.active_connections,
            );
            let kb = (
                b.last_tcp_activity_s_ago.is_some(),
                b.network_errors_5m,
                b.opened_5m + b.active_connections,
            );
            kb.cmp(&ka).then(a.service.cmp(&b.service))
        });
        let total = rows.len();
        rows.truncate(limit);
        ServiceList { truncated: total > rows.len(), services: rows, total, collector: self.health.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn store() -> Store {
        let mut s = Store::new(1000);
        s.health.source = "test";
        let lossy = ServiceId::new("lossy");
        let clean = ServiceId::new("clean");
        let p = |port| Peer { addr: IpAddr::V4(Ipv4Addr::LOCALHOST), port };
        for t in 990..1000 {
            s.record(
                t,
                &lossy,
                IdentitySource::ProcessName,
                10,
                p(7000),
                TcpCounters { sends: 10, retransmits: 2, ..Default::default() },
            );
            s.record(
                t,
                &clean,
                IdentitySource::ProcessName,
                11,
                p(7001),
                TcpCounters { sends: 100, ..Default::default() },
            );
        }
        s.record(
            999,
            &lossy,
            IdentitySource::ProcessName,
            10,
            p(7000),
            TcpCounters { opened_active: 1, ..Default::default() },
        );
        s.processes.insert(ServiceId::new("idle"), vec![42]);
        s.tick(999);
        s
    }

    #[test]
    fn service_completion_puts_prefix_matches_first_and_counts_all() {
        let mut s = store();
        s.processes.insert(ServiceId::new("Clean-up"), vec![43]);
        let (names, total) = s.complete_service("cl", 10);
        assert_eq!(names, ["Clean-up", "clean"]);
        assert_eq!(total, 2);
        let (names, total) = s.complete_service("l", 10);
        assert_eq!(names, ["lossy", "Clean-up", "clean", "idle"]); // prefix first, then inside
        assert_eq!(total, 4);
        let (names, total) = s.complete_service("", 2);
        assert_eq!((names.len(), total), (2, 4));
    }

    #[test]
    fn connection_stats_rank_errors_first_and_respect_limit() {
        let s = store();
        let r = s
            .connection_stats(&ConnectionQuery {
                window: "30s".parse().unwrap(),
                limit: Some(1),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.total, 2);
        assert!(r.truncated);
        assert_eq!(r.services[0].service.as_str(), "lossy");
        assert_eq!(r.services[0].retransmits, 20);
        assert_eq!(r.services[0].active, 1);
        assert_eq!(r.services[0].top_peers[0].port, 7000);
        assert!((r.services[0].retransmits_per_s - 20.0 / 30.0).abs() < 1e-3);
    }

    #[test]
    fn rates_are_over_the_seconds_watched_not_the_whole_window() {
        let mut s = store();
        // The store's clock reads 1000: started at 990, it has watched ten seconds.
        s.health.started_at = 990;
        let q = |w: &str| ConnectionQuery { window: w.parse().unwrap(), ..Default::default() };
        let r = s.connection_stats(&q("5m")).unwrap();
        assert_eq!((r.window_s, r.observed_s), (300, 10));
        assert!((r.services[0].retransmits_per_s - 2.0).abs() < 1e-9, "{}", r.services[0].retransmits_per_s);
        // A window shorter than the run is watched whole.
        let r = s.connection_stats(&q("5s")).unwrap();
        assert_eq!((r.window_s, r.observed_s), (5, 5));
        assert_eq!(s.observed_secs(300), 10);
        // Before the first poll there is nothing to divide by; rates stay finite.
        s.health.started_at = 1000;
        assert_eq!(s.observed_secs(300), 1);
    }

    #[test]
    fn known_idle_service_has_zero_stats_and_unknown_is_an_error() {
        let s = store();
        let r = s
            .connection_stats(&ConnectionQuery { service: Some("idle".into()), ..Default::default() })
            .unwrap();
        assert_eq!(r.services[0].opened, 0);
        let e = s
            .connection_stats(&ConnectionQuery { service: Some("loss".into()), ..Default::default() })
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("unknown service \"loss\"") && msg.contains("did you mean lossy"), "{msg}");
    }

    #[test]
    fn error_rate_uses_the_documented_definition() {
        let s = store();
        let q = |threshold_pct| ErrorQuery { threshold_pct, limit: 10, ..Default::default() };
        let r = s.service_errors(&q(1.0)).unwrap();
        assert_eq!(r.total, 1);
        let e = &r.services[0];
        assert_eq!(e.errors, 20);
        // Sends, the connect, and the 20 retransmitted segments.
        assert_eq!(e.attempts, 100 + 1 + 20);
        assert!((e.error_rate_pct - 100.0 * 20.0 / 121.0).abs() < 1e-2);
        assert!(s.service_errors(&q(-1.0)).unwrap_err().to_string().contains("from 0 to 100"));
        assert_eq!(s.service_errors(&q(50.0)).unwrap().total, 0);
    }

    #[test]
    fn failed_exits_rank_before_tcp_errors_and_failed_syscalls() {
        let mut s = store();
        let crashy = HostCounters { exits: 2, failed_exits: 2, ..Default::default() };
        let prober = HostCounters { syscall_errors: vec![(257, 2, 5_000)], ..Default::default() };
        for t in 990..1000 {
            s.record_host(t, &ServiceId::new("crashy"), IdentitySource::ProcessName, &[20], &crashy);
            s.record_host(t, &ServiceId::new("prober"), IdentitySource::ProcessName, &[21], &prober);
        }
        s.tick(999);
        let r = s.service_errors(&ErrorQuery { limit: 10, ..Default::default() }).unwrap();
        let order: Vec<&str> = r.services.iter().map(|e| e.service.as_str()).collect();
        assert_eq!(order, ["crashy", "lossy", "prober"]);
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(check_limit(None, 20).unwrap(), 20);
        assert!(check_limit(Some(0), 20).unwrap_err().to_string().contains("from 1 to 500"));
        assert!(check_limit(Some(100000), 20).is_err());
    }

    #[test]
    fn list_services_merges_processes_and_activity() {
        let s = store();
        let l = s.list_services(&ServiceListQuery::default());
        assert_eq!(l.total, 3);
        assert_eq!(l.services[0].service.as_str(), "lossy");
        let l =
            s.list_services(&ServiceListQuery { name_contains: Some("IDL".into()), ..Default::default() });
        assert_eq!(l.services.len(), 1);
        assert!(l.services[0].running);
    }
}
