//! Loads the committed BPF object, attaches its programs and reads their maps.
//!
//! The object is built from `bpf/ebpf` by `cargo xtask build-bpf` and committed at
//! `bpf/bpfsight.bpf.o`, so a stable `cargo build` needs no BPF toolchain.

use std::collections::HashMap;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use bpfsight_common::programs::{self, Hook};
use bpfsight_common::{
    ConnKey, ConnStats, Counter, ListenKey, Owner, SendStats, SockState, TcpEvent, globals, maps,
};

use crate::error::CollectorError;
use crate::tcp::TcpCounters;

/// The compiled eBPF object (all programs, including the benchmark's baselines).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/bpfsight.bpf.o");

/// Which programs to attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgramSet {
    /// The TCP programs (normal operation).
    #[default]
    Tcp,
    /// The TCP programs and the trivial baselines on the same hooks (benchmark: cost per event).
    TcpWithBaseline,
    /// Only the trivial baselines (benchmark: the cost of the hooks themselves).
    BaselineOnly,
}

/// Drop and overflow counters kept by the kernel side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Events lost because the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Updates lost because the aggregate map was full.
    pub conn_stats_full: u64,
    /// Sockets that could not be tracked.
    pub sock_insert_failed: u64,
    /// Sends not counted because the per-socket send map was full.
    pub send_stats_full: u64,
}

/// Cost of one attached program, from the kernel's BPF statistics.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    /// Program name.
    pub name: String,
    /// Total run time (only counted while `kernel.bpf_stats_enabled` is on).
    pub run_time: Duration,
    /// Number of runs.
    pub run_count: u64,
}

/// Turns on the kernel's per-program run-time statistics (`kernel.bpf_stats_enabled`) for as
/// long as the returned descriptor is open.
pub fn enable_bpf_stats() -> Result<std::os::fd::OwnedFd, CollectorError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| CollectorError::load("BPF statistics", e))
}

/// The loaded and attached programs with their maps.
pub struct Programs {
    ebpf: Ebpf,
    conn_stats: PerCpuHashMap<MapData, ConnKey, ConnStats>,
    send_stats: PerCpuHashMap<MapData, u64, SendStats>,
    socks: BpfHashMap<MapData, u64, SockState>,
    listeners: BpfHashMap<MapData, ListenKey, Owner>,
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
}

