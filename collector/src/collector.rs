//! The collector thread: polls the kernel every second and fills the [`Store`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bpfsight_common::{
    ConnKey, LatHist, Owner, ProcEvent, ProcEventKind, SockState, TcpEvent, TcpEventKind, sock_flags,
};

use crate::error::CollectorError;
use crate::history::{HistoryFile, HistoryStatus};
use crate::host::{Histogram, HostCounters};
use crate::journal::JournalWriter;
use crate::loader::{HostSnapshot, KernelCounters, ProgramSet, ProgramStats, Programs};
use crate::plan::SignalGroup;
use crate::service::{IdentitySource, Pid, Resolver, ServiceId};
use crate::store::{Event, EventDetail, EventKind, Store};
use crate::tcp::{Peer, TcpCounters};
use crate::ticks::TickClock;
use crate::{kernel, procs};

/// Where the collector gets its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// eBPF programs in the kernel (needs CAP_BPF and CAP_PERFMON, or root).
    #[default]
    Ebpf,
    /// /proc, coarser, no privileges needed (see [`crate::procfs`]).
    Procfs,
}

/// How the collector runs.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// Where data comes from.
    pub backend: Backend,
    /// Kernel map poll interval (the series resolution is one second regardless).
    pub poll_interval: Duration,
    /// Which programs to attach (benchmarks add or substitute trivial baselines).
    pub programs: ProgramSet,
    /// Signal groups not to collect: their programs are not attached (eBPF source only).
    pub without: Vec<SignalGroup>,
    /// Also write every change to the store to this recording (see [`crate::journal`]).
    pub record: Option<std::path::PathBuf>,
    /// Keep history across restarts in this directory (see [`crate::history`]).
    pub history: Option<HistoryConfig>,
}

/// Where and how often a collector saves its history (see [`crate::history`]).
#[derive(Clone, Debug)]
pub struct HistoryConfig {
    /// The directory of the history file (bpfsight's data directory).
    pub dir: std::path::PathBuf,
    /// How often to save while running; it is saved when the collector stops, too.
    pub every: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            backend: Backend::Ebpf,
            poll_interval: Duration::from_secs(1),
            programs: ProgramSet::All,
            without: Vec::new(),
            record: None,
            history: None,
        }
    }
}

/// A running collector. Dropping it detaches the programs and saves the history.
pub struct Collector {
    store: Arc<RwLock<Store>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    program_stats: Arc<RwLock<Vec<ProgramStats>>>,
    /// Saves the history now and then; stopped after the poller, so its last save holds the
    /// last poll.
    saver: Option<Saver>,
}

