//! The collector thread: polls the kernel every second and fills the [`Store`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bpfsight_common::{ConnKey, Owner, SockState, TcpEvent, TcpEventKind};

use crate::error::CollectorError;
use crate::loader::{KernelCounters, ProgramSet, ProgramStats, Programs};
use crate::service::Resolver;
use crate::store::{Store, TcpEventRecord};
use crate::tcp::{Peer, TcpCounters};
use crate::{kernel, procs};

/// How the collector runs.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// Kernel map poll interval (the series resolution is one second regardless).
    pub poll_interval: Duration,
    /// Which programs to attach (benchmarks add or substitute trivial baselines).
    pub programs: ProgramSet,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig { poll_interval: Duration::from_secs(1), programs: ProgramSet::Tcp }
    }
}

/// A running collector. Dropping it detaches the programs.
pub struct Collector {
    store: Arc<RwLock<Store>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    program_stats: Arc<RwLock<Vec<ProgramStats>>>,
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Collector {
    /// Checks privileges, prepares the kernel filesystems, verifies tracepoint layouts, loads
    /// and attaches the programs, and starts polling.
    pub fn start(config: CollectorConfig) -> Result<Collector, CollectorError> {
        kernel::check_privileges()?;
        let tracefs = kernel::ensure_mounts()?;
        kernel::check_layouts(&tracefs)?;
        kernel::raise_memlock();
        let mut programs = Programs::load(config.programs)?;
        // After attaching, so a listener opened meanwhile is seen by one side or the other.
        let listeners = crate::preexisting::listeners();
        tracing::debug!(count = listeners.len(), "pre-existing TCP listeners");
        for (key, owner) in listeners {
            programs.add_listener(key, owner);
        }
        let now = unix_now().as_secs();
        let mut store = Store::new(now);
        store.health_mut().source = "ebpf";
        store.health_mut().started_at = now;
        store.set_processes(procs::scan(64));
        let store = Arc::new(RwLock::new(store));
        let stop = Arc::new(AtomicBool::new(false));
        let program_stats = Arc::new(RwLock::new(Vec::new()));
        let mut poller = Poller {
            programs,
            store: store.clone(),
            program_stats: program_stats.clone(),
            resolver: Resolver::default(),
            prev: HashMap::new(),
            last_change: HashMap::new(),
            prev_sends: HashMap::new(),
            sock_owner: HashMap::new(),
            mono_to_unix_ns: unix_now().as_nanos() as i128 - monotonic_ns() as i128,
            interval: config.poll_interval,
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bpfsight-collector".into())
            .spawn(move || poller.run(&stop2))
            .map_err(|source| CollectorError::Io { path: "thread".into(), source })?;
        tracing::info!(programs = ?config.programs, "collector started");
        Ok(Collector { store, stop, thread: Some(thread), program_stats })
    }

    /// The shared store the collector fills.
    pub fn store(&self) -> &Arc<RwLock<Store>> {
        &self.store
    }

    /// A cloneable handle to [`Collector::program_stats`], for exporters that outlive a borrow.
    pub fn program_stats_handle(&self) -> ProgramStatsHandle {
        ProgramStatsHandle(self.program_stats.clone())
    }

    /// Run time and count per program as of the last poll (counted only while BPF statistics
    /// are enabled, see [`crate::loader::enable_bpf_stats`]).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.program_stats.read().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Shared view of the programs' run-time statistics.
#[derive(Clone)]
pub struct ProgramStatsHandle(Arc<RwLock<Vec<ProgramStats>>>);

impl ProgramStatsHandle {
    /// The statistics as of the last poll.
    pub fn get(&self) -> Vec<ProgramStats> {
        self.0.read().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A change to record: (service, identity, pid, peer, counters).
type Delta = (crate::ServiceId, crate::service::IdentitySource, u32, Peer, TcpCounters);

/// State of the polling loop.
struct Poller {
    programs: Programs,
    store: Arc<RwLock<Store>>,
    program_stats: Arc<RwLock<Vec<ProgramStats>>>,
    resolver: Resolver,
    /// Cumulative totals at the previous poll, to take deltas.
    prev: HashMap<ConnKey, TcpCounters>,
    /// Poll second at which each key last changed, to forget dead processes' keys.
    last_change: HashMap<ConnKey, u64>,
    /// Per-socket send totals at the previous poll.
    prev_sends: HashMap<u64, TcpCounters>,
    /// Who each socket with sends belongs to, remembered past its destruction.
    sock_owner: HashMap<u64, SockState>,
    mono_to_unix_ns: i128,
    interval: Duration,
}

/// Keys of exited processes unchanged for this long are deleted from the kernel map.
const FORGET_AFTER_S: u64 = 30;
/// Events are drained this often so the ring buffer never fills between polls.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

impl Poller {
    fn run(&mut self, stop: &AtomicBool) {
        let mut next_poll = std::time::Instant::now();
        let mut polls: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            self.drain_events();
            if std::time::Instant::now() >= next_poll {
                self.poll(polls);
                polls += 1;
                next_poll += self.interval;
            }
            std::thread::sleep(
                DRAIN_EVERY
                    .min(next_poll.saturating_duration_since(std::time::Instant::now()))
                    .max(Duration::from_millis(5)),
            );
        }
    }

    /// Per-socket send counters -> per-(owner, peer) deltas. Sockets are attributed through
    /// the kernel's socket map; destroyed sockets' counters are read one last time, then freed.
    fn poll_sends(&mut self, n: u64, deltas: &mut Vec<Delta>) {
        let sends = self.programs.read_send_stats();
        let sweep = n.is_multiple_of(10);
        let mut gone = Vec::new();
        for (sk, cur) in &sends {
            let prev = self.prev_sends.get(sk).copied().unwrap_or_default();
            let changed = *cur != prev;
            if !changed && !sweep {
                continue;
            }
            // One lookup per active socket: tells both who owns it and whether it still exists.
            match self.programs.socket(*sk) {
                Some(st) => {
                    self.sock_owner.insert(*sk, st);
                }
                None => gone.push(*sk),
            }
            if !changed {
                continue;
            }
            let d = cur.delta_since(&prev);
            let st = self.sock_owner.get(sk).copied();
            let (owner, peer) = match st {
                Some(st) => (st.owner, Peer::from_raw(st.family, st.peer_addr, st.peer_port)),
                None => (Owner::UNKNOWN, Peer::OTHER),
            };
            let (service, identity) = self.resolver.resolve(owner.tgid, &owner.comm);
            deltas.push((service, identity, owner.tgid, peer, d));
        }
        self.prev_sends = sends;
        for sk in gone {
            self.programs.forget_socket(sk);
            self.prev_sends.remove(&sk);
            self.sock_owner.remove(&sk);
        }
    }

    fn drain_events(&mut self) {
        let mut batch: Vec<TcpEvent> = Vec::new();
        self.programs.drain_events(|e| batch.push(e));
        if batch.is_empty() {
            return;
        }
        let records: Vec<TcpEventRecord> = batch
            .into_iter()
            .filter_map(|e| {
                let kind = match TcpEventKind::from_u32(e.kind)? {
                    TcpEventKind::FailedConnect => "failed_connect",
                    TcpEventKind::ResetReceived => "reset_received",
                    TcpEventKind::ResetSent => "reset_sent",
                };
                let (service, _) = self.resolver.resolve(e.owner.tgid, &e.owner.comm);
                let time_ms = ((e.ts_ns as i128 + self.mono_to_unix_ns) / 1_000_000).max(0) as u64;
                Some(TcpEventRecord {
                    time_ms,
                    kind,
                    service,
                    pid: e.owner.tgid,
                    local: Peer::from_raw(e.family, e.local_addr, e.local_port).to_string(),
                    peer: Peer::from_raw(e.family, e.peer_addr, e.peer_port).to_string(),
                })
            })
            .collect();
        if let Ok(mut store) = self.store.write() {
            for r in records {
                store.push_event(r);
            }
        }
    }

    fn poll(&mut self, n: u64) {
        let now = unix_now().as_secs();
        let current = self.programs.read_conn_stats();
        let mut deltas = Vec::new();
        for (k, v) in &current {
            let prev = self.prev.get(k).copied().unwrap_or_default();
            let d = v.delta_since(&prev);
            if !d.is_zero() {
                self.last_change.insert(*k, now);
                let (service, identity) = self.resolver.resolve(k.tgid, &k.comm);
                deltas.push((
                    service,
                    identity,
                    k.tgid,
                    Peer::from_raw(k.family, k.peer_addr, k.peer_port),
                    d,
                ));
            }
        }
        self.poll_sends(n, &mut deltas);
        let procs = n.is_multiple_of(2).then(|| procs::scan(64));
        let kc: KernelCounters = self.programs.kernel_counters();
        if let Ok(mut store) = self.store.write() {
            for (service, identity, pid, peer, d) in &deltas {
                store.record(now, service, *identity, *pid, *peer, *d);
            }
            store.tick(now);
            let h = store.health_mut();
            h.ringbuf_drops = kc.ringbuf_drops;
            h.conn_stats_full = kc.conn_stats_full;
            h.sock_insert_failed = kc.sock_insert_failed;
            h.send_stats_full = kc.send_stats_full;
            if let Some(p) = procs {
                store.set_processes(p);
            }
        }
        // Forget keys of exited processes that have been quiet, so the kernel map stays small.
        let stale: Vec<ConnKey> = current
            .keys()
            .filter(|k| k.tgid != 0)
            .filter(|k| self.last_change.get(k).is_none_or(|t| now.saturating_sub(*t) >= FORGET_AFTER_S))
            .filter(|k| !procs::alive(k.tgid))
            .copied()
            .collect();
        for k in &stale {
            self.programs.forget(k);
            self.last_change.remove(k);
        }
        self.prev = current;
        for k in &stale {
            self.prev.remove(k);
        }
        if n.is_multiple_of(10) {
            self.resolver.retain_live(&|pid| procs::alive(pid));
        }
        // One bpf(OBJ_GET_INFO) per program: cheap enough to keep current every poll.
        if let Ok(mut s) = self.program_stats.write() {
            *s = self.programs.program_stats();
        }
    }
}
