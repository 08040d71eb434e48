//! Loads the committed BPF object, attaches its programs and reads their maps.
//!
//! The object is built from `bpf/ebpf` by `cargo xtask build-bpf` and committed at
//! `bpf/bpfsight.bpf.o`, so a stable `cargo build` needs no BPF toolchain.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{BtfTracePoint, RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use bpfsight_common::programs::{self, Hook};
use bpfsight_common::{
    ConnKey, ConnStats, Counter, IoKey, IoStats, LatHist, ListenKey, Owner, ProcEvent, ProcStats,
    SEND_SLOTS_PER_CPU, SendStats, SockState, SyscallKey, TcpEvent, globals, maps,
};

use crate::btf::Btf;
use crate::error::CollectorError;
use crate::plan::{self, SignalGroup, UnavailableSignal};
use crate::send_slots::SendSlots;
use crate::sock_table::{SockTable, Taken};
use crate::tcp::TcpCounters;

/// The compiled eBPF object (all programs, including the benchmark's baselines).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/bpfsight.bpf.o");

/// Which programs to attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgramSet {
    /// The TCP and whole-host programs (normal operation).
    #[default]
    All,
    /// All programs and the trivial baselines on the same hooks (benchmark: cost per event).
    AllWithBaseline,
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
    /// Scheduler/memory/process updates lost because the per-process map was full.
    pub proc_stats_full: u64,
    /// Slow syscalls not timed because the start-time map was full (block requests not
    /// timed because the in-flight map was full).
    pub start_map_full: u64,
    /// IO, syscall or connect-latency updates lost because their map was full.
    pub host_stats_full: u64,
    /// OOM-kill and exit events lost because their ring buffer was full.
    pub proc_ringbuf_drops: u64,
    /// Per-thread batches flushed early because two live threads shared a slot.
    pub thread_slots_shared: u64,
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
    send_slots: SendSlots,
    socks: SockTable,
    listeners: BpfHashMap<MapData, ListenKey, Owner>,
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    host: HostMaps,
    unavailable: Vec<UnavailableSignal>,
}

/// The maps of the whole-host programs.
struct HostMaps {
    proc_stats: PerCpuHashMap<MapData, Owner, ProcStats>,
    io_stats: PerCpuHashMap<MapData, IoKey, IoStats>,
    syscall_errors: PerCpuHashMap<MapData, SyscallKey, u64>,
    syscall_lat: PerCpuHashMap<MapData, SyscallKey, LatHist>,
    connect_lat: PerCpuHashMap<MapData, Owner, LatHist>,
    events: RingBuf<MapData>,
}

/// Cumulative whole-host counters as of one read, summed over CPUs.
#[derive(Default)]
pub struct HostSnapshot {
    /// Per process.
    pub procs: HashMap<Owner, ProcStats>,
    /// Per process and device.
    pub io: HashMap<IoKey, IoStats>,
    /// Failed syscalls per process, syscall and errno.
    pub syscall_errors: HashMap<SyscallKey, u64>,
    /// Latency of the timed syscalls per process and syscall.
    pub syscall_lat: HashMap<SyscallKey, LatHist>,
    /// TCP handshake time per process.
    pub connect_lat: HashMap<Owner, LatHist>,
}

/// Field-wise sum of per-CPU values.
trait SumCpus: Copy + Default {
    fn add(&mut self, o: &Self);
}

impl SumCpus for u64 {
    fn add(&mut self, o: &Self) {
        *self = self.wrapping_add(*o);
    }
}

impl SumCpus for LatHist {
    fn add(&mut self, o: &Self) {
        self.count = self.count.wrapping_add(o.count);
        self.sum_ns = self.sum_ns.wrapping_add(o.sum_ns);
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a = a.wrapping_add(*b);
        }
    }
}

impl SumCpus for ProcStats {
    fn add(&mut self, o: &Self) {
        SumCpus::add(&mut self.runq, &o.runq);
        self.oncpu_ns = self.oncpu_ns.wrapping_add(o.oncpu_ns);
        self.vol_switches = self.vol_switches.wrapping_add(o.vol_switches);
        self.invol_switches = self.invol_switches.wrapping_add(o.invol_switches);
        self.page_allocs = self.page_allocs.wrapping_add(o.page_allocs);
        self.execs = self.execs.wrapping_add(o.execs);
        self.exits = self.exits.wrapping_add(o.exits);
        self.failed_exits = self.failed_exits.wrapping_add(o.failed_exits);
        self.killed = self.killed.wrapping_add(o.killed);
    }
}

