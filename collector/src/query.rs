//! Answers to the questions the MCP tools ask, computed from the [`Store`].
//!
//! Every answer is bounded: lists carry `total` (before the limit) and `truncated`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::service::{IdentitySource, Pid, ServiceId};
use crate::store::{Health, Store, TcpEventRecord};
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
    /// RSTs sent.
    pub resets_sent: u64,
    /// RSTs received.
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
        secs: u64,
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
            resets_sent: c.resets_sent,
            resets_received: c.resets_received,
            retransmits: c.retransmits,
            retransmits_per_s: round3(c.retransmits as f64 / secs as f64),
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
pub const ERROR_RATE_DEFINITION: &str = "error_rate_pct = 100 * (failed_connects + resets_sent + \
    resets_received + retransmits) / (connect attempts + accepted connections + sends), where \
    connect attempts = connections opened by the service + failed connects, and sends = sendmsg \
    calls on its TCP sockets that sent data";

/// One service whose network error rate is above the threshold.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceErrors {
    /// Service name.
    pub service: ServiceId,
    /// See [`ERROR_RATE_DEFINITION`].
    pub error_rate_pct: f64,
    /// Numerator of the rate.
    pub errors: u64,
    /// Denominator of the rate.
    pub attempts: u64,
    /// Failed connects.
    pub failed_connects: u64,
    /// RSTs sent.
    pub resets_sent: u64,
    /// RSTs received.
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
    /// Latest discrete events (failed connects, resets) of the service in the window.
    pub recent_events: Vec<TcpEventRecord>,
}