pub(crate) fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl Collector {
    /// Starts collecting from `config.backend`. For eBPF: checks privileges, prepares the
    /// kernel filesystems, verifies tracepoint layouts, loads and attaches the programs, and
    /// starts polling.
    pub fn start(config: CollectorConfig) -> Result<Collector, CollectorError> {
        if config.backend == Backend::Procfs {
            return Self::start_procfs(config);
        }
        kernel::check_privileges()?;
        let tracefs = kernel::ensure_mounts()?;
        kernel::raise_memlock();
        let mut programs = Programs::load(config.programs, &config.without, &tracefs)?;
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
        store.health_mut().unavailable = programs.unavailable().to_vec();
        let mut journal = match &config.record {
            Some(path) => Some(JournalWriter::create(path, "ebpf", now)?),
            None => None,
        };
        let ticks = TickClock::calibrate();
        match ticks {
            Some(c) => tracing::debug!(hz = c.hz(), "event tick clock calibrated"),
            None => tracing::warn!("cannot read /proc/timer_list: events are timed when drained (100 ms)"),
        }
        let table = procs::scan(64);
        if let Some(j) = journal.as_mut() {
            j.procs(&table);
        }
        store.set_processes(table);
        let history = restore_history(config.history.as_ref(), "ebpf", &mut store);
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
            prev_host: HostSnapshot::default(),
            handshakes: HashMap::new(),
            host_last_change: HashMap::new(),
            journal,
            ticks,
            interval: config.poll_interval,
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bpfsight-collector".into())
            .spawn(move || poller.run(&stop2))
            .map_err(|source| CollectorError::Io { path: "thread".into(), source })?;
        tracing::info!(programs = ?config.programs, without = ?config.without, "collector started");
        let saver = history.and_then(|(file, every)| Saver::start(file, store.clone(), every));
        Ok(Collector { store, stop, thread: Some(thread), program_stats, saver })
    }

    fn start_procfs(config: CollectorConfig) -> Result<Collector, CollectorError> {
        let now = unix_now().as_secs();
        let mut store = Store::new(now);
        store.health_mut().source = "procfs";
        store.health_mut().started_at = now;
        store.health_mut().unavailable = crate::procfs::unavailable();
        store.set_processes(procs::scan(64));
        let history = restore_history(config.history.as_ref(), "procfs", &mut store);
        let journal = match &config.record {
            Some(path) => Some(JournalWriter::create(path, "procfs", now)?),
            None => None,
        };
        let store = Arc::new(RwLock::new(store));
        let stop = Arc::new(AtomicBool::new(false));
        let mut poller = crate::procfs::ProcfsPoller::new(store.clone(), journal);
        let (stop2, interval) = (stop.clone(), config.poll_interval);
        let thread = std::thread::Builder::new()
            .name("bpfsight-procfs".into())
            .spawn(move || poller.run(&stop2, interval))
            .map_err(|source| CollectorError::Io { path: "thread".into(), source })?;
        tracing::info!("collector started from /proc (coarser than eBPF: see the procfs source docs)");
        let saver = history.and_then(|(file, every)| Saver::start(file, store.clone(), every));
        Ok(Collector { store, stop, thread: Some(thread), program_stats: Arc::default(), saver })
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
#[derive(Clone, Default)]
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
        if let Some(s) = self.saver.take() {
            s.stop();
        }
    }
}

/// Restores `source`'s saved history into a store that has just started, and returns the
/// file to save it to. History is a convenience: a file that cannot be read or restored is
/// logged and the collector starts empty.
fn restore_history(
    config: Option<&HistoryConfig>,
    source: &str,
    store: &mut Store,
) -> Option<(HistoryFile, Duration)> {
    let config = config?;
    let file = match HistoryFile::open(&config.dir, source) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "history will not be kept across restarts");
            return None;
        }
    };
    let mut status = HistoryStatus {
        file: file.path().display().to_string(),
        saving: file.saves(),
        every_s: config.every.as_secs(),
        ..Default::default()
    };
    match file.restore_into(store) {
        Ok(Some(r)) => {
            tracing::info!(
                path = %file.path().display(),
                services = r.services,
                events = r.events,
                bytes = r.bytes,
                age_s = store.now().saturating_sub(r.saved_at),
                "history restored"
            );
            status.restored_from = Some(r.saved_at);
        }
        Ok(None) => tracing::debug!(path = %file.path().display(), "no saved history"),
        Err(e) => {
            tracing::warn!(error = %e, "saved history not restored; starting empty");
            status.last_error = Some(e.to_string());
        }
    }
    store.health_mut().history = Some(status);
    if !file.saves() {
        tracing::info!(path = %file.path().display(), "another bpfsight saves this history; this one only read it");
        return None;
    }
    Some((file, config.every))
}