impl SumCpus for IoStats {
    fn add(&mut self, o: &Self) {
        SumCpus::add(&mut self.lat, &o.lat);
        self.read_ops = self.read_ops.wrapping_add(o.read_ops);
        self.write_ops = self.write_ops.wrapping_add(o.write_ops);
        self.read_bytes = self.read_bytes.wrapping_add(o.read_bytes);
        self.write_bytes = self.write_bytes.wrapping_add(o.write_bytes);
        self.errors = self.errors.wrapping_add(o.errors);
        self.discard_ops = self.discard_ops.wrapping_add(o.discard_ops);
        self.discard_bytes = self.discard_bytes.wrapping_add(o.discard_bytes);
    }
}

/// Reads a per-CPU hash map, summing each key's values over CPUs.
fn read_summed<K, V>(map: &PerCpuHashMap<MapData, K, V>) -> HashMap<K, V>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + SumCpus,
{
    let mut out = HashMap::new();
    for item in map.iter() {
        let Ok((k, per_cpu)) = item else { continue };
        let mut sum = V::default();
        for v in per_cpu.iter() {
            sum.add(v);
        }
        out.insert(k, sum);
    }
    out
}

/// Where the fields the programs read directly sit in the running kernel's structs (byte
/// offsets from its BTF), handed to the programs as `.rodata` constants.
struct KernelLayout {
    sk_protocol: u32,
    /// `sk_buff.cb` + `tcp_skb_cb.tcp_gso_segs`.
    skb_gso_segs: u32,
    syscall_nr: u32,
    task_pid: u32,
    task_tgid: u32,
    task_comm: u32,
    task_exit_code: u32,
    /// `task_struct.sched_info.run_delay`, `.pcount`, `.last_arrival`.
    run_delay: u32,
    pcount: u32,
    last_arrival: u32,
    /// `task_struct.se.sum_exec_runtime`.
    sum_exec: u32,
    /// Zeros when the block layer's structs are not as the block programs read them (they
    /// are then left out).
    block: BlockLayout,
}

/// Where the block programs read a request, its queue's disk and its device number. These
/// structs changed more than the others (`request_queue.disk` is from Linux 5.15, a
/// `gendisk.part0` pointer from 5.11), so a kernel without them loses the block programs only.
#[derive(Default)]
struct BlockLayout {
    /// `request.q`, `.cmd_flags`, `.__data_len`, `.start_time_ns`.
    rq_queue: u32,
    rq_cmd_flags: u32,
    rq_data_len: u32,
    rq_start_time: u32,
    /// `request_queue.disk`, `gendisk.part0`, `block_device.bd_dev`.
    queue_disk: u32,
    disk_part0: u32,
    bdev_dev: u32,
}

impl BlockLayout {
    fn from_btf(btf: &Btf) -> Result<Self, crate::btf::BtfError> {
        let offset = |strukt: &str, member: &str| btf.member_offset(strukt, member).map(|o| o as u32);
        // The programs follow these three.
        let pointer =
            |strukt: &str, member: &str| btf.pointer_member_offset(strukt, member).map(|o| o as u32);
        Ok(BlockLayout {
            rq_queue: pointer("request", "q")?,
            rq_cmd_flags: offset("request", "cmd_flags")?,
            rq_data_len: offset("request", "__data_len")?,
            rq_start_time: offset("request", "start_time_ns")?,
            queue_disk: pointer("request_queue", "disk")?,
            disk_part0: pointer("gendisk", "part0")?,
            bdev_dev: offset("block_device", "bd_dev")?,
        })
    }
}

/// Whether a program on `hook` reads the block layer's structs (see [`BlockLayout`]).
fn reads_block_layout(hook: Hook) -> bool {
    matches!(hook, Hook::BtfTracepoint("block_rq_issue" | "block_rq_complete"))
}

