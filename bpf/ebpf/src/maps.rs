//! Maps shared by the programs. Names match `bpfsight_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use bpfsight_common::{
    COUNTERS_LEN, ConnKey, ConnStats, Counter, InflightIo, IoKey, IoReqKey, IoStats, LatHist, ListenKey,
    Owner, ProcStats, SendStats, SockState, SyscallKey,
};

/// Sockets we track, deleted by `tcp_destroy_sock`. A plain hash rather than an LRU: LRU
/// deletes cost more, and every tracked socket is destroyed through that hook.
#[map(name = "SOCKS")]
pub static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(65536, 0);

/// Per-socket send counters: the hottest path, so an 8-byte key and nothing else.
#[map(name = "SEND_STATS")]
pub static SEND_STATS: PerCpuHashMap<u64, SendStats> = PerCpuHashMap::with_max_entries(65536, 0);

#[map(name = "LISTENERS")]
pub static LISTENERS: HashMap<ListenKey, Owner> = HashMap::with_max_entries(4096, 0);

#[map(name = "CONN_STATS")]
pub static CONN_STATS: PerCpuHashMap<ConnKey, ConnStats> = PerCpuHashMap::with_max_entries(16384, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[map(name = "BASELINE")]
pub static BASELINE: PerCpuArray<u64> = PerCpuArray::with_max_entries(24, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

/// Applies `f` to the stats of `key`, creating them on first use.
#[inline(always)]
pub fn bump(key: &ConnKey, f: impl FnOnce(&mut ConnStats)) {
    let mut p = CONN_STATS.get_ptr_mut(key);
    if p.is_none() {
        let zero = ConnStats::default();
        // BPF_NOEXIST: another CPU may have created it meanwhile; either way look it up again.
        let _ = CONN_STATS.insert(key, &zero, 1);
        p = CONN_STATS.get_ptr_mut(key);
    }
    match p {
        // SAFETY: per-CPU value, only this CPU writes it.
        Some(p) => f(unsafe { &mut *p }),
        None => count(Counter::ConnStatsFull),
    }
}

/// Per-process scheduler, memory and process-life counters.
#[map(name = "PROC_STATS")]
pub static PROC_STATS: PerCpuHashMap<Owner, ProcStats> = PerCpuHashMap::with_max_entries(8192, 0);

/// When each thread (by tid) became runnable: set at wakeup and preemption, taken (zeroed) at
/// switch-in. Values are written in place, never deleted: an in-place store costs a lookup,
/// an update or delete takes the bucket lock and the free list. LRU, so threads that exited
/// make room for new ones.
#[map(name = "RUNQ_START")]
pub static RUNQ_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(32768, 0);

/// When the running task was switched in, per CPU (slot 0), for on-CPU time.
#[map(name = "ONCPU_SINCE")]
pub static ONCPU_SINCE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Block requests between issue and completion.
#[map(name = "IO_INFLIGHT")]
pub static IO_INFLIGHT: HashMap<IoReqKey, InflightIo> = HashMap::with_max_entries(8192, 0);

#[map(name = "IO_STATS")]
pub static IO_STATS: PerCpuHashMap<IoKey, IoStats> = PerCpuHashMap::with_max_entries(2048, 0);

/// Entry time of the slow syscall in progress, by tid (0: none); written in place like
/// [`RUNQ_START`].
#[map(name = "SYSCALL_START")]
pub static SYSCALL_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Sets `map[key] = value`, in place when the key exists (no lock, no allocation).
#[inline(always)]
pub fn store_start(map: &LruHashMap<u32, u64>, key: u32, value: u64) {
    match map.get_ptr_mut(&key) {
        // SAFETY: map value pointer; an aligned u64 store.
        Some(p) => unsafe { *p = value },
        None => {
            if map.insert(&key, &value, 0).is_err() {
                count(Counter::StartMapFull);
            }
        }
    }
}

/// Takes `map[key]` (0 if absent or already taken), leaving 0.
#[inline(always)]
pub fn take_start(map: &LruHashMap<u32, u64>, key: u32) -> u64 {
    match map.get_ptr_mut(&key) {
        // SAFETY: map value pointer; an aligned u64 swap.
        Some(p) => unsafe { core::mem::replace(&mut *p, 0) },
        None => 0,
    }
}

#[map(name = "SYSCALL_ERRORS")]
pub static SYSCALL_ERRORS: PerCpuHashMap<SyscallKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);

#[map(name = "SYSCALL_LAT")]
pub static SYSCALL_LAT: PerCpuHashMap<SyscallKey, LatHist> = PerCpuHashMap::with_max_entries(2048, 0);

#[map(name = "CONNECT_LAT")]
pub static CONNECT_LAT: PerCpuHashMap<Owner, LatHist> = PerCpuHashMap::with_max_entries(2048, 0);

#[map(name = "PROC_EVENTS")]
pub static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Zero values in `.rodata`: inserting from a global keeps these large structs off the
/// 512-byte BPF stack.
#[unsafe(no_mangle)]
static ZERO_PROC_STATS: ProcStats = ProcStats {
    runq: LatHist { count: 0, sum_ns: 0, buckets: [0; bpfsight_common::HIST_BUCKETS] },
    oncpu_ns: 0,
    vol_switches: 0,
    invol_switches: 0,
    page_allocs: 0,
    execs: 0,
    exits: 0,
    failed_exits: 0,
    killed: 0,
};
#[unsafe(no_mangle)]
static ZERO_IO_STATS: IoStats = IoStats {
    lat: LatHist { count: 0, sum_ns: 0, buckets: [0; bpfsight_common::HIST_BUCKETS] },
    read_ops: 0,
    write_ops: 0,
    read_bytes: 0,
    write_bytes: 0,
    errors: 0,
};
#[unsafe(no_mangle)]
static ZERO_LAT_HIST: LatHist = LatHist { count: 0, sum_ns: 0, buckets: [0; bpfsight_common::HIST_BUCKETS] };
#[unsafe(no_mangle)]
static ZERO_U64: u64 = 0;

/// Applies `f` to the per-CPU value of `key` in `map`, creating it from `zero` on first use;
/// counts `full` when the map has no room.
#[inline(always)]
fn bump_in<K, V>(map: &PerCpuHashMap<K, V>, key: &K, zero: &V, full: Counter, f: impl FnOnce(&mut V)) {
    let mut p = map.get_ptr_mut(key);
    if p.is_none() {
        // BPF_NOEXIST: another CPU may have created it meanwhile; either way look it up again.
        let _ = map.insert(key, zero, 1);
        p = map.get_ptr_mut(key);
    }
    match p {
        // SAFETY: per-CPU value, only this CPU writes it.
        Some(p) => f(unsafe { &mut *p }),
        None => count(full),
    }
}

/// Updates a process's [`ProcStats`].
#[inline(always)]
pub fn bump_proc(owner: &Owner, f: impl FnOnce(&mut ProcStats)) {
    bump_in(&PROC_STATS, owner, &ZERO_PROC_STATS, Counter::ProcStatsFull, f);
}

/// Updates the block IO counters of a process on a device.
#[inline(always)]
pub fn bump_io(key: &IoKey, f: impl FnOnce(&mut IoStats)) {
    bump_in(&IO_STATS, key, &ZERO_IO_STATS, Counter::HostStatsFull, f);
}

/// Counts one failed syscall.
#[inline(always)]
pub fn bump_syscall_error(key: &SyscallKey) {
    bump_in(&SYSCALL_ERRORS, key, &ZERO_U64, Counter::HostStatsFull, |v| *v += 1);
}

/// Adds a slow syscall's latency.
#[inline(always)]
pub fn bump_syscall_lat(key: &SyscallKey, ns: u64) {
    bump_in(&SYSCALL_LAT, key, &ZERO_LAT_HIST, Counter::HostStatsFull, |h| h.add(ns));
}

/// Adds a TCP handshake time.
#[inline(always)]
pub fn bump_connect_lat(owner: &Owner, ns: u64) {
    bump_in(&CONNECT_LAT, owner, &ZERO_LAT_HIST, Counter::HostStatsFull, |h| h.add(ns));
}
