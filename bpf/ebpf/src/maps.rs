//! Maps shared by the programs. Names match `bpfsight_common::maps`.

use core::intrinsics::{AtomicOrdering, atomic_xadd, atomic_xchg};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use bpfsight_common::{
    COUNTERS_LEN, ConnKey, ConnStats, Counter, DESTROYED_TAG, IO_BUCKETS, IO_WAYS, InflightIo, IoBucket,
    IoKey, IoStats, LatHist, ListenKey, Owner, ProcStats, SEND_SLOTS_PER_CPU, SOCK_BUCKETS, SOCK_WAYS,
    SendSlot, SendStats, SockBucket, SockCounts, SockState, SyscallKey, io_bucket, send_slot, sock_bucket,
    sock_flags,
};

/// Sockets we track, by [`sock_bucket`], marked destroyed by `tcp_destroy_sock` and reused like
/// closed ones (see [`SockBucket`], [`sock_flags::DESTROYED`]). User space maps it to take
/// each socket's [`SockCounts`] and to free the ways of destroyed sockets it has read.
#[map(name = "SOCKS")]
pub static SOCKS: Array<SockBucket> = Array::with_max_entries(SOCK_BUCKETS, BPF_F_MMAPABLE);

/// The bucket of socket `sk`.
#[inline(always)]
fn sock_bucket_of(sk: u64) -> Option<&'static mut SockBucket> {
    // SAFETY: array value pointer, valid for the program run. Two CPUs touch one bucket at once
    // only for sockets that hash alike, or one socket's process and softirq sides, which the
    // socket lock mostly serialises.
    SOCKS.get_ptr_mut(sock_bucket(sk)).map(|b| unsafe { &mut *b })
}

/// The tracked state of socket `sk`, if any.
#[inline(always)]
pub fn sock_get(sk: u64) -> Option<&'static mut SockState> {
    if sk == 0 {
        return None;
    }
    // A destroyed socket's key is tagged: it is not found.
    sock_bucket_of(sk)?.get_mut(&sk)
}

/// Tracks socket `sk` as `st`: in its own way if it has one, else a free one, else a destroyed
/// socket's, else a closed one's, else the last (counted: that socket's later events go
/// unattributed).
#[inline(always)]
pub fn sock_put(sk: u64, st: &SockState) {
    let Some(b) = sock_bucket_of(sk) else { return };
    let w = b.slot_for(&sk, &0).unwrap_or_else(|| {
        let with = |flag: u32| (0..SOCK_WAYS).find(|&w| b.value[w].flags & flag != 0);
        with(sock_flags::DESTROYED).or_else(|| with(sock_flags::CLOSED)).unwrap_or_else(|| {
            count(Counter::SockInsertFailed);
            SOCK_WAYS - 1
        })
    });
    // A free way's counts were taken before user space freed it.
    if b.key.get(w).is_some_and(|&k| k != 0)
        && let Some(old) = b.value.get_mut(w)
        && !old.counts.is_zero()
    {
        file_counts(old);
    }
    b.set(w, sk, st);
}

/// Adds `n` to a [`SockCounts`] field, which user space may be taking at the same moment.
#[inline(always)]
pub fn add(field: &mut u32, n: u32) {
    // SAFETY: an aligned field of a map value, valid for the program run. (The BPF target
    // has no atomic types in `core`; the intrinsic is the kernel's atomic add.)
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(field, n) };
}

/// Like [`add`], for the 64-bit fields.
#[inline(always)]
pub fn add64(field: &mut u64, n: u64) {
    // SAFETY: as in `add`.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, n) };
}

/// Takes a [`SockCounts`] field, leaving 0, as user space does.
#[inline(always)]
fn take(field: &mut u32) -> u32 {
    // SAFETY: as in `add`.
    unsafe { atomic_xchg::<u32, { AtomicOrdering::Relaxed }>(field, 0) }
}

/// Like [`take`], for the 64-bit fields.
#[inline(always)]
fn take64(field: &mut u64) -> u64 {
    // SAFETY: as in `add`.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::Relaxed }>(field, 0) }
}