impl KernelLayout {
    fn from_btf(btf: &Btf, block: BlockLayout) -> Result<Self, CollectorError> {
        let offset = |strukt: &str, member: &str| {
            btf.member_offset(strukt, member).map(|o| o as u32).map_err(|e| CollectorError::Unsupported {
                what: format!("struct {strukt} layout"),
                hint: e.to_string(),
            })
        };
        let sched_info = offset("task_struct", "sched_info")?;
        Ok(KernelLayout {
            sk_protocol: offset("sock", "sk_protocol")?,
            skb_gso_segs: offset("sk_buff", "cb")? + offset("tcp_skb_cb", "tcp_gso_segs")?,
            // x86-64's saved syscall number; other architectures name it differently.
            syscall_nr: offset("pt_regs", "orig_ax")?,
            task_pid: offset("task_struct", "pid")?,
            task_tgid: offset("task_struct", "tgid")?,
            task_comm: offset("task_struct", "comm")?,
            task_exit_code: offset("task_struct", "exit_code")?,
            run_delay: sched_info + offset("sched_info", "run_delay")?,
            pcount: sched_info + offset("sched_info", "pcount")?,
            last_arrival: sched_info + offset("sched_info", "last_arrival")?,
            sum_exec: offset("task_struct", "se")? + offset("sched_entity", "sum_exec_runtime")?,
            block,
        })
    }
}

/// Fails with what is missing if the running kernel does not have `hook`.
fn check_hook(hook: Hook, tracefs: &Path, btf: &Btf) -> Result<(), CollectorError> {
    let present = match hook {
        Hook::Tracepoint(cat, event) => tracefs.join("events").join(cat).join(event).is_dir(),
        // Every tracepoint is also a raw one, and BTF lists each as `btf_trace_<event>`.
        Hook::BtfTracepoint(event) | Hook::RawTracepoint(event) => btf.has_btf_tracepoint(event),
    };
    if present { Ok(()) } else { Err(crate::kernel::missing_hook(hook)) }
}

/// Slots of the kernel's per-thread table: the power of two at or above `pid_max` (so every
/// thread has its own), at most 32,768 (128 bytes each: 4 MiB of kernel memory at most).
fn thread_slots() -> u32 {
    const MAX: u32 = 32_768;
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(MAX, |n| n.max(2).next_power_of_two().min(MAX))
}

