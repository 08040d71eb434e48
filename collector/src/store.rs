//! Bounded, per-service history of TCP counters and a bounded log of discrete events.
//!
//! Memory budget: each service keeps at most [`FINE_SLOTS`] one-second slots and
//! [`COARSE_SLOTS`] one-minute slots, each with at most [`MAX_PEERS_PER_SLOT`] peers (extra
//! peers are summed into [`Peer::OTHER`]); slots exist only for seconds with activity. At most
//! [`MAX_SERVICES`] services are kept (the least recently active is evicted) and
//! [`MAX_EVENTS`] events. Worst case is therefore fixed; typical use is a few MiB.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::Serialize;

use crate::service::{IdentitySource, Pid, ServiceId};
use crate::tcp::{Peer, TcpCounters};

/// One-second slots kept per service (16 minutes: the 15-minute window plus slack).
pub const FINE_SLOTS: u64 = 16 * 60;
/// One-minute slots kept per service (6 hours).
pub const COARSE_SLOTS: u64 = 6 * 60;
/// Peers kept per slot before the rest are summed into [`Peer::OTHER`].
pub const MAX_PEERS_PER_SLOT: usize = 16;
/// Services kept.
pub const MAX_SERVICES: usize = 2048;
/// Discrete events kept.
pub const MAX_EVENTS: usize = 10_000;
/// Pids remembered per service.
pub const MAX_PIDS_PER_SERVICE: usize = 64;

/// Counters of one time slot.
#[derive(Clone, Debug, Default)]
struct Slot {
    start: u64,
    total: TcpCounters,
    peers: Vec<(Peer, TcpCounters)>,
}

impl Slot {
    fn add(&mut self, peer: Peer, d: TcpCounters) {
        self.total += d;
        if let Some((_, c)) = self.peers.iter_mut().find(|(p, _)| *p == peer) {
            *c += d;
        } else if self.peers.len() < MAX_PEERS_PER_SLOT {
            self.peers.push((peer, d));
        } else if let Some((_, c)) = self.peers.iter_mut().find(|(p, _)| *p == Peer::OTHER) {
            *c += d;
        } else {
            // Make room for OTHER by folding the last peer into it.
            let (_, last) = self.peers.pop().expect("cap > 0");
            let mut other = last;
            other += d;
            self.peers.push((Peer::OTHER, other));
        }
    }
}

/// A ring of fixed-resolution slots covering a fixed span, sparse in time.
#[derive(Clone, Debug)]
struct Ring {
    resolution: u64,
    span: u64,
    slots: VecDeque<Slot>,
}

impl Ring {
    fn new(resolution: u64, slots: u64) -> Self {
        Ring { resolution, span: resolution * slots, slots: VecDeque::new() }
    }

    fn add(&mut self, t: u64, peer: Peer, d: TcpCounters) {
        let start = t - t % self.resolution;
        match self.slots.back_mut() {
            Some(s) if s.start == start => s.add(peer, d),
            // Late data for an older slot (clock stepped back): fold into the newest slot.
            Some(s) if s.start > start => s.add(peer, d),
            _ => {
                let mut s = Slot { start, ..Default::default() };
                s.add(peer, d);
                self.slots.push_back(s);
            }
        }
        while self.slots.front().is_some_and(|s| s.start + self.span <= t) {
            self.slots.pop_front();
        }
    }

    /// Sums slots overlapping `(now - secs, now]`. A slot at second `t` holds what was polled
    /// at `t`, i.e. activity in `(t - 1, t]`.
    fn sum(&self, now: u64, secs: u64, per_peer: &mut HashMap<Peer, TcpCounters>) -> TcpCounters {
        let from = now.saturating_sub(secs);
        let mut total = TcpCounters::default();
        for s in self.slots.iter().rev() {
            if s.start + self.resolution - 1 <= from {
                break;
            }
            if s.start > now {
                continue;
            }
            total += s.total;
            for (p, c) in &s.peers {
                *per_peer.entry(*p).or_default() += *c;
            }
        }
        total
    }

    fn approx_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| {
                std::mem::size_of::<Slot>() + s.peers.capacity() * std::mem::size_of::<(Peer, TcpCounters)>()
            })
            .sum()
    }
}