/// Files what user space has not taken of a socket's counts under its owner and peer in
/// `CONN_STATS`, before its way goes to another socket (or to the same socket, reconnecting
/// perhaps to another peer). Rare: user space takes counts every second and frees the ways
/// of destroyed sockets, so a new socket normally finds a free way.
#[inline(always)]
fn file_counts(old: &mut SockState) {
    let c = &mut old.counts;
    let taken = SockCounts {
        opened_active: take(&mut c.opened_active),
        opened_passive: take(&mut c.opened_passive),
        closed: take(&mut c.closed),
        failed_connects: take(&mut c.failed_connects),
        resets_sent: take(&mut c.resets_sent),
        resets_received: take(&mut c.resets_received),
        retransmits: take(&mut c.retransmits),
        refused_connects: take(&mut c.refused_connects),
        duration_ns: take64(&mut c.duration_ns),
        handshake_ns: take64(&mut c.handshake_ns),
    };
    bump(&old.key(), |s| s.add(&taken));
    if taken.handshake_ns != 0 {
        bump_connect_lat(&old.owner, taken.handshake_ns);
    }
}

/// Marks socket `sk` destroyed: gone for the programs, kept for user space (see
/// [`sock_flags::DESTROYED`]).
#[inline(always)]
pub fn sock_destroyed(sk: u64) {
    if sk != 0
        && let Some(b) = sock_bucket_of(sk)
        && let Some(w) = b.find(&sk)
        && let Some(s) = b.value.get_mut(w)
        && let Some(k) = b.key.get_mut(w)
    {
        s.flags |= sock_flags::CLOSED | sock_flags::DESTROYED;
        *k = sk | DESTROYED_TAG;
    }
}

/// Per-socket send counters of the sockets whose [`SEND_SLOTS`] slot another socket holds.
#[map(name = "SEND_STATS")]
pub static SEND_STATS: PerCpuHashMap<u64, SendStats> = PerCpuHashMap::with_max_entries(65536, 0);

/// `BPF_F_MMAPABLE`: user space reads the send counters through a shared mapping, with no
/// syscall per socket.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Per-socket send counters, [`SEND_SLOTS_PER_CPU`] slots per CPU (the loader sizes the map for
/// the machine's CPUs). The send path is the hottest TCP hook: a slot is an array access the
/// verifier turns into address arithmetic, where a per-CPU hash lookup hashes the key and walks
/// a bucket.
#[map(name = "SEND_SLOTS")]
pub static SEND_SLOTS: Array<SendSlot> = Array::with_max_entries(SEND_SLOTS_PER_CPU, BPF_F_MMAPABLE);

/// Socket `sk`'s send slot on this CPU, whoever holds it.
#[inline(always)]
pub fn send_slot_here(sk: u64) -> Option<&'static mut SendSlot> {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // SAFETY: array value pointer, valid for the program run; only this CPU writes it.
    SEND_SLOTS.get_ptr_mut(cpu * SEND_SLOTS_PER_CPU + send_slot(sk)).map(|p| unsafe { &mut *p })
}

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

