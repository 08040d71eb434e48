//! The `procfs` source: the same store, filled from /proc when BPF is not permitted (or not
//! wanted). Coarser than eBPF, and every answer says `source: procfs`:
//!
//! - CPU time (`stat`), run-queue wait (`schedstat`: total wait and timeslices, so a
//!   per-second mean instead of a histogram), context switches (`status`), storage bytes read
//!   and written (`io`, readable only for processes we may ptrace), exits (pids that vanish);
//! - TCP for the whole host only, as the pseudo-service `[host]` (`/proc/net/snmp`: opens,
//!   failed connects, resets sent, retransmitted segments; `sends` counts segments sent);
//! - OOM kills for the whole host (`/proc/vmstat` `oom_kill`), also under `[host]`.
//!
//! Not available here: per-service TCP and peers, syscall errors and latency, block IO
//! latency and devices, page allocations, handshake time, exit codes, OOM victims.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::host::{Histogram, HostCounters, IoTotals};
use crate::journal::JournalWriter;
use crate::plan::UnavailableSignal;
use crate::procs;
use crate::service::{IdentitySource, Pid, Resolver, ServiceId};
use crate::store::Store;
use crate::tcp::{Peer, TcpCounters};

/// The pseudo-service host-wide counters are recorded under.
pub const HOST: &str = "[host]";

/// What /proc cannot give, listed in the health and in every answer's `unavailable` as on a
/// kernel that lacks a hook, so a client reads the zeros right whichever the source.
pub fn unavailable() -> Vec<UnavailableSignal> {
    const WHY: &str = "/proc has no such figure; the eBPF source (root, or CAP_BPF + CAP_PERFMON) gives it";
    [
        "TCP per service and peer (only whole-host counters, under [host])",
        "failed syscalls and syscall latency",
        "block IO latency and devices",
        "page allocations",
        "TCP handshake latency",
        "exit codes",
        "OOM victims (only the whole-host count, under [host])",
    ]
    .into_iter()
    .map(|signal| UnavailableSignal { signal: signal.into(), program: "procfs".into(), reason: WHY.into() })
    .collect()
}

/// Cumulative per-process counters from one read of /proc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ProcSample {
    /// `starttime` (clock ticks since boot): tells a recycled pid from the old process.
    start: u64,
    cpu_ticks: u64,
    wait_ns: u64,
    timeslices: u64,
    vol: u64,
    invol: u64,
    read_bytes: u64,
    write_bytes: u64,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Reads one process: `(comm, flags, sample)`; `None` if it vanished meanwhile.
fn sample(pid: Pid) -> Option<(String, u64, ProcSample)> {
    let stat = read(&format!("/proc/{pid}/stat"))?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // Fields after the comm, 0-based: 0 state, 6 flags, 11 utime, 12 stime, 19 starttime.
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut s = ProcSample { start: num(19), cpu_ticks: num(11) + num(12), ..Default::default() };
    if let Some(ss) = read(&format!("/proc/{pid}/schedstat")) {
        let v: Vec<u64> = ss.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        s.wait_ns = v.get(1).copied().unwrap_or(0);
        s.timeslices = v.get(2).copied().unwrap_or(0);
    }
    if let Some(st) = read(&format!("/proc/{pid}/status")) {
        for line in st.lines() {
            if line.starts_with("voluntary_ctxt_switches:") {
                s.vol = second_field(line);
            } else if line.starts_with("nonvoluntary_ctxt_switches:") {
                s.invol = second_field(line);
            }
        }
    }
    if let Some(io) = read(&format!("/proc/{pid}/io")) {
        for line in io.lines() {
            if line.starts_with("read_bytes:") {
                s.read_bytes = second_field(line);
            } else if line.starts_with("write_bytes:") {
                s.write_bytes = second_field(line);
            }
        }
    }
    Some((comm, num(6), s))
}

/// Host-wide TCP counters from `/proc/net/snmp`.
fn tcp_snmp() -> Option<TcpCounters> {
    let text = read("/proc/net/snmp")?;
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| {
        names.iter().position(|n| *n == name).and_then(|i| values.get(i)).and_then(|v| v.parse().ok())
    };
    Some(TcpCounters {
        opened_active: get("ActiveOpens").unwrap_or(0),
        opened_passive: get("PassiveOpens").unwrap_or(0),
        failed_connects: get("AttemptFails").unwrap_or(0),
        resets_sent: get("OutRsts").unwrap_or(0),
        retransmits: get("RetransSegs").unwrap_or(0),
        sends: get("OutSegs").unwrap_or(0),
        ..Default::default()
    })
}