/// Everything kept about one service.
#[derive(Clone, Debug)]
pub(crate) struct ServiceState {
    pub(crate) identity: IdentitySource,
    pub(crate) pids: BTreeSet<Pid>,
    fine: Ring,
    coarse: Ring,
    /// Since the collector started, to derive connections still established.
    pub(crate) opened_total: u64,
    pub(crate) closed_total: u64,
    pub(crate) last_active: u64,
}

impl ServiceState {
    fn new(identity: IdentitySource) -> Self {
        ServiceState {
            identity,
            pids: BTreeSet::new(),
            fine: Ring::new(1, FINE_SLOTS),
            coarse: Ring::new(60, COARSE_SLOTS),
            opened_total: 0,
            closed_total: 0,
            last_active: 0,
        }
    }

    /// Counters over the last `secs` seconds before `now`, in total and per peer.
    pub(crate) fn window(&self, now: u64, secs: u64) -> (TcpCounters, HashMap<Peer, TcpCounters>) {
        let mut peers = HashMap::new();
        let ring = if secs <= crate::Window::FINE_MAX.secs() { &self.fine } else { &self.coarse };
        let total = ring.sum(now, secs, &mut peers);
        (total, peers)
    }

    /// Connections opened since start and not yet closed.
    pub(crate) fn active(&self) -> u64 {
        self.opened_total.saturating_sub(self.closed_total)
    }
}

/// A discrete TCP event, as kept for queries.
#[derive(Clone, Debug, Serialize)]
pub struct TcpEventRecord {
    /// Wall-clock time, Unix milliseconds.
    pub time_ms: u64,
    /// `failed_connect`, `reset_received` or `reset_sent`.
    pub kind: &'static str,
    /// Service it is attributed to.
    pub service: ServiceId,
    /// Process id (0 when no process owned the socket).
    pub pid: Pid,
    /// Local endpoint.
    pub local: String,
    /// Remote endpoint.
    pub peer: String,
}

/// How the collector itself is doing: drops and lags a user should know about.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Health {
    /// Where data comes from (`ebpf`).
    pub source: &'static str,
    /// Unix seconds when collection started.
    pub started_at: u64,
    /// Unix seconds of the last successful poll of the kernel maps.
    pub last_poll: u64,
    /// Events the kernel could not write because the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Counter updates lost because the kernel aggregate map was full.
    pub conn_stats_full: u64,
    /// Sockets the kernel could not track (owner map insert failed).
    pub sock_insert_failed: u64,
    /// Sends not counted because the kernel's per-socket send map was full.
    pub send_stats_full: u64,
    /// Events aged out of the bounded event log.
    pub events_evicted: u64,
    /// Services evicted because more than [`MAX_SERVICES`] were active.
    pub services_evicted: u64,
}

/// The collector's memory: per-service series, events, the live process table, health.
#[derive(Default)]
pub struct Store {
    pub(crate) services: HashMap<ServiceId, ServiceState>,
    pub(crate) events: VecDeque<TcpEventRecord>,
    /// Live processes by service name, refreshed by the collector.
    pub(crate) processes: HashMap<ServiceId, Vec<Pid>>,
    /// Command line per live service.
    pub(crate) cmdlines: HashMap<ServiceId, String>,
    /// The second the latest data belongs to; queries look back from here.
    pub(crate) now: u64,
    pub(crate) health: Health,
}

impl Store {
    /// An empty store whose clock reads `now` (Unix seconds).
    pub fn new(now: u64) -> Self {
        Store { now, ..Default::default() }
    }