impl Programs {
    /// Loads the object and attaches the programs of `set`.
    pub fn load(set: ProgramSet) -> Result<Self, CollectorError> {
        let kernel_btf = crate::btf::Btf::from_sys_fs().map_err(|e| CollectorError::Unsupported {
            what: "kernel BTF (/sys/kernel/btf/vmlinux)".into(),
            hint: format!("{e}; bpfsight needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        })?;
        let sk_protocol = kernel_btf.member_offset("sock", "sk_protocol").map_err(|e| {
            CollectorError::Unsupported { what: "struct sock layout".into(), hint: e.to_string() }
        })? as u32;
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::SK_PROTOCOL_OFFSET, &sk_protocol, true)
            .load(OBJECT)
            .map_err(|e| CollectorError::load("object", e))?;
        let aya_btf = aya::Btf::from_sys_fs().map_err(|e| CollectorError::load("kernel BTF", e))?;
        let stale = |what: String| CollectorError::Unsupported {
            what,
            hint: "the embedded BPF object is stale; rebuild with `cargo xtask build-bpf`".into(),
        };
        let wanted: Vec<programs::Program> = match set {
            ProgramSet::Tcp => programs::TCP.to_vec(),
            ProgramSet::TcpWithBaseline => {
                [programs::TCP, programs::BASELINE, &[programs::CLASSIC_SEND_FLOOR]].concat()
            }
            ProgramSet::BaselineOnly => programs::BASELINE.to_vec(),
        };
        for p in wanted {
            let name = p.name;
            let prog = ebpf.program_mut(name).ok_or_else(|| stale(format!("program {name}")))?;
            match p.hook {
                Hook::Tracepoint(cat, event) => {
                    let tp: &mut TracePoint =
                        prog.try_into().map_err(|e| CollectorError::load(format!("program {name}"), e))?;
                    tp.load().map_err(|e| CollectorError::load(format!("program {name}"), e))?;
                    tp.attach(cat, event)
                        .map_err(|e| CollectorError::load(format!("attach {name} to {cat}:{event}"), e))?;
                }
                Hook::BtfTracepoint(event) => {
                    let tp: &mut BtfTracePoint =
                        prog.try_into().map_err(|e| CollectorError::load(format!("program {name}"), e))?;
                    tp.load(event, &aya_btf)
                        .map_err(|e| CollectorError::load(format!("program {name}"), e))?;
                    tp.attach()
                        .map_err(|e| CollectorError::load(format!("attach {name} to tp_btf/{event}"), e))?;
                }
            }
            tracing::debug!(name, hook = ?p.hook, "attached");
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name).ok_or_else(|| CollectorError::Unsupported {
                what: format!("map {name}"),
                hint: "the embedded BPF object is stale; rebuild with `cargo xtask build-bpf`".into(),
            })
        };
        let conn_stats = PerCpuHashMap::try_from(take(&mut ebpf, maps::CONN_STATS)?)
            .map_err(|e| CollectorError::load("map CONN_STATS", e))?;
        let send_stats = PerCpuHashMap::try_from(take(&mut ebpf, maps::SEND_STATS)?)
            .map_err(|e| CollectorError::load("map SEND_STATS", e))?;
        let socks = BpfHashMap::try_from(take(&mut ebpf, maps::SOCKS)?)
            .map_err(|e| CollectorError::load("map SOCKS", e))?;
        let listeners = BpfHashMap::try_from(take(&mut ebpf, maps::LISTENERS)?)
            .map_err(|e| CollectorError::load("map LISTENERS", e))?;
        let events = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)
            .map_err(|e| CollectorError::load("map EVENTS", e))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)
            .map_err(|e| CollectorError::load("map COUNTERS", e))?;
        Ok(Programs { ebpf, conn_stats, send_stats, socks, listeners, events, counters })
    }

    /// Cumulative counters per key, summed over CPUs.
    pub fn read_conn_stats(&self) -> HashMap<ConnKey, TcpCounters> {
        let mut out = HashMap::new();
        for item in self.conn_stats.iter() {
            let Ok((k, per_cpu)) = item else { continue };
            let mut sum = TcpCounters::default();
            for v in per_cpu.iter() {
                sum += TcpCounters::from(*v);
            }
            out.insert(k, sum);
        }
        out
    }

    /// Cumulative send counters per socket address, summed over CPUs.
    pub fn read_send_stats(&self) -> HashMap<u64, TcpCounters> {
        let mut out = HashMap::new();
        for item in self.send_stats.iter() {
            let Ok((sk, per_cpu)) = item else { continue };
            let mut sum = TcpCounters::default();
            for v in per_cpu.iter() {
                sum += TcpCounters::from(*v);
            }
            out.insert(sk, sum);
        }
        out
    }

    /// What the kernel side knows of a socket (owner, peer), if it still exists.
    pub fn socket(&self, sk: u64) -> Option<SockState> {
        self.socks.get(&sk, 0).ok()
    }

    /// Tells the kernel side who owns a listening port (for listeners opened before we were).
    /// Entries the programs already made are kept: they are newer.
    pub fn add_listener(&mut self, key: ListenKey, owner: Owner) {
        const BPF_NOEXIST: u64 = 1;
        let _ = self.listeners.insert(key, owner, BPF_NOEXIST);
    }

    /// Deletes a destroyed socket's send counters (their final values were read).
    pub fn forget_socket(&mut self, sk: u64) {
        let _ = self.send_stats.remove(&sk);
    }

    /// Deletes an aggregate key (its process is gone and its totals were read).
    pub fn forget(&mut self, key: &ConnKey) {
        let _ = self.conn_stats.remove(key);
    }

    /// Drains the event ring buffer, calling `f` for each event.
    pub fn drain_events(&mut self, mut f: impl FnMut(TcpEvent)) {
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<TcpEvent>() {
                // SAFETY: the kernel wrote a TcpEvent; read_unaligned copes with any alignment.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const TcpEvent) };
                f(ev);
            }
        }
    }

    /// The kernel side's drop counters, summed over CPUs.
    pub fn kernel_counters(&self) -> KernelCounters {
        let get = |c: Counter| self.counters.get(&(c as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
        KernelCounters {
            ringbuf_drops: get(Counter::RingbufDrops),
            conn_stats_full: get(Counter::ConnStatsFull),
            sock_insert_failed: get(Counter::SockInsertFailed),
            send_stats_full: get(Counter::SendStatsFull),
        }
    }

    /// Run time and count of every loaded program.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(ProgramStats {
                    name: name.to_string(),
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }
}