impl Programs {
    /// Loads the object and attaches the programs of `set`.
    ///
    /// Every hook is checked first (`tracefs`: the tracing root, for classic tracepoints),
    /// and so is every record field a program reads. A program whose hook is missing or whose
    /// record differs is left out, with the programs that need it (see [`crate::plan`]), and
    /// [`Programs::unavailable`] says what is lost. Only when nothing is left is the kernel
    /// reported as [`CollectorError::Unsupported`], so `--source auto` falls back to /proc.
    /// Programs of a group in `without` are left out the same way, their reason saying so.
    pub fn load(set: ProgramSet, without: &[SignalGroup], tracefs: &Path) -> Result<Self, CollectorError> {
        let wanted: Vec<programs::Program> = match set {
            ProgramSet::All => [programs::TCP, programs::HOST].concat(),
            ProgramSet::AllWithBaseline => [
                programs::TCP,
                programs::HOST,
                programs::BASELINE,
                programs::HOST_BASELINE,
                programs::COST_PROBES,
                &[programs::CLASSIC_SEND_FLOOR],
            ]
            .concat(),
            ProgramSet::BaselineOnly => [programs::BASELINE, programs::HOST_BASELINE].concat(),
        };
        // Resolved first, so the parsed BTF is freed before aya parses its own copy.
        let (layout, plan) = {
            let btf = Btf::from_sys_fs().map_err(|e| CollectorError::Unsupported {
                what: "kernel BTF (/sys/kernel/btf/vmlinux)".into(),
                hint: format!("{e}; bpfsight needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
            })?;
            let mut first_error = None;
            let block = BlockLayout::from_btf(&btf);
            let plan = plan::plan(&wanted, without, &plan::hidden_hooks(), |hook| {
                let checked = check_hook(hook, tracefs, &btf).and_then(|()| match hook {
                    Hook::Tracepoint(cat, event) => crate::kernel::check_layout(tracefs, cat, event),
                    _ if reads_block_layout(hook) => match &block {
                        Ok(_) => Ok(()),
                        Err(e) => Err(CollectorError::Load {
                            what: "block programs".into(),
                            source: format!("the kernel's block layer structs differ: {e}").into(),
                        }),
                    },
                    Hook::BtfTracepoint(_) | Hook::RawTracepoint(_) => Ok(()),
                });
                checked.map_err(|e| {
                    let reason = match &e {
                        CollectorError::Unsupported { .. } => {
                            let (what, why) = crate::kernel::missing_hook_reason(hook);
                            format!("{what}: {why}")
                        }
                        other => other.to_string(),
                    };
                    first_error.get_or_insert(e);
                    reason
                })
            });
            if plan.attach.is_empty() {
                return Err(first_error.unwrap_or_else(|| CollectorError::Unsupported {
                    what: "eBPF collection".into(),
                    hint: format!(
                        "every program is turned off (--without) or hidden ({}); leave at least one signal group on",
                        plan::HIDE_HOOKS_ENV
                    ),
                }));
            }
            for u in &plan.unavailable {
                tracing::warn!(signal = %u.signal, program = %u.program, reason = %u.reason, "not collected");
            }
            (KernelLayout::from_btf(&btf, block.unwrap_or_default())?, plan)
        };
        let aya_btf = aya::Btf::from_sys_fs().map_err(|e| CollectorError::load("kernel BTF", e))?;
        let thread_slots = thread_slots();
        // Programs index the send slots by the CPU they run on, below the possible CPUs' count.
        let cpus =
            aya::util::nr_cpus().map_err(|(path, e)| CollectorError::Io { path: path.into(), source: e })?;
        let send_slots = cpus * SEND_SLOTS_PER_CPU as usize;
        let thread_slots_mask = thread_slots - 1;
        let l = &layout;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global(globals::SK_PROTOCOL_OFFSET, &l.sk_protocol, true)
            .override_global(globals::SKB_TCP_GSO_SEGS_OFFSET, &l.skb_gso_segs, true)
            .override_global(globals::PT_REGS_SYSCALL_NR_OFFSET, &l.syscall_nr, true)
            .override_global(globals::TASK_PID_OFFSET, &l.task_pid, true)
            .override_global(globals::TASK_EXIT_CODE_OFFSET, &l.task_exit_code, true)
            .override_global(globals::TASK_RUN_DELAY_OFFSET, &l.run_delay, true)
            .override_global(globals::TASK_PCOUNT_OFFSET, &l.pcount, true)
            .override_global(globals::TASK_LAST_ARRIVAL_OFFSET, &l.last_arrival, true)
            .override_global(globals::TASK_SUM_EXEC_OFFSET, &l.sum_exec, true)
            .override_global(globals::TASK_TGID_OFFSET, &l.task_tgid, true)
            .override_global(globals::TASK_COMM_OFFSET, &l.task_comm, true)
            .override_global(globals::RQ_QUEUE_OFFSET, &l.block.rq_queue, true)
            .override_global(globals::RQ_CMD_FLAGS_OFFSET, &l.block.rq_cmd_flags, true)
            .override_global(globals::RQ_DATA_LEN_OFFSET, &l.block.rq_data_len, true)
            .override_global(globals::RQ_START_TIME_OFFSET, &l.block.rq_start_time, true)
            .override_global(globals::QUEUE_DISK_OFFSET, &l.block.queue_disk, true)
            .override_global(globals::DISK_PART0_OFFSET, &l.block.disk_part0, true)
            .override_global(globals::BDEV_DEV_OFFSET, &l.block.bdev_dev, true)
            .override_global(globals::THREAD_SLOTS_MASK, &thread_slots_mask, true)
            .map_max_entries(maps::THREADS, thread_slots)
            .map_max_entries(maps::SYSCALL_START, thread_slots)
            .map_max_entries(maps::SEND_SLOTS, send_slots as u32)
            // Benchmark-only memory, 64 KiB per CPU with the probes, 64 bytes without.
            .map_max_entries(
                maps::PROBE_LOG,
                if set == ProgramSet::AllWithBaseline { maps::PROBE_LOG_ENTRIES } else { 1 },
            )
            .load(OBJECT)
            .map_err(|e| CollectorError::load("object", e))?;
        let stale = |what: String| CollectorError::Unsupported {
            what,
            hint: "the embedded BPF object is stale; rebuild with `cargo xtask build-bpf`".into(),
        };
        // A program may be listed once per hook it attaches to (the timed syscalls' entries).
        let mut loaded = std::collections::HashSet::new();
        for p in &plan.attach {
            let name = p.name;
            let prog = ebpf.program_mut(name).ok_or_else(|| stale(format!("program {name}")))?;
            match p.hook {
                Hook::Tracepoint(cat, event) => {
                    let tp: &mut TracePoint =
                        prog.try_into().map_err(|e| CollectorError::load(format!("program {name}"), e))?;
                    if loaded.insert(name) {
                        tp.load().map_err(|e| CollectorError::load(format!("program {name}"), e))?;
                    }
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
                Hook::RawTracepoint(event) => {
                    let tp: &mut RawTracePoint =
                        prog.try_into().map_err(|e| CollectorError::load(format!("program {name}"), e))?;
                    tp.load().map_err(|e| CollectorError::load(format!("program {name}"), e))?;
                    tp.attach(event)
                        .map_err(|e| CollectorError::load(format!("attach {name} to raw_tp/{event}"), e))?;
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
        let send_slots = match take(&mut ebpf, maps::SEND_SLOTS)? {
            aya::maps::Map::Array(data) => SendSlots::new(data, send_slots)?,
            _ => return Err(stale(format!("map {} type", maps::SEND_SLOTS))),
        };
        let socks = match take(&mut ebpf, maps::SOCKS)? {
            aya::maps::Map::Array(data) => SockTable::new(data)?,
            _ => return Err(stale(format!("map {} type", maps::SOCKS))),
        };
        let listeners = BpfHashMap::try_from(take(&mut ebpf, maps::LISTENERS)?)
            .map_err(|e| CollectorError::load("map LISTENERS", e))?;
        let events = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)
            .map_err(|e| CollectorError::load("map EVENTS", e))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)
            .map_err(|e| CollectorError::load("map COUNTERS", e))?;
        let mut per_cpu = |name: &'static str| take(&mut ebpf, name).map(|m| (name, m));
        let (proc_stats, io_stats, syscall_errors, syscall_lat, connect_lat, proc_events) = (
            per_cpu(maps::PROC_STATS)?,
            per_cpu(maps::IO_STATS)?,
            per_cpu(maps::SYSCALL_ERRORS)?,
            per_cpu(maps::SYSCALL_LAT)?,
            per_cpu(maps::CONNECT_LAT)?,
            per_cpu(maps::PROC_EVENTS)?,
        );
        let wrap = |name: &str, e| CollectorError::load(format!("map {name}"), e);
        let host = HostMaps {
            proc_stats: PerCpuHashMap::try_from(proc_stats.1).map_err(|e| wrap(proc_stats.0, e))?,
            io_stats: PerCpuHashMap::try_from(io_stats.1).map_err(|e| wrap(io_stats.0, e))?,
            syscall_errors: PerCpuHashMap::try_from(syscall_errors.1)
                .map_err(|e| wrap(syscall_errors.0, e))?,
            syscall_lat: PerCpuHashMap::try_from(syscall_lat.1).map_err(|e| wrap(syscall_lat.0, e))?,
            connect_lat: PerCpuHashMap::try_from(connect_lat.1).map_err(|e| wrap(connect_lat.0, e))?,
            events: RingBuf::try_from(proc_events.1).map_err(|e| wrap(proc_events.0, e))?,
        };
        let unavailable = plan.unavailable;
        Ok(Programs {
            ebpf,
            conn_stats,
            send_stats,
            send_slots,
            socks,
            listeners,
            events,
            counters,
            host,
            unavailable,
        })
    }

    /// What this kernel cannot give: the programs left out at load, and why.
    pub fn unavailable(&self) -> &[UnavailableSignal] {
        &self.unavailable
    }

    /// Cumulative whole-host counters, summed over CPUs.
    pub fn read_host(&self) -> HostSnapshot {
        HostSnapshot {
            procs: read_summed(&self.host.proc_stats),
            io: read_summed(&self.host.io_stats),
            syscall_errors: read_summed(&self.host.syscall_errors),
            syscall_lat: read_summed(&self.host.syscall_lat),
            connect_lat: read_summed(&self.host.connect_lat),
        }
    }

    /// Deletes the whole-host keys of a process that is gone (its totals were read).
    pub fn forget_host(&mut self, owner: &Owner, snapshot: &HostSnapshot) {
        let _ = self.host.proc_stats.remove(owner);
        let _ = self.host.connect_lat.remove(owner);
        for k in snapshot.io.keys().filter(|k| k.owner == *owner) {
            let _ = self.host.io_stats.remove(k);
        }
        for k in snapshot.syscall_errors.keys().filter(|k| k.owner == *owner) {
            let _ = self.host.syscall_errors.remove(k);
        }
        for k in snapshot.syscall_lat.keys().filter(|k| k.owner == *owner) {
            let _ = self.host.syscall_lat.remove(k);
        }
    }

    /// Drains the process-event ring buffer, calling `f` for each event.
    pub fn drain_proc_events(&mut self, mut f: impl FnMut(ProcEvent)) {
        while let Some(item) = self.host.events.next() {
            if item.len() >= std::mem::size_of::<ProcEvent>() {
                // SAFETY: the kernel wrote a ProcEvent; read_unaligned copes with any alignment.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const ProcEvent) };
                f(ev);
            }
        }
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
        self.send_slots.add_to(&mut out);
        // Sockets whose slot another holds (a socket may be in both, if its slot was taken
        // when it first sent on one CPU and free on another).
        for item in self.send_stats.iter() {
            let Ok((sk, per_cpu)) = item else { continue };
            let sum = out.entry(sk).or_default();
            for v in per_cpu.iter() {
                *sum += TcpCounters::from(*v);
            }
        }
        out
    }

    /// The socket at address `sk` whose sends its send counters hold (see
    /// [`SockTable::get_sender`]).
    pub fn sender(&self, sk: u64) -> Option<SockState> {
        self.socks.get_sender(sk)
    }

    /// The events counted on tracked sockets since the last call, by owner and peer, and the
    /// handshake times among them (see [`SockTable::take_counts`]).
    pub fn take_sock_counts(&mut self) -> Taken {
        self.socks.take_counts()
    }

    /// Frees the socket-table ways of sockets destroyed a poll ago (see
    /// [`SockTable::free_destroyed`]); call after reading the send counters.
    pub fn free_destroyed_sockets(&mut self) {
        self.socks.free_destroyed();
    }

    /// Tells the kernel side who owns a listening port (for listeners opened before we were).
    /// Entries the programs already made are kept: they are newer.
    pub fn add_listener(&mut self, key: ListenKey, owner: Owner) {
        const BPF_NOEXIST: u64 = 1;
        let _ = self.listeners.insert(key, owner, BPF_NOEXIST);
    }

    /// Deletes a destroyed socket's send counters if they still hold `seen`, the final values
    /// the poll read. If they moved since, a new socket has the address (the kernel reuses a
    /// freed socket's memory at once) and has sent: they are kept for the next poll, which
    /// files the difference under the new socket. Returns whether they were deleted.
    pub fn forget_socket(&mut self, sk: u64, seen: TcpCounters) -> bool {
        let mut now = self.send_slots.sum_for(sk);
        if let Ok(per_cpu) = self.send_stats.get(&sk, 0) {
            for v in per_cpu.iter() {
                now += TcpCounters::from(*v);
            }
        }
        if now != seen {
            return false;
        }
        let _ = self.send_stats.remove(&sk);
        self.send_slots.free(sk);
        true
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
            proc_stats_full: get(Counter::ProcStatsFull),
            start_map_full: get(Counter::StartMapFull),
            host_stats_full: get(Counter::HostStatsFull),
            proc_ringbuf_drops: get(Counter::ProcRingbufDrops),
            thread_slots_shared: get(Counter::ThreadSlotShared),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Real kernel: every hook of every program set is there, and a missing one is reported as
    /// `Unsupported` (what `--source auto` falls back on), naming it.
    #[test]
    fn hooks_are_checked_against_the_running_kernel() {
        let tracefs = crate::kernel::ensure_mounts().expect("tracefs (run as root)");
        let btf = Btf::from_sys_fs().expect("kernel BTF");
        let all = [programs::TCP, programs::HOST, programs::BASELINE, programs::HOST_BASELINE];
        for p in all.concat() {
            check_hook(p.hook, &tracefs, &btf).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        }
        let missing = |hook| match check_hook(hook, &tracefs, &btf) {
            Err(e @ CollectorError::Unsupported { .. }) => e.to_string(),
            other => panic!("{hook:?}: {other:?}"),
        };
        let e = missing(Hook::Tracepoint("syscalls", "sys_enter_no_such_call"));
        assert!(e.contains("syscalls:sys_enter_no_such_call") && e.contains("CONFIG_FTRACE_SYSCALLS"), "{e}");
        let e = missing(Hook::Tracepoint("tcp", "no_such_event"));
        assert!(e.contains("tcp:no_such_event") && e.contains("--source procfs"), "{e}");
        let e = missing(Hook::BtfTracepoint("no_such_event"));
        assert!(e.contains("BTF tracepoint no_such_event"), "{e}");
    }
}