    /// Advances the store's clock to `now` (Unix seconds).
    pub fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        self.health.last_poll = now;
    }

    /// Adds `delta` for `service` talking to `peer` at second `t`.
    pub fn record(
        &mut self,
        t: u64,
        service: &ServiceId,
        identity: IdentitySource,
        pid: Pid,
        peer: Peer,
        delta: TcpCounters,
    ) {
        if delta.is_zero() {
            return;
        }
        if !self.services.contains_key(service) && self.services.len() >= MAX_SERVICES {
            self.evict_one();
        }
        let st = self.services.entry(service.clone()).or_insert_with(|| ServiceState::new(identity));
        if pid != 0 && st.pids.len() < MAX_PIDS_PER_SERVICE {
            st.pids.insert(pid);
        }
        st.fine.add(t, peer, delta);
        st.coarse.add(t, peer, delta);
        st.opened_total += delta.opened();
        st.closed_total += delta.closed;
        st.last_active = st.last_active.max(t);
        self.now = self.now.max(t);
    }

    fn evict_one(&mut self) {
        if let Some(victim) = self.services.iter().min_by_key(|(_, s)| s.last_active).map(|(k, _)| k.clone())
        {
            self.services.remove(&victim);
            self.health.services_evicted += 1;
        }
    }

    /// Appends a discrete event, evicting the oldest past [`MAX_EVENTS`].
    pub fn push_event(&mut self, e: TcpEventRecord) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.health.events_evicted += 1;
        }
        self.events.push_back(e);
    }

    /// Replaces the live process table.
    pub fn set_processes(&mut self, procs: crate::procs::ProcessTable) {
        self.processes = procs.pids;
        self.cmdlines = procs.cmdlines;
    }

    /// Mutable access to health counters, for the collector.
    pub fn health_mut(&mut self) -> &mut Health {
        &mut self.health
    }

    /// The collector's health.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Approximate bytes held by series and events (for the memory budget check).
    pub fn approx_bytes(&self) -> usize {
        let series: usize =
            self.services.values().map(|s| s.fine.approx_bytes() + s.coarse.approx_bytes()).sum();
        series + self.events.len() * std::mem::size_of::<TcpEventRecord>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn peer(port: u16) -> Peer {
        Peer { addr: IpAddr::V4(Ipv4Addr::LOCALHOST), port }
    }

    fn rt(n: u64) -> TcpCounters {
        TcpCounters { retransmits: n, ..Default::default() }
    }

    #[test]
    fn window_sums_only_recent_seconds() {
        let mut s = Store::new(1000);
        let svc = ServiceId::new("a");
        for t in 1000..1100 {
            s.record(t, &svc, IdentitySource::ProcessName, 1, peer(80), rt(1));
        }
        let st = &s.services[&svc];
        assert_eq!(st.window(1099, 10).0.retransmits, 10);
        assert_eq!(st.window(1099, 100).0.retransmits, 100);
        assert_eq!(st.window(1099, 900).0.retransmits, 100);
        // Nothing happened in the last 10 s before 1200.
        assert_eq!(st.window(1200, 10).0.retransmits, 0);
    }

    #[test]
    fn fine_history_is_bounded_and_coarse_keeps_older_data() {
        let mut s = Store::new(0);
        let svc = ServiceId::new("a");
        for t in 0..3 * 3600 {
            s.record(t, &svc, IdentitySource::ProcessName, 1, peer(80), rt(1));
        }
        let st = &s.services[&svc];
        assert!(st.fine.slots.len() as u64 <= FINE_SLOTS);
        assert!(st.coarse.slots.len() as u64 <= COARSE_SLOTS);
        let now = 3 * 3600 - 1;
        assert_eq!(st.window(now, 900).0.retransmits, 900);
        // One hour at minute resolution: 60 full minutes.
        assert_eq!(st.window(now, 3600).0.retransmits, 3600);
    }

    #[test]
    fn peers_beyond_the_cap_fold_into_other_without_losing_counts() {
        let mut s = Store::new(0);
        let svc = ServiceId::new("a");
        for p in 0..100u16 {
            s.record(5, &svc, IdentitySource::ProcessName, 1, peer(p), rt(1));
        }
        let (total, peers) = s.services[&svc].window(5, 1);
        assert_eq!(total.retransmits, 100);
        assert!(peers.len() <= MAX_PEERS_PER_SLOT);
        assert_eq!(peers.values().map(|c| c.retransmits).sum::<u64>(), 100);
    }

    #[test]
    fn services_and_events_are_bounded() {
        let mut s = Store::new(0);
        for i in 0..MAX_SERVICES + 10 {
            s.record(
                i as u64,
                &ServiceId::new(&format!("s{i}")),
                IdentitySource::ProcessName,
                1,
                peer(1),
                rt(1),
            );
        }
        assert_eq!(s.services.len(), MAX_SERVICES);
        assert_eq!(s.health.services_evicted, 10);
        assert!(!s.services.contains_key(&ServiceId::new("s0")));
        for i in 0..MAX_EVENTS + 5 {
            s.push_event(TcpEventRecord {
                time_ms: i as u64,
                kind: "failed_connect",
                service: ServiceId::new("x"),
                pid: 1,
                local: String::new(),
                peer: String::new(),
            });
        }
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(s.health.events_evicted, 5);
    }
}