/// Host-wide OOM kills from `/proc/vmstat`.
fn oom_kills() -> Option<u64> {
    read("/proc/vmstat")?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

fn tcp_delta(cur: &TcpCounters, prev: &TcpCounters) -> TcpCounters {
    TcpCounters {
        opened_active: cur.opened_active.saturating_sub(prev.opened_active),
        opened_passive: cur.opened_passive.saturating_sub(prev.opened_passive),
        failed_connects: cur.failed_connects.saturating_sub(prev.failed_connects),
        resets_sent: cur.resets_sent.saturating_sub(prev.resets_sent),
        retransmits: cur.retransmits.saturating_sub(prev.retransmits),
        sends: cur.sends.saturating_sub(prev.sends),
        ..Default::default()
    }
}

/// Polls /proc once a second into the store.
pub(crate) struct ProcfsPoller {
    store: Arc<RwLock<Store>>,
    resolver: Resolver,
    /// Last sample per pid, with the name it had and the service that name resolved to.
    prev: HashMap<Pid, (String, ServiceId, IdentitySource, ProcSample)>,
    prev_tcp: Option<TcpCounters>,
    prev_oom: Option<u64>,
    ns_per_tick: u64,
    journal: Option<JournalWriter>,
}

impl ProcfsPoller {
    pub(crate) fn new(store: Arc<RwLock<Store>>, journal: Option<JournalWriter>) -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        ProcfsPoller {
            store,
            resolver: Resolver::default(),
            prev: HashMap::new(),
            prev_tcp: tcp_snmp(),
            prev_oom: oom_kills(),
            ns_per_tick: 1_000_000_000 / hz,
            journal,
        }
    }

    pub(crate) fn run(&mut self, stop: &AtomicBool, interval: Duration) {
        let mut next = Instant::now();
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                self.poll(n);
                n += 1;
                next += interval;
            }
            std::thread::sleep(
                next.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)),
            );
        }
    }

    fn poll(&mut self, n: u64) {
        const PF_KTHREAD: u64 = 0x0020_0000;
        let now = crate::collector::unix_now().as_secs();
        let mut per_service: HashMap<ServiceId, (IdentitySource, Vec<Pid>, HostCounters)> = HashMap::new();
        let mut seen: HashMap<Pid, (String, ServiceId, IdentitySource, ProcSample)> = HashMap::new();
        let pids = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<Pid>().ok()));
        for pid in pids {
            let Some((comm, flags, cur)) = sample(pid) else { continue };
            // Same process and same name: same service. A process that renamed itself
            // (prctl, exec) is resolved again.
            let (service, identity) = match self.prev.get(&pid) {
                Some((c, s, i, p)) if p.start == cur.start && *c == comm => (s.clone(), *i),
                _ if flags & PF_KTHREAD != 0 => (ServiceId::new(Resolver::KERNEL), IdentitySource::Kernel),
                _ => {
                    let mut raw = [0u8; 16];
                    let b = comm.as_bytes();
                    raw[..b.len().min(15)].copy_from_slice(&b[..b.len().min(15)]);
                    self.resolver.resolve(pid, &raw)
                }
            };
            if let Some((_, _, _, prev)) = self.prev.get(&pid).filter(|(_, _, _, p)| p.start == cur.start) {
                let mut d = HostCounters {
                    oncpu_ns: cur.cpu_ticks.saturating_sub(prev.cpu_ticks) * self.ns_per_tick,
                    vol_switches: cur.vol.saturating_sub(prev.vol),
                    invol_switches: cur.invol.saturating_sub(prev.invol),
                    ..Default::default()
                };
                d.runq = Histogram::from_mean(
                    cur.timeslices.saturating_sub(prev.timeslices),
                    cur.wait_ns.saturating_sub(prev.wait_ns),
                );
                d.io = IoTotals {
                    read_bytes: cur.read_bytes.saturating_sub(prev.read_bytes),
                    write_bytes: cur.write_bytes.saturating_sub(prev.write_bytes),
                    ..Default::default()
                };
                if !d.is_zero() {
                    let e = per_service
                        .entry(service.clone())
                        .or_insert_with(|| (identity, Vec::new(), HostCounters::default()));
                    if e.1.len() < 16 {
                        e.1.push(pid);
                    }
                    e.2.merge(&d);
                }
            }
            seen.insert(pid, (comm, service, identity, cur));
        }
        // Processes that vanished since the last poll exited.
        for (pid, (_, service, identity, _)) in &self.prev {
            if !seen.contains_key(pid) {
                let e = per_service
                    .entry(service.clone())
                    .or_insert_with(|| (*identity, Vec::new(), HostCounters::default()));
                e.2.exits += 1;
            }
        }
        self.prev = seen;
        let host = ServiceId::new(HOST);
        let tcp = tcp_snmp();
        let tcp_d = match (&tcp, &self.prev_tcp) {
            (Some(c), Some(p)) => tcp_delta(c, p),
            _ => TcpCounters::default(),
        };
        self.prev_tcp = tcp.or(self.prev_tcp);
        let oom = oom_kills();
        if let (Some(c), Some(p)) = (oom, self.prev_oom)
            && c > p
        {
            let e = per_service
                .entry(host.clone())
                .or_insert_with(|| (IdentitySource::Kernel, Vec::new(), HostCounters::default()));
            e.2.oom_kills += c - p;
        }
        self.prev_oom = oom.or(self.prev_oom);
        let table = n.is_multiple_of(2).then(|| procs::scan(64));
        if let Ok(mut store) = self.store.write() {
            store.record(now, &host, IdentitySource::Kernel, 0, Peer::OTHER, tcp_d);
            for (service, (identity, pids, d)) in &per_service {
                store.record_host(now, service, *identity, pids, d);
            }
            if let Some(j) = self.journal.as_mut() {
                j.tcp(now, &host, IdentitySource::Kernel, 0, Peer::OTHER, tcp_d);
                for (service, (identity, pids, d)) in &per_service {
                    j.host(now, service, *identity, pids, d);
                }
            }
            store.tick(now);
            if let Some(t) = table {
                if let Some(j) = self.journal.as_mut() {
                    j.procs(&t);
                }
                store.set_processes(t);
            }
            if let Some(j) = self.journal.as_mut() {
                j.tick(now, store.health());
            }
        }
        if n.is_multiple_of(10) {
            self.resolver.retain_live(&procs::alive);
        }
    }
}

/// The number after a `key:` in /proc's `status` and `io` files (`voluntary_ctxt_switches:  12`).
fn second_field(line: &str) -> u64 {
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let (comm, _, s) = sample(std::process::id()).expect("own /proc entry");
        assert!(!comm.is_empty());
        assert!(s.start > 0);
        assert!(tcp_snmp().is_some());
    }
}