/// What one thread did since its last flush into [`PROC_STATS`].
///
/// The scheduler hook runs on every context switch, and a hash lookup keyed by process costs
/// more than its whole budget. So a switch touches only the outgoing thread's slot in
/// [`THREADS`] (an array the verifier turns into address arithmetic, on the CPU the thread
/// just ran on), and reads the kernel's own per-task accounting (`sched_info`,
/// `sum_exec_runtime`) instead of timing anything itself. A thread's batch moves into its
/// process's [`ProcStats`] when the thread is switched out at least [`FLUSH_NS`] after its
/// previous flush, when it exits, or when another thread needs the slot.
///
/// 128 bytes: the first cache line holds everything a switch touches, the second the
/// histogram and the name.
#[repr(C, align(64))]
pub struct ThreadSlot {
    /// The thread (tid) using the slot; 0 when free.
    pub tid: u32,
    /// Process (tgid) the batch belongs to; with `comm`, the [`Owner`] it is flushed under.
    pub tgid: u32,
    pub vol_switches: u32,
    pub invol_switches: u32,
    /// Run-queue delays in this batch.
    pub runq_count: u32,
    /// Pages allocated (2^order each).
    pub page_allocs: u32,
    /// The task's `sched_info.pcount` (times it got a CPU) at its last switch-out.
    pub last_pcount: u32,
    /// `exec`s by this thread (counted for the image it runs after the exec).
    pub execs: u16,
    /// [`exit_flags`] when this thread ended its process, else 0. Filed by the flush at the
    /// thread's last switch, which the exit is sure to be followed by, so that an exit costs
    /// a store instead of a lookup of its process in [`PROC_STATS`].
    pub exit: u16,
    /// The task's cumulative `sched_info.run_delay` at its last switch-out.
    pub last_run_delay: u64,
    /// `sched_info.last_arrival` (scheduler clock) at the last flush; 0 until the slot has
    /// seen its thread switch out once.
    pub flushed_at: u64,
    /// The task's `se.sum_exec_runtime` at the last flush.
    pub last_exec: u64,
    pub runq_sum_ns: u64,
    /// Log2 buckets as in [`LatHist`]; `u16` is enough because a batch is flushed long
    /// before any bucket could reach 65,535 (see [`FLUSH_MAX_SAMPLES`]).
    pub runq_buckets: [u16; bpfsight_common::HIST_BUCKETS],
    pub comm: [u8; 16],
}

impl ThreadSlot {
    #[inline(always)]
    fn owner(&self) -> Owner {
        Owner { tgid: self.tgid, _pad: 0, comm: self.comm }
    }

    /// Files the batch under `owner` from now on.
    #[inline(always)]
    pub fn set_owner(&mut self, owner: &Owner) {
        self.tgid = owner.tgid;
        self.comm = owner.comm;
    }

    #[inline(always)]
    fn pending(&self) -> bool {
        self.runq_count != 0
            || self.vol_switches != 0
            || self.invol_switches != 0
            || self.page_allocs != 0
            || self.execs != 0
            || self.exit != 0
    }
}

/// Bits of [`ThreadSlot::exit`].
pub mod exit_flags {
    /// The process exited.
    pub const EXITED: u16 = 1;
    /// With a non-zero status.
    pub const FAILED: u16 = 2;
    /// Killed by a signal.
    pub const KILLED: u16 = 4;
}

/// How long a thread's batch may go unflushed while the thread keeps switching.
pub const FLUSH_NS: u64 = 50_000_000;
/// A batch is flushed at this many run-queue samples whatever its age.
pub const FLUSH_MAX_SAMPLES: u32 = 60_000;

/// Per-thread slots indexed by `tid & THREAD_SLOTS_MASK`; the loader sizes it to the next
/// power of two above `pid_max`, at most 32,768, so 4 MiB (a colliding thread flushes the
/// other's batch before taking the slot, so nothing is lost when `pid_max` is larger).
#[map(name = "THREADS")]
pub static THREADS: Array<ThreadSlot> = Array::with_max_entries(1, 0);

/// `THREADS` size minus one, set by the loader.
#[unsafe(no_mangle)]
static THREAD_SLOTS_MASK: u32 = 0;

/// The index of thread `tid` in the tables sized by the loader ([`THREADS`],
/// [`SYSCALL_START`]).
#[inline(always)]
fn thread_index(tid: u32) -> u32 {
    // SAFETY: .rodata constant set by the loader.
    tid & unsafe { core::ptr::read_volatile(&THREAD_SLOTS_MASK) }
}

/// The slot of thread `tid`, whoever holds it.
#[inline(always)]
pub fn thread_slot(tid: u32) -> Option<&'static mut ThreadSlot> {
    // SAFETY: array value pointer; a slot is only written by events of its own thread, which
    // the scheduler serialises (a colliding thread may race, at worst blurring one batch).
    THREADS.get_ptr_mut(thread_index(tid)).map(|p| unsafe { &mut *p })
}