/// Answer of [`Store::service_errors`].
#[derive(Clone, Debug, Serialize)]
pub struct ErrorReport {
    /// Window length, seconds.
    pub window_s: u64,
    /// Threshold applied, percent.
    pub threshold_pct: f64,
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
    /// Command line of its lowest live pid (truncated; secrets are masked before it leaves).
    pub cmdline: Option<String>,
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
    /// Most services returned (default 50).
    pub limit: Option<usize>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Store {
    fn known(&self, name: &str) -> Result<ServiceId, QueryError> {
        let id = ServiceId::new(name);
        if self.services.contains_key(&id) || self.processes.contains_key(&id) {
            return Ok(id);
        }
        let lower = name.to_lowercase();
        let mut similar: Vec<&str> = self
            .services
            .keys()
            .chain(self.processes.keys())
            .map(|s| s.as_str())
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
        let limit = q.limit.unwrap_or(20);
        let mut rows: Vec<ServiceConnections> = Vec::new();
        if let Some(name) = &q.service {
            let id = self.known(name)?;
            let row = match self.services.get(&id) {
                Some(st) => {
                    let (c, peers) = st.window(self.now, secs);
                    ServiceConnections::new(id, &c, st.active(), secs, peers)
                }
                None => ServiceConnections::new(id, &TcpCounters::default(), 0, secs, HashMap::new()),
            };
            rows.push(row);
        } else {
            for (id, st) in &self.services {
                let (c, peers) = st.window(self.now, secs);
                if c.is_zero() && st.active() == 0 {
                    continue;
                }
                rows.push(ServiceConnections::new(id.clone(), &c, st.active(), secs, peers));
            }
        }
        rows.sort_by(|a, b| {
            let ea = a.failed_connects + a.resets_sent + a.resets_received + a.retransmits;
            let eb = b.failed_connects + b.resets_sent + b.resets_received + b.retransmits;
            (eb, b.opened + b.sends).cmp(&(ea, a.opened + a.sends)).then(a.service.cmp(&b.service))
        });
        let total = rows.len();
        rows.truncate(limit);
        Ok(ConnectionReport {
            window_s: secs,
            resolution_s: q.window.resolution_secs(),
            truncated: total > rows.len(),
            services: rows,
            total,
            source: self.health.source,
        })
    }

    /// Services whose network error rate is above `threshold_pct`, worst first.
    pub fn service_errors(
        &self,
        threshold_pct: f64,
        window: Window,
        limit: usize,
    ) -> Result<ErrorReport, QueryError> {
        if !threshold_pct.is_finite() || !(0.0..=100.0).contains(&threshold_pct) {
            return Err(QueryError::Invalid {
                name: "threshold_pct",
                message: format!(
                    "{threshold_pct} is out of range; use a percentage from 0 to 100 (default 1.0)"
                ),
            });
        }
        let secs = window.secs();
        let from_ms = self.now.saturating_sub(secs) * 1000;
        let mut rows = Vec::new();
        for (id, st) in &self.services {
            let (c, peers) = st.window(self.now, secs);
            let errors = c.errors();
            if errors == 0 {
                continue;
            }
            let attempts = c.attempts();
            let rate = 100.0 * errors as f64 / attempts.max(1) as f64;
            if rate < threshold_pct {
                continue;
            }
            let (top, _) = top_peers(peers, TOP_PEERS);
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
                resets_sent: c.resets_sent,
                resets_received: c.resets_received,
                retransmits: c.retransmits,
                connect_attempts: c.opened_active + c.failed_connects,
                accepted: c.opened_passive,
                sends: c.sends,
                top_peers: top,
                recent_events,
            });
        }
        rows.sort_by(|a, b| {
            b.error_rate_pct
                .total_cmp(&a.error_rate_pct)
                .then(b.errors.cmp(&a.errors))
                .then(a.service.cmp(&b.service))
        });
        let total = rows.len();
        rows.truncate(limit);
        Ok(ErrorReport {
            window_s: secs,
            threshold_pct,
            definition: ERROR_RATE_DEFINITION,
            truncated: total > rows.len(),
            services: rows,
            total,
            source: self.health.source,
        })
    }

    /// Services known from live processes and from recorded activity.
    pub fn list_services(&self, q: &ServiceListQuery) -> ServiceList {
        let limit = q.limit.unwrap_or(50);
        let needle = q.name_contains.as_ref().map(|s| s.to_lowercase());
        let mut names: BTreeMap<&ServiceId, ()> = BTreeMap::new();
        for k in self.services.keys().chain(self.processes.keys()) {
            names.insert(k, ());
        }
        let mut rows: Vec<ServiceSummary> = names
            .into_keys()
            .filter(|id| needle.as_ref().is_none_or(|n| id.as_str().to_lowercase().contains(n)))
            .map(|id| {
                let live = self.processes.get(id);
                let st = self.services.get(id);
                let (c, _) = st.map(|s| s.window(self.now, 300)).unwrap_or_default();
                let mut pids: Vec<Pid> = match (live, st) {
                    (Some(p), _) => p.clone(),
                    (None, Some(s)) => s.pids.iter().copied().collect(),
                    (None, None) => Vec::new(),
                };
                pids.truncate(16);
                ServiceSummary {
                    service: id.clone(),
                    identity: st.map(|s| s.identity).unwrap_or(IdentitySource::ProcessName),
                    pids,
                    process_count: live.map_or(0, |p| p.len()),
                    cmdline: self.cmdlines.get(id).cloned(),
                    running: live.is_some(),
                    active_connections: st.map_or(0, |s| s.active()),
                    opened_5m: c.opened(),
                    network_errors_5m: c.errors(),
                    last_tcp_activity_s_ago: st
                        .filter(|s| s.last_active > 0)
                        .map(|s| self.now.saturating_sub(s.last_active)),
                }
            })
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
        let r = s.service_errors(1.0, "5m".parse().unwrap(), 10).unwrap();
        assert_eq!(r.total, 1);
        let e = &r.services[0];
        assert_eq!(e.errors, 20);
        assert_eq!(e.attempts, 100 + 1);
        assert!((e.error_rate_pct - 100.0 * 20.0 / 101.0).abs() < 1e-2);
        assert!(
            s.service_errors(-1.0, Window::DEFAULT, 10).unwrap_err().to_string().contains("from 0 to 100")
        );
        assert_eq!(s.service_errors(50.0, Window::DEFAULT, 10).unwrap().total, 0);
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