/// The thread that saves the history every so often, and once more when stopped.
struct Saver {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Saver {
    fn start(file: HistoryFile, store: Arc<RwLock<Store>>, every: Duration) -> Option<Saver> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let spawned = std::thread::Builder::new().name("bpfsight-history".into()).spawn(move || {
            let save = || {
                let outcome = file.save_shared(&store);
                let Ok(mut store) = store.write() else { return };
                let now = store.now();
                let Some(status) = store.health_mut().history.as_mut() else { return };
                match outcome {
                    Ok(Some(s)) => {
                        tracing::debug!(
                            bytes = s.bytes,
                            encode_ms = s.encode_ms,
                            total_ms = s.total_ms,
                            "history saved"
                        );
                        status.last_saved_at = Some(now);
                        status.last_save_bytes = s.bytes as u64;
                        status.last_error = None;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "history not saved");
                        status.last_error = Some(e.to_string());
                    }
                }
            };
            let mut next = std::time::Instant::now() + every;
            while !stop2.load(Ordering::Relaxed) {
                if std::time::Instant::now() >= next {
                    save();
                    next = std::time::Instant::now() + every;
                }
                std::thread::park_timeout(Duration::from_millis(250));
            }
            save();
        });
        match spawned {
            Ok(thread) => Some(Saver { stop, thread }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the history thread; history will not be saved");
                None
            }
        }
    }

    /// Saves one last time and waits for it.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        let _ = self.thread.join();
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
    /// Whole-host cumulative counters at the previous poll.
    prev_host: HostSnapshot,
    /// Handshake times the last poll took from the socket table, for the host poll.
    handshakes: HashMap<Owner, LatHist>,
    /// Poll second at which each process's host counters last changed.
    host_last_change: HashMap<Owner, u64>,
    /// Where changes are recorded, if anywhere.
    journal: Option<JournalWriter>,
    /// Converts the tick counts events are stamped with; `None` (no /proc/timer_list) stamps
    /// them when drained, at most [`DRAIN_EVERY`] late.
    ticks: Option<TickClock>,
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
            match self.programs.sender(*sk) {
                Some(st) => {
                    // A destroyed socket's way is kept for this: its owner, then it is gone.
                    if st.flags & sock_flags::DESTROYED != 0 {
                        gone.push(*sk);
                    }
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
            let seen = self.prev_sends.get(&sk).copied().unwrap_or_default();
            if self.programs.forget_socket(sk, seen) {
                self.prev_sends.remove(&sk);
                self.sock_owner.remove(&sk);
            }
        }
    }

    /// The Unix time in ms of an event stamped with tick count `ticks`.
    fn unix_ms(&self, ticks: u64) -> u64 {
        match &self.ticks {
            Some(c) => c.unix_ms(ticks),
            None => unix_now().as_millis() as u64,
        }
    }

    fn drain_events(&mut self) {
        let mut tcp: Vec<TcpEvent> = Vec::new();
        self.programs.drain_events(|e| tcp.push(e));
        let mut procs: Vec<ProcEvent> = Vec::new();
        self.programs.drain_proc_events(|e| procs.push(e));
        if tcp.is_empty() && procs.is_empty() {
            return;
        }
        let mut records: Vec<Event> = tcp
            .into_iter()
            .filter_map(|e| {
                let kind = match TcpEventKind::from_u32(e.kind)? {
                    TcpEventKind::FailedConnect => EventKind::FailedConnect,
                    TcpEventKind::ResetReceived => EventKind::ResetReceived,
                    TcpEventKind::ResetSent => EventKind::ResetSent,
                };
                let (service, _) = self.resolver.resolve(e.owner.tgid, &e.owner.comm);
                Some(Event {
                    seq: 0,
                    time_ms: self.unix_ms(e.ts_ticks),
                    kind,
                    service,
                    pid: e.owner.tgid,
                    detail: EventDetail::Tcp {
                        local: Peer::from_raw(e.family, e.local_addr, e.local_port).to_string(),
                        peer: Peer::from_raw(e.family, e.peer_addr, e.peer_port).to_string(),
                    },
                })
            })
            .collect();
        let mut oom: Vec<(ServiceId, IdentitySource, Pid, u64)> = Vec::new();
        for e in procs {
            let Some(kind) = ProcEventKind::from_u32(e.kind) else { continue };
            let (service, identity) = self.resolver.resolve(e.owner.tgid, &e.owner.comm);
            let time_ms = self.unix_ms(e.ts_ticks);
            let (kind, detail) = match kind {
                ProcEventKind::OomKill => {
                    oom.push((service.clone(), identity, e.owner.tgid, time_ms / 1000));
                    (
                        EventKind::OomKill,
                        EventDetail::Oom { total_vm_kib: e.total_vm, anon_rss_kib: e.anon_rss },
                    )
                }
                ProcEventKind::FailedExit => (EventKind::FailedExit, exit_detail(e.exit_code)),
            };
            records.push(Event { seq: 0, time_ms, kind, service, pid: e.owner.tgid, detail });
        }
        records.sort_by_key(|e| e.time_ms);
        if let Ok(mut store) = self.store.write() {
            for mut r in records {
                r.seq = store.push_event(r.clone());
                if let Some(j) = self.journal.as_mut() {
                    j.event(&r);
                }
            }
            for (service, identity, pid, t) in oom {
                let d = HostCounters { oom_kills: 1, ..Default::default() };
                store.record_host(t, &service, identity, &[pid], &d);
                if let Some(j) = self.journal.as_mut() {
                    j.host(t, &service, identity, &[pid], &d);
                }
            }
        }
    }

    /// Whole-host counters -> per-service deltas for second `now`; forgets exited processes.
    fn poll_host(&mut self, now: u64) -> Vec<(ServiceId, IdentitySource, Vec<Pid>, HostCounters)> {
        let cur = self.programs.read_host();
        let mut per_owner: HashMap<Owner, HostCounters> = HashMap::new();
        for (k, v) in &cur.procs {
            let prev = self.prev_host.procs.get(k).copied().unwrap_or_default();
            if *v != prev {
                per_owner.entry(*k).or_default().add_proc(v, &prev);
            }
        }
        for (k, v) in &cur.io {
            let prev = self.prev_host.io.get(k).copied().unwrap_or_default();
            if *v != prev {
                per_owner.entry(k.owner).or_default().add_io(k.dev, v, &prev);
            }
        }
        // bpfsight's own failures are its machinery (map iterations end in ENOENT, /proc scans
        // meet exiting processes), not the host's; they would top every error report.
        let me = std::process::id();
        for (k, v) in cur.syscall_errors.iter().filter(|(k, _)| k.owner.tgid != me) {
            let prev = self.prev_host.syscall_errors.get(k).copied().unwrap_or_default();
            if *v != prev {
                per_owner.entry(k.owner).or_default().add_syscall_error(k.nr, k.errno, v.wrapping_sub(prev));
            }
        }
        for (k, v) in &cur.syscall_lat {
            let prev = self.prev_host.syscall_lat.get(k).copied().unwrap_or_default();
            if *v != prev {
                per_owner.entry(k.owner).or_default().add_syscall_lat(k.nr, &Histogram::delta(v, &prev));
            }
        }
        for (k, v) in &cur.connect_lat {
            let prev = self.prev_host.connect_lat.get(k).copied().unwrap_or_default();
            if *v != prev {
                per_owner.entry(*k).or_default().connect.merge(&Histogram::delta(v, &prev));
            }
        }
        // Handshakes counted in their sockets' ways, taken by this poll.
        for (k, h) in std::mem::take(&mut self.handshakes) {
            per_owner.entry(k).or_default().connect.merge(&Histogram::delta(&h, &LatHist::default()));
        }
        let mut per_service: HashMap<ServiceId, (IdentitySource, Vec<Pid>, HostCounters)> = HashMap::new();
        for (owner, d) in per_owner {
            self.host_last_change.insert(owner, now);
            let (service, identity) = self.resolver.resolve(owner.tgid, &owner.comm);
            let e =
                per_service.entry(service).or_insert_with(|| (identity, Vec::new(), HostCounters::default()));
            if owner.tgid != 0 && e.1.len() < 16 && !e.1.contains(&owner.tgid) {
                e.1.push(owner.tgid);
            }
            e.2.merge(&d);
        }
        // Forget processes that exited and have been quiet, so the kernel maps stay small.
        let mut stale: Vec<Owner> = cur
            .procs
            .keys()
            .chain(cur.connect_lat.keys())
            .chain(cur.io.keys().map(|k| &k.owner))
            .chain(cur.syscall_errors.keys().map(|k| &k.owner))
            .chain(cur.syscall_lat.keys().map(|k| &k.owner))
            .filter(|o| o.tgid != 0)
            .filter(|o| self.host_last_change.get(o).is_none_or(|t| now.saturating_sub(*t) >= FORGET_AFTER_S))
            .copied()
            .collect();
        stale.sort_unstable_by_key(|o| (o.tgid, o.comm));
        stale.dedup();
        stale.retain(|o| !procs::alive(o.tgid));
        self.prev_host = cur;
        for o in &stale {
            self.programs.forget_host(o, &self.prev_host);
            self.host_last_change.remove(o);
            let p = &mut self.prev_host;
            p.procs.remove(o);
            p.connect_lat.remove(o);
            p.io.retain(|k, _| k.owner != *o);
            p.syscall_errors.retain(|k, _| k.owner != *o);
            p.syscall_lat.retain(|k, _| k.owner != *o);
        }
        per_service.into_iter().map(|(s, (i, p, c))| (s, i, p, c)).collect()
    }

    /// A change of `d` in the counters of owner-and-peer key `k`, filed under its service.
    fn conn_delta(&mut self, k: &ConnKey, d: TcpCounters) -> Delta {
        let (service, identity) = self.resolver.resolve(k.tgid, &k.comm);
        (service, identity, k.tgid, Peer::from_raw(k.family, k.peer_addr, k.peer_port), d)
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
                deltas.push(self.conn_delta(k, d));
            }
        }
        // Events on tracked sockets, counted in their ways: deltas already.
        let taken = self.programs.take_sock_counts();
        self.handshakes = taken.handshakes;
        for (k, d) in taken.tcp {
            deltas.push(self.conn_delta(&k, d));
        }
        self.poll_sends(n, &mut deltas);
        self.programs.free_destroyed_sockets();
        let host = self.poll_host(now);
        let procs = n.is_multiple_of(2).then(|| procs::scan(64));
        let kc: KernelCounters = self.programs.kernel_counters();
        if let Ok(mut store) = self.store.write() {
            for (service, identity, pid, peer, d) in &deltas {
                store.record(now, service, *identity, *pid, *peer, *d);
            }
            for (service, identity, pids, d) in &host {
                store.record_host(now, service, *identity, pids, d);
            }
            if let Some(j) = self.journal.as_mut() {
                for (service, identity, pid, peer, d) in &deltas {
                    j.tcp(now, service, *identity, *pid, *peer, *d);
                }
                for (service, identity, pids, d) in &host {
                    j.host(now, service, *identity, pids, d);
                }
            }
            store.tick(now);
            let h = store.health_mut();
            h.ringbuf_drops = kc.ringbuf_drops;
            h.conn_stats_full = kc.conn_stats_full;
            h.sock_insert_failed = kc.sock_insert_failed;
            h.send_stats_full = kc.send_stats_full;
            h.proc_stats_full = kc.proc_stats_full;
            h.start_map_full = kc.start_map_full;
            h.host_stats_full = kc.host_stats_full;
            h.proc_ringbuf_drops = kc.proc_ringbuf_drops;
            h.thread_slots_shared = kc.thread_slots_shared;
            if let Some(p) = procs {
                if let Some(j) = self.journal.as_mut() {
                    j.procs(&p);
                }
                store.set_processes(p);
            }
            if let Some(j) = self.journal.as_mut() {
                j.tick(now, store.health());
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

/// Decodes a raw `exit_code` (`status << 8 | core flag | signal`).
fn exit_detail(code: u32) -> EventDetail {
    let signal = code & 0x7f;
    EventDetail::Exit {
        exit_status: (signal == 0).then_some((code >> 8) & 0xff),
        signal: (signal != 0).then(|| signal_name(signal)),
        core_dumped: code & 0x80 != 0,
    }
}

/// `SIGKILL` for 9.
fn signal_name(sig: u32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES.get(sig as usize).filter(|n| !n.is_empty()).map_or_else(|| format!("SIG{sig}"), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_decode() {
        match exit_detail(1 << 8) {
            EventDetail::Exit { exit_status, signal, core_dumped } => {
                assert_eq!((exit_status, signal, core_dumped), (Some(1), None, false));
            }
            _ => panic!(),
        }
        match exit_detail(9) {
            EventDetail::Exit { exit_status, signal, .. } => {
                assert_eq!((exit_status, signal.as_deref()), (None, Some("SIGKILL")));
            }
            _ => panic!(),
        }
        match exit_detail(0x80 | 11) {
            EventDetail::Exit { signal, core_dumped, .. } => {
                assert_eq!((signal.as_deref(), core_dumped), (Some("SIGSEGV"), true));
            }
            _ => panic!(),
        }
    }
}