/// The slot of the running thread, taken over if another thread holds it; `None` on an idle
/// CPU (interrupt work belongs to no process).
#[inline(always)]
pub fn current_thread_slot() -> Option<&'static mut ThreadSlot> {
    let tid = bpf_get_current_pid_tgid() as u32;
    if tid == 0 {
        return None;
    }
    let t = thread_slot(tid)?;
    if t.tid != tid {
        claim_slot(t, tid, crate::record::current_owner());
    }
    Some(t)
}

/// Moves a batch, plus `oncpu_ns` of CPU time, into its owner's [`ProcStats`] and empties it.
#[inline(always)]
pub fn flush_slot(t: &mut ThreadSlot, oncpu_ns: u64) {
    // No closure here (unlike `bump_in`): this body is large enough for LLVM to outline a
    // closure, and an outlined closure's mangled name carries a checkout-dependent crate hash
    // into the committed object.
    if t.tgid != 0
        && let Some(s) = get_or_insert(&PROC_STATS, &t.owner(), &ZERO_PROC_STATS, Counter::ProcStatsFull)
    {
        s.oncpu_ns += oncpu_ns;
        s.vol_switches += t.vol_switches as u64;
        s.invol_switches += t.invol_switches as u64;
        s.page_allocs += t.page_allocs as u64;
        s.execs += t.execs as u64;
        if t.exit != 0 {
            s.exits += 1;
            s.failed_exits += (t.exit & exit_flags::FAILED != 0) as u64;
            s.killed += (t.exit & exit_flags::KILLED != 0) as u64;
        }
        s.runq.count += t.runq_count as u64;
        s.runq.sum_ns += t.runq_sum_ns;
        for i in 0..bpfsight_common::HIST_BUCKETS {
            s.runq.buckets[i] += t.runq_buckets[i] as u64;
        }
    }
    t.vol_switches = 0;
    t.invol_switches = 0;
    t.page_allocs = 0;
    t.execs = 0;
    t.exit = 0;
    t.runq_count = 0;
    t.runq_sum_ns = 0;
    t.runq_buckets = [0; bpfsight_common::HIST_BUCKETS];
}

/// Makes `t` the slot of thread `tid` owned by `owner`, flushing whatever another thread left
/// (its CPU time since its last flush is lost: only its own switch can read it).
#[inline(always)]
pub fn claim_slot(t: &mut ThreadSlot, tid: u32, owner: Owner) {
    if t.tid != 0 && t.pending() {
        count(Counter::ThreadSlotShared);
        flush_slot(t, 0);
    }
    t.tid = tid;
    t.set_owner(&owner);
    t.flushed_at = 0;
}

/// Block requests between issue and completion, by [`io_bucket`] (see [`IoBucket`]).
#[map(name = "IO_INFLIGHT")]
pub static IO_INFLIGHT: Array<IoBucket> = Array::with_max_entries(IO_BUCKETS, 0);

/// The bucket of request `rq`.
#[inline(always)]
fn io_bucket_of(rq: u64) -> Option<&'static mut IoBucket> {
    // SAFETY: array value pointer, valid for the program run; two CPUs meet in one bucket only
    // for requests that hash alike.
    IO_INFLIGHT.get_ptr_mut(io_bucket(rq as u32)).map(|b| unsafe { &mut *b })
}

/// Remembers request `rq` until its completion: in its own way (a request issued again,
/// requeued or completed while we were not watching), else a free one, else in place of the
/// one that started first (a request whose completion was missed; counted).
#[inline(always)]
pub fn io_put(rq: u64, io: &InflightIo) {
    if rq == 0 {
        return;
    }
    let Some(b) = io_bucket_of(rq) else { return };
    let w = b.slot_for(&rq, &0).unwrap_or_else(|| {
        count(Counter::StartMapFull);
        let mut oldest = 0;
        for w in 1..IO_WAYS {
            if b.value[w].start_ns < b.value[oldest].start_ns {
                oldest = w;
            }
        }
        oldest
    });
    b.set(w, rq, io);
}

/// Takes request `rq` out of the table, if it was issued while we watched.
#[inline(always)]
pub fn io_take(rq: u64) -> Option<InflightIo> {
    if rq == 0 {
        return None;
    }
    let b = io_bucket_of(rq)?;
    let w = b.find(&rq)?;
    let io = *b.value.get(w)?;
    b.clear(w, 0);
    Some(io)
}

#[map(name = "IO_STATS")]
pub static IO_STATS: PerCpuHashMap<IoKey, IoStats> = PerCpuHashMap::with_max_entries(2048, 0);

/// The entry time of a thread's timed syscall (see [`SYSCALL_START`]).
#[repr(C)]
pub struct SyscallStart {
    /// The thread that entered.
    pub tid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` at entry; 0 once taken.
    pub start_ns: u64,
}

/// Entry times of timed syscalls in progress, indexed by `tid & THREAD_SLOTS_MASK` like
/// [`THREADS`] and sized with it by the loader. An array slot is a computed address: the LRU
/// hash this replaced cost a lookup (100-150 ns here) at entry and again at exit.
#[map(name = "SYSCALL_START")]
pub static SYSCALL_START: Array<SyscallStart> = Array::with_max_entries(1, 0);

/// The [`SYSCALL_START`] slot of thread `tid`.
#[inline(always)]
fn syscall_start_slot(tid: u32) -> Option<&'static mut SyscallStart> {
    // SAFETY: array value pointer; a slot is written by its own thread's syscalls, or by a
    // thread whose tid collides (only when `pid_max` exceeds the table), which is counted.
    SYSCALL_START.get_ptr_mut(thread_index(tid)).map(|p| unsafe { &mut *p })
}

/// Notes that thread `tid` entered a timed syscall at `now`. A colliding thread's entry still
/// in the slot is replaced, and that call goes untimed (counted).
#[inline(always)]
pub fn store_start(tid: u32, now: u64) {
    if let Some(s) = syscall_start_slot(tid) {
        if s.tid != tid && s.start_ns != 0 {
            count(Counter::StartMapFull);
        }
        s.tid = tid;
        s.start_ns = now;
    }
}

/// Takes thread `tid`'s entry time (0 if none, already taken, or replaced), leaving 0.
#[inline(always)]
pub fn take_start(tid: u32) -> u64 {
    match syscall_start_slot(tid) {
        Some(s) if s.tid == tid => core::mem::replace(&mut s.start_ns, 0),
        _ => 0,
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
    discard_ops: 0,
    discard_bytes: 0,
};
#[unsafe(no_mangle)]
static ZERO_LAT_HIST: LatHist = LatHist { count: 0, sum_ns: 0, buckets: [0; bpfsight_common::HIST_BUCKETS] };
#[unsafe(no_mangle)]
static ZERO_U64: u64 = 0;

/// The per-CPU value of `key` in `map`, created from `zero` on first use; counts `full` when
/// the map has no room.
#[inline(always)]
fn get_or_insert<'a, K, V>(
    map: &'a PerCpuHashMap<K, V>,
    key: &K,
    zero: &V,
    full: Counter,
) -> Option<&'a mut V> {
    let mut p = map.get_ptr_mut(key);
    if p.is_none() {
        // BPF_NOEXIST: another CPU may have created it meanwhile; either way look it up again.
        let _ = map.insert(key, zero, 1);
        p = map.get_ptr_mut(key);
    }
    if p.is_none() {
        count(full);
    }
    // SAFETY: per-CPU value, only this CPU writes it while the program runs.
    p.map(|p| unsafe { &mut *p })
}

/// Applies `f` to the per-CPU value of `key` in `map` (see [`get_or_insert`]).
#[inline(always)]
fn bump_in<K, V>(map: &PerCpuHashMap<K, V>, key: &K, zero: &V, full: Counter, f: impl FnOnce(&mut V)) {
    if let Some(v) = get_or_insert(map, key, zero, full) {
        f(v);
    }
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
