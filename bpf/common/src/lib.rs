//! Types that cross the kernel/user boundary between bpfsight's eBPF programs and the collector.
//!
//! Everything here is plain `#[repr(C)]` data with explicit padding, so the kernel side
//! (`bpf/ebpf`, built for `bpfel-unknown-none`) and the user side (`collector`, built with the
//! `user` feature) agree on layout byte for byte. Map names are constants for the same reason.
#![no_std]

/// Length of a task's `comm` (kernel `TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Map names, shared so the loader never spells them differently from the programs.
pub mod maps {
    /// `ARRAY<SockBucket>` (mmapable) indexed by [`sock_bucket`](super::sock_bucket): who owns
    /// each TCP socket we have seen, and its [`SockCounts`](super::SockCounts) not yet taken.
    pub const SOCKS: &str = "SOCKS";
    /// `HASH<ListenKey, Owner>`: owner of each listening port, to attribute accepted sockets.
    pub const LISTENERS: &str = "LISTENERS";
    /// `PERCPU_HASH<ConnKey, ConnStats>`: the in-kernel aggregate, read every second.
    pub const CONN_STATS: &str = "CONN_STATS";
    /// `PERCPU_HASH<u64 sock address, SendStats>`: data sent per socket (the hot path keeps an
    /// 8-byte key; user space attributes sockets to owners through `SOCKS`).
    pub const SEND_STATS: &str = "SEND_STATS";
    /// `ARRAY<SendSlot>` (mmapable), [`SEND_SLOTS_PER_CPU`](super::SEND_SLOTS_PER_CPU) per
    /// possible CPU, indexed by [`send_slot`](super::send_slot): data sent per socket, where
    /// the send path looks first; `SEND_STATS` holds the sockets that collide here.
    pub const SEND_SLOTS: &str = "SEND_SLOTS";
    /// `RINGBUF` of [`TcpEvent`](super::TcpEvent): discrete events only.
    pub const EVENTS: &str = "EVENTS";
    /// `PERCPU_ARRAY<u64>` indexed by [`Counter`](super::Counter).
    pub const COUNTERS: &str = "COUNTERS";
    /// `PERCPU_ARRAY<u64>`: one slot per trivial baseline program (benchmarks only).
    pub const BASELINE: &str = "BASELINE";
    /// `PERCPU_ARRAY` the cost probes write to (benchmarks only: the loader shrinks it to one
    /// entry otherwise).
    pub const PROBE_LOG: &str = "PROBE_LOG";
    /// Entries of `PROBE_LOG` per CPU when the cost probes run.
    pub const PROBE_LOG_ENTRIES: u32 = 1024;
    /// `PERCPU_HASH<Owner, ProcStats>`: scheduler, memory and process-life counters.
    pub const PROC_STATS: &str = "PROC_STATS";
    /// `PERCPU_HASH<IoKey, IoStats>`: block IO per process and device.
    pub const IO_STATS: &str = "IO_STATS";
    /// `PERCPU_HASH<SyscallKey, u64>`: failed syscalls per process, syscall and errno.
    pub const SYSCALL_ERRORS: &str = "SYSCALL_ERRORS";
    /// `PERCPU_HASH<SyscallKey, LatHist>`: latency of the [`SLOW_SYSCALLS`](super::SLOW_SYSCALLS)
    /// (errno 0 in the key).
    pub const SYSCALL_LAT: &str = "SYSCALL_LAT";
    /// `PERCPU_HASH<Owner, LatHist>`: TCP handshake time of connects that succeeded.
    pub const CONNECT_LAT: &str = "CONNECT_LAT";
    /// `RINGBUF` of [`ProcEvent`](super::ProcEvent): OOM kills and failed exits.
    pub const PROC_EVENTS: &str = "PROC_EVENTS";
    /// `ARRAY` of per-thread scheduler batches, indexed by tid (kernel-only; sized by the loader).
    pub const THREADS: &str = "THREADS";
    /// `ARRAY` of the entry times of timed syscalls in progress, indexed by tid like
    /// [`THREADS`] (kernel-only; sized by the loader).
    pub const SYSCALL_START: &str = "SYSCALL_START";
}

/// Program names as they appear in the object file, and where each attaches.
pub mod programs {
    /// Where a program attaches.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Hook {
        /// A classic tracepoint `(category, name)`: the program reads the formatted record.
        Tracepoint(&'static str, &'static str),
        /// A BTF tracepoint (`tp_btf`): the program gets the raw arguments, without the cost
        /// of formatting a record. Used for per-packet hooks.
        BtfTracepoint(&'static str),
        /// A raw tracepoint (`raw_tp`): the raw arguments, like a BTF tracepoint, but as plain
        /// numbers, so a pointer argument can be hashed and stored with no helper call to
        /// launder it. For hooks whose arguments the program only counts by, never reads
        /// through.
        RawTracepoint(&'static str),
    }

    /// A program in the object and its hook.
    #[derive(Clone, Copy, Debug)]
    pub struct Program {
        /// Name in the object file.
        pub name: &'static str,
        /// Where it attaches.
        pub hook: Hook,
    }

    const fn tp(name: &'static str, category: &'static str, event: &'static str) -> Program {
        Program { name, hook: Hook::Tracepoint(category, event) }
    }

    const fn btf(name: &'static str, event: &'static str) -> Program {
        Program { name, hook: Hook::BtfTracepoint(event) }
    }

    const fn raw(name: &'static str, event: &'static str) -> Program {
        Program { name, hook: Hook::RawTracepoint(event) }
    }

    /// Scheduler, block IO, syscall, memory and process-life programs.
    pub const HOST: &[Program] = &[
        btf("sched_switch", "sched_switch"),
        tp("sched_process_exec", "sched", "sched_process_exec"),
        tp("sched_process_exit", "sched", "sched_process_exit"),
        tp("mark_victim", "oom", "mark_victim"),
        btf("mm_page_alloc", "mm_page_alloc"),
        btf("block_rq_issue", "block_rq_issue"),
        btf("block_rq_complete", "block_rq_complete"),
        tp("sys_enter_slow", "syscalls", "sys_enter_connect"),
        tp("sys_enter_slow", "syscalls", "sys_enter_accept"),
        tp("sys_enter_slow", "syscalls", "sys_enter_accept4"),
        tp("sys_enter_slow", "syscalls", "sys_enter_fsync"),
        tp("sys_enter_slow", "syscalls", "sys_enter_fdatasync"),
        tp("sys_enter_slow", "syscalls", "sys_enter_sync_file_range"),
        btf("sys_exit", "sys_exit"),
    ];

    /// Trivial counting programs on the [`HOST`] hooks (benchmark floor).
    pub const HOST_BASELINE: &[Program] = &[
        btf("baseline_sched_switch", "sched_switch"),
        tp("baseline_sched_process_exec", "sched", "sched_process_exec"),
        tp("baseline_sched_process_exit", "sched", "sched_process_exit"),
        tp("baseline_mark_victim", "oom", "mark_victim"),
        btf("baseline_mm_page_alloc", "mm_page_alloc"),
        btf("baseline_block_rq_issue", "block_rq_issue"),
        btf("baseline_block_rq_complete", "block_rq_complete"),
        tp("baseline_sys_enter_slow", "syscalls", "sys_enter_connect"),
        tp("baseline_sys_enter_slow", "syscalls", "sys_enter_accept"),
        tp("baseline_sys_enter_slow", "syscalls", "sys_enter_accept4"),
        tp("baseline_sys_enter_slow", "syscalls", "sys_enter_fsync"),
        tp("baseline_sys_enter_slow", "syscalls", "sys_enter_fdatasync"),
        tp("baseline_sys_enter_slow", "syscalls", "sys_enter_sync_file_range"),
        btf("baseline_sys_exit", "sys_exit"),
    ];

    /// The TCP programs.
    pub const TCP: &[Program] = &[
        tp("inet_sock_set_state", "sock", "inet_sock_set_state"),
        tp("tcp_retransmit_skb", "tcp", "tcp_retransmit_skb"),
        tp("tcp_receive_reset", "tcp", "tcp_receive_reset"),
        tp("tcp_send_reset", "tcp", "tcp_send_reset"),
        tp("tcp_destroy_sock", "tcp", "tcp_destroy_sock"),
        raw("sock_send_length", "sock_send_length"),
    ];

    /// Trivial counting programs on the same hooks, used by the benchmark as a cost floor.
    /// Their names are the real program's prefixed with `baseline_`.
    pub const BASELINE: &[Program] = &[
        tp("baseline_inet_sock_set_state", "sock", "inet_sock_set_state"),
        tp("baseline_tcp_retransmit_skb", "tcp", "tcp_retransmit_skb"),
        tp("baseline_tcp_receive_reset", "tcp", "tcp_receive_reset"),
        tp("baseline_tcp_send_reset", "tcp", "tcp_send_reset"),
        tp("baseline_tcp_destroy_sock", "tcp", "tcp_destroy_sock"),
        raw("baseline_sock_send_length", "sock_send_length"),
    ];

    /// Cost probes on the TCP state hook (benchmark): copy a transition's fields; also who
    /// runs; also one clock read. Each step's cost over the one before is that part's cost.
    pub const COST_PROBES: &[Program] = &[
        tp("probe_copy", "sock", "inet_sock_set_state"),
        tp("probe_copy_owner", "sock", "inet_sock_set_state"),
        tp("probe_copy_owner_clock", "sock", "inet_sock_set_state"),
    ];

    /// A trivial classic-tracepoint program on the send hook: what the send path would cost
    /// as a classic tracepoint, printed by the benchmark next to the tp_btf figures.
    pub const CLASSIC_SEND_FLOOR: Program = tp("baseline_tp_sock_send_length", "sock", "sock_send_length");
}

/// Names of the `.rodata` globals the loader sets from the kernel's BTF before loading.
pub mod globals {
    /// Byte offset of `sk_protocol` in `struct sock`.
    pub const SK_PROTOCOL_OFFSET: &str = "SK_PROTOCOL_OFFSET";
    /// Byte offset of `pid` (the thread id) in `struct task_struct`.
    pub const TASK_PID_OFFSET: &str = "TASK_PID_OFFSET";
    /// Byte offset of `sched_info.run_delay` in `struct task_struct`.
    pub const TASK_RUN_DELAY_OFFSET: &str = "TASK_RUN_DELAY_OFFSET";
    /// Byte offset of `sched_info.pcount` in `struct task_struct`.
    pub const TASK_PCOUNT_OFFSET: &str = "TASK_PCOUNT_OFFSET";
    /// Byte offset of `sched_info.last_arrival` in `struct task_struct`.
    pub const TASK_LAST_ARRIVAL_OFFSET: &str = "TASK_LAST_ARRIVAL_OFFSET";
    /// Byte offset of `se.sum_exec_runtime` in `struct task_struct`.
    pub const TASK_SUM_EXEC_OFFSET: &str = "TASK_SUM_EXEC_OFFSET";
    /// Size of the per-thread slot table minus one (a power of two minus one).
    pub const THREAD_SLOTS_MASK: &str = "THREAD_SLOTS_MASK";
    /// Byte offset of the syscall number in `struct pt_regs` (`orig_ax` on x86-64).
    pub const PT_REGS_SYSCALL_NR_OFFSET: &str = "PT_REGS_SYSCALL_NR_OFFSET";
    /// Byte offset of `tcp_gso_segs` (the segments an skb carries) from the start of
    /// `struct sk_buff`: `cb` plus its offset in `struct tcp_skb_cb`.
    pub const SKB_TCP_GSO_SEGS_OFFSET: &str = "SKB_TCP_GSO_SEGS_OFFSET";
    /// Byte offset of `exit_code` in `struct task_struct`.
    pub const TASK_EXIT_CODE_OFFSET: &str = "TASK_EXIT_CODE_OFFSET";
    /// Byte offset of `tgid` (the process id) in `struct task_struct`.
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// Byte offset of `comm` (the 16-byte name) in `struct task_struct`.
    pub const TASK_COMM_OFFSET: &str = "TASK_COMM_OFFSET";
    /// Byte offset of `q` (its queue) in `struct request`.
    pub const RQ_QUEUE_OFFSET: &str = "RQ_QUEUE_OFFSET";
    /// Byte offset of `cmd_flags` (operation and flags) in `struct request`.
    pub const RQ_CMD_FLAGS_OFFSET: &str = "RQ_CMD_FLAGS_OFFSET";
    /// Byte offset of `__data_len` (bytes left to transfer) in `struct request`.
    pub const RQ_DATA_LEN_OFFSET: &str = "RQ_DATA_LEN_OFFSET";
    /// Byte offset of `start_time_ns` (the block layer's own timestamp) in `struct request`.
    pub const RQ_START_TIME_OFFSET: &str = "RQ_START_TIME_OFFSET";
    /// Byte offset of `disk` in `struct request_queue`.
    pub const QUEUE_DISK_OFFSET: &str = "QUEUE_DISK_OFFSET";
    /// Byte offset of `part0` (the whole disk's block device) in `struct gendisk`.
    pub const DISK_PART0_OFFSET: &str = "DISK_PART0_OFFSET";
    /// Byte offset of `bd_dev` (the device number) in `struct block_device`.
    pub const BDEV_DEV_OFFSET: &str = "BDEV_DEV_OFFSET";
}

/// Buckets of a [`LatHist`]: bucket 0 holds latencies under 1 µs, bucket `i` those in
/// `[2^(i-1), 2^i)` µs, the last everything from about 4 s up.
pub const HIST_BUCKETS: usize = 24;

/// A log2 latency histogram in microseconds, with the count and sum of the samples.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatHist {
    /// Samples.
    pub count: u64,
    /// Sum of the samples, nanoseconds.
    pub sum_ns: u64,
    /// Samples per bucket (see [`HIST_BUCKETS`]).
    pub buckets: [u64; HIST_BUCKETS],
}

impl Default for LatHist {
    fn default() -> Self {
        LatHist { count: 0, sum_ns: 0, buckets: [0; HIST_BUCKETS] }
    }
}

/// The bucket of a latency of `ns` nanoseconds: floor(log2(µs)) + 1, 0 below 1 µs. Unrolled
/// binary search, because BPF has no count-leading-zeros instruction.
#[inline(always)]
pub fn hist_bucket(ns: u64) -> usize {
    let mut v = ns / 1000;
    if v == 0 {
        return 0;
    }
    let mut r = 1;
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    if r >= HIST_BUCKETS { HIST_BUCKETS - 1 } else { r }
}

impl LatHist {
    /// Adds one sample of `ns` nanoseconds.
    #[inline(always)]
    pub fn add(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns += ns;
        let b = hist_bucket(ns);
        // The bound check is for the verifier; `hist_bucket` never exceeds it.
        if b < HIST_BUCKETS {
            self.buckets[b] += 1;
        }
    }
}

/// Per-process scheduler, memory and process-life counters, per CPU, cumulative; keyed by
/// [`Owner`] (tgid and the thread's `comm`, so a recycled pid is a new key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// Run-queue delay: runnable (woken or preempted) to running, from the kernel's
    /// `sched_info` accounting.
    pub runq: LatHist,
    /// Time on CPU, nanoseconds.
    pub oncpu_ns: u64,
    /// Switches away because the task blocked (sleep, IO, lock).
    pub vol_switches: u64,
    /// Switches away while still runnable (preempted, time slice over).
    pub invol_switches: u64,
    /// Pages allocated in this process's context (`kmem:mm_page_alloc`, 2^order each).
    pub page_allocs: u64,
    /// `exec`s that produced this process image.
    pub execs: u64,
    /// Processes (thread groups) that exited.
    pub exits: u64,
    /// Of which failed: a non-zero exit status, or a crash signal (SIGSEGV, SIGABRT, ...).
    pub failed_exits: u64,
    /// Of which were stopped by SIGKILL, SIGTERM, SIGINT or SIGHUP (an operator, a supervisor,
    /// the OOM killer): not failures of the process itself.
    pub killed: u64,
}

/// Whether a raw `exit_code` is a termination by SIGKILL, SIGTERM, SIGINT or SIGHUP.
#[inline(always)]
pub fn exit_is_kill(code: u32) -> bool {
    matches!(code & 0x7f, 1 | 2 | 9 | 15)
}

/// Block IO aggregation key: the process that issued the request and the device.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoKey {
    /// Issuer.
    pub owner: Owner,
    /// `dev_t` as the block tracepoints print it (major << 20 | minor).
    pub dev: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Block IO counters per [`IoKey`], per CPU, cumulative.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Latency from the request's start (see [`InflightIo::start_ns`]) to its completion.
    pub lat: LatHist,
    /// Read requests completed.
    pub read_ops: u64,
    /// Write (and flush) requests completed.
    pub write_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Requests completed with an error.
    pub errors: u64,
    /// Discard (and secure erase) requests completed: blocks released, no data moved.
    pub discard_ops: u64,
    /// Bytes discarded.
    pub discard_bytes: u64,
}

/// A request in flight, keyed by the address of its `struct request`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InflightIo {
    /// Issuer.
    pub owner: Owner,
    /// When the request started: the block layer's own `start_time_ns` (set when the request
    /// was allocated, the start of iostat's await) when it keeps one, else the issue.
    pub start_ns: u64,
    /// Request size.
    pub bytes: u32,
    /// Device (`dev_t`).
    pub dev: u32,
    /// What the request does, one of [`io_kind`].
    pub kind: u32,
    pub _pad: u32,
}

/// Kinds of block request, as the kernel's disk statistics group them.
pub mod io_kind {
    /// Reads.
    pub const READ: u32 = 0;
    /// Writes and cache flushes.
    pub const WRITE: u32 = 1;
    /// Discards and secure erases: blocks released, no data moved.
    pub const DISCARD: u32 = 2;
}

/// Block requests in flight that hash alike, keyed by the address of their `struct request`
/// (see [`Ways`]; a hash insert and delete per request cost several times a trivial program).
/// A free way's key is 0.
///
/// A device's requests are preallocated, one per tag, so the requests in flight come from a
/// fixed set of a few hundred addresses per device whose buckets tend to stay in the cache,
/// where keys made of the device and sector touched a new random bucket nearly every time.
pub type IoBucket = Ways<u64, InflightIo, IO_WAYS>;

/// Ways per [`IoBucket`].
pub const IO_WAYS: usize = 4;

/// Number of [`IoBucket`]s (a power of two): 8,192 requests in flight in 448 KiB.
pub const IO_BUCKETS: u32 = 2048;

/// The bucket of the request at `rq`, from the address's low 32 bits. Requests are cache-line
/// aligned (their size is rounded up to one), so the low 6 bits carry nothing; Fibonacci
/// hashing spreads the rest.
///
/// 32-bit arithmetic on purpose: in a BTF tracepoint the request is a typed pointer, on which
/// the verifier refuses shifts and multiplies, while a 32-bit copy of it is a plain number
/// (for programs loaded with CAP_PERFMON, which bpfsight needs anyway).
#[inline(always)]
pub const fn io_bucket(rq: u32) -> u32 {
    ((rq >> 6).wrapping_mul(0x9E37_79B9)) >> (32 - IO_BUCKETS.trailing_zeros())
}

/// Syscall aggregation key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyscallKey {
    /// Caller.
    pub owner: Owner,
    /// Syscall number (architecture specific).
    pub nr: u32,
    /// Positive errno for error counts; 0 in latency keys.
    pub errno: u32,
}

/// Syscalls whose latency is measured (x86_64 numbers): the calls where a service waits on
/// the network or the disk. Everything else is only counted when it fails.
pub const SLOW_SYSCALLS: &[(u32, &str)] = &[
    (42, "connect"),
    (43, "accept"),
    (288, "accept4"),
    (74, "fsync"),
    (75, "fdatasync"),
    (277, "sync_file_range"),
];

/// Highest errno counted; larger values are kernel-internal restart codes.
pub const MAX_ERRNO: u32 = 133;

/// Kind of a [`ProcEvent`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcEventKind {
    /// The OOM killer chose this process.
    OomKill = 1,
    /// A process exited with a non-zero status or was terminated by a signal.
    FailedExit = 2,
}

impl ProcEventKind {
    /// Decodes the wire value.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::OomKill),
            2 => Some(Self::FailedExit),
            _ => None,
        }
    }
}

/// A discrete process event, sent through the [`maps::PROC_EVENTS`] ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    /// The kernel's tick count (`bpf_jiffies64`): cheaper than a clock read, and answers give
    /// event times in milliseconds. The collector turns it into Unix time.
    pub ts_ticks: u64,
    /// [`ProcEventKind`] as u32.
    pub kind: u32,
    /// Raw `exit_code` (`status << 8 | signal`) for exits; 0 for OOM kills.
    pub exit_code: u32,
    /// The process.
    pub owner: Owner,
    /// OOM kills: the victim's total virtual memory, KiB (as the tracepoint reports it).
    pub total_vm: u64,
    /// OOM kills: the victim's anonymous RSS, KiB.
    pub anon_rss: u64,
}

/// The process that owns a socket (thread-group id and the task's `comm` when it was seen).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Thread-group id (user-space pid). 0 when the owner is not known.
    pub tgid: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// `comm` of the task, NUL padded.
    pub comm: [u8; COMM_LEN],
}

impl Owner {
    /// Owner of sockets bpfsight saw only in softirq context (created before it started).
    pub const UNKNOWN: Owner = Owner { tgid: 0, _pad: 0, comm: *b"[unattributed]\0\0" };
    /// Resets the kernel sends for packets that match no socket (e.g. SYN to a closed port).
    pub const NO_SOCKET: Owner = Owner { tgid: 0, _pad: 0, comm: *b"[no-socket]\0\0\0\0\0" };
}

/// Bit flags of [`SockState::flags`].
pub mod sock_flags {
    /// The connection reached ESTABLISHED while we watched.
    pub const ESTABLISHED: u32 = 1;
    /// We opened it (connect), as opposed to accepting it.
    pub const ACTIVE: u32 = 2;
    /// The socket left ESTABLISHED for CLOSE; kept until `tcp_destroy_sock` for late resets
    /// (and preferred for eviction when its bucket is full).
    pub const CLOSED: u32 = 4;
    /// `tcp_destroy_sock` ran: the socket is gone, and the programs no longer see it (its way's
    /// key becomes [`DESTROYED_TAG`](super::DESTROYED_TAG)`| sk`). The way is kept (reused like
    /// a closed one) until user space, which reads send counters once a second, has read whose
    /// they were (the connection may have lived less than that) and frees it.
    pub const DESTROYED: u32 = 8;
}

/// What the kernel side remembers about one socket, found by the `struct sock` address.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockState {
    /// Process the socket is attributed to.
    pub owner: Owner,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Remote port, host byte order; 0 for accepted connections, whose remote port is the
    /// client's ephemeral one and would make every connection its own aggregation key.
    pub peer_port: u16,
    /// [`sock_flags`].
    pub flags: u32,
    /// Remote address; IPv4 in the first 4 bytes.
    pub peer_addr: [u8; 16],
    /// `bpf_ktime_get_ns` when the SYN was sent (active opens, until established), then when
    /// the connection was established.
    pub opened_ns: u64,
    /// What happened on the socket since user space last looked.
    pub counts: SockCounts,
}

impl SockState {
    /// The aggregation key the socket's events are filed under: its owner and peer.
    #[inline(always)]
    pub fn key(&self) -> ConnKey {
        ConnKey {
            tgid: self.owner.tgid,
            family: self.family,
            peer_port: self.peer_port,
            peer_addr: self.peer_addr,
            comm: self.owner.comm,
        }
    }
}

/// A socket's events not yet taken by user space, kept in its [`SockState`].
///
/// The programs add to these with atomic adds, and user space, which reads [`maps::SOCKS`]
/// through a shared mapping, takes them with atomic swaps to zero every poll and files them
/// under the socket's owner and peer. So a retransmit or a reset on a tracked socket costs an
/// atomic add in a line the program has just read, where filing it in `CONN_STATS` would cost
/// a hash of a 40-byte key and a bucket walk (more than a whole trivial program here). A
/// program that gives the way to another socket files what is left in `CONN_STATS` first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockCounts {
    /// The connect reached ESTABLISHED (0 or 1).
    pub opened_active: u32,
    /// The socket was accepted and reached ESTABLISHED (0 or 1).
    pub opened_passive: u32,
    /// The established connection closed (0 or 1).
    pub closed: u32,
    /// Connects that went SYN_SENT -> CLOSE.
    pub failed_connects: u32,
    /// RST segments sent.
    pub resets_sent: u32,
    /// RST segments received.
    pub resets_received: u32,
    /// Retransmitted segments.
    pub retransmits: u32,
    /// RSTs that answered the socket's connect (also in `resets_received`, and the connect
    /// is also in `failed_connects`): the peer refused it.
    pub refused_connects: u32,
    /// Lifetime of the connection, when it closed.
    pub duration_ns: u64,
    /// The connect's handshake time (SYN sent to ESTABLISHED), when it was established: one
    /// sample for the owner's histogram, which user space keeps.
    pub handshake_ns: u64,
}

impl SockCounts {
    /// Nothing to take.
    #[inline(always)]
    pub fn is_zero(&self) -> bool {
        (self.opened_active
            | self.opened_passive
            | self.closed
            | self.failed_connects
            | self.resets_sent
            | self.resets_received
            | self.retransmits
            | self.refused_connects) as u64
            | self.duration_ns
            | self.handshake_ns
            == 0
    }
}

impl ConnStats {
    /// Adds a socket's taken [`SockCounts`] (but the handshake time, which goes to the
    /// owner's histogram).
    #[inline(always)]
    pub fn add(&mut self, c: &SockCounts) {
        self.opened_active += c.opened_active as u64;
        self.opened_passive += c.opened_passive as u64;
        self.closed += c.closed as u64;
        self.duration_ns += c.duration_ns;
        self.failed_connects += c.failed_connects as u64;
        self.resets_sent += c.resets_sent as u64;
        self.resets_received += c.resets_received as u64;
        self.retransmits += c.retransmits as u64;
        self.refused_connects += c.refused_connects as u64;
    }
}

/// One bucket of a set-associative table kept in a BPF `ARRAY`: `N` entries whose keys hash
/// alike. A hash map insert or delete takes a bucket lock and the free list, about 200 ns each
/// here (a whole trivial program is ~85 ns); a way is a few stores. The keys come first and
/// share a cache line, so a lookup touches at most two. The caller picks the victim when every
/// way is taken, and says which key marks a free way.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ways<K, V, const N: usize> {
    /// Key of each way.
    pub key: [K; N],
    /// Value of each way.
    pub value: [V; N],
}

impl<K: Copy + PartialEq, V: Copy, const N: usize> Ways<K, V, N> {
    /// The way holding `key`.
    #[inline(always)]
    pub fn find(&self, key: &K) -> Option<usize> {
        (0..N).find(|&w| self.key[w] == *key)
    }

    /// The value of `key`.
    #[inline(always)]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let w = self.find(key)?;
        self.value.get_mut(w)
    }

    /// The way for `key`: its own, else the first whose key is `free`, in one pass.
    #[inline(always)]
    pub fn slot_for(&self, key: &K, free: &K) -> Option<usize> {
        (0..N).find(|&w| self.key[w] == *key || self.key[w] == *free)
    }

    /// Stores `value` under `key` in way `w` (out of range: nothing).
    #[inline(always)]
    pub fn set(&mut self, w: usize, key: K, value: &V) {
        if w < N {
            self.key[w] = key;
            self.value[w] = *value;
        }
    }

    /// Frees way `w` by giving it the `free` key (out of range: nothing).
    #[inline(always)]
    pub fn clear(&mut self, w: usize, free: K) {
        if w < N {
            self.key[w] = free;
        }
    }
}

/// Sockets that hash alike (see [`Ways`]), keyed by `struct sock` address; 0 is a free way.
pub type SockBucket = Ways<u64, SockState, SOCK_WAYS>;

/// Set in a [`SockBucket`] key whose socket was destroyed. The kernel gives a freed socket's
/// memory to the next socket at once: the tag keeps the new socket, at the same address, from
/// finding the old one's way as its own, and user space from freeing the new socket's way when
/// it frees the old one's (it frees a way only if it still holds the tagged key). Socket
/// addresses are 64-byte aligned, so the bit is otherwise always clear.
pub const DESTROYED_TAG: u64 = 1;

/// Ways per [`SockBucket`].
pub const SOCK_WAYS: usize = 4;

/// Number of [`SockBucket`]s in [`maps::SOCKS`] (a power of two): 7 MiB for 65,536 sockets;
/// of 10,000 live sockets hashed at random, about 7 would meet a full bucket.
pub const SOCK_BUCKETS: u32 = 16384;

/// The bucket of socket `sk`. `struct sock`s are at least 64-byte aligned slab objects, so the
/// low bits carry nothing; Fibonacci hashing spreads the rest.
#[inline(always)]
pub const fn sock_bucket(sk: u64) -> u32 {
    ((sk >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SOCK_BUCKETS.trailing_zeros())) as u32
}

/// Slots per CPU in [`maps::SEND_SLOTS`] (a power of two): 64 KiB a CPU.
pub const SEND_SLOTS_PER_CPU: u32 = 2048;

/// The slot of socket `sk` among one CPU's [`SEND_SLOTS_PER_CPU`] (see [`sock_bucket`]).
#[inline(always)]
pub const fn send_slot(sk: u64) -> u32 {
    ((sk >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SEND_SLOTS_PER_CPU.trailing_zeros())) as u32
}

/// A socket's send counters on one CPU, in [`maps::SEND_SLOTS`]. Only programs on that CPU
/// write it, so it needs no atomics; user space reads it through a shared mapping and frees it
/// (counters, then `sk`) once the socket is gone and its totals are read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendSlot {
    /// The socket's address; 0 for a free slot.
    pub sk: u64,
    /// `sendmsg` calls that sent data.
    pub sends: u64,
    /// Bytes those calls sent.
    pub bytes: u64,
}

/// Key of a listening socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local port, host byte order.
    pub port: u16,
}

/// Aggregation key: one owner talking to one peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Owner's thread-group id (0 for unattributed traffic).
    pub tgid: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Remote port, host byte order.
    pub peer_port: u16,
    /// Remote address; IPv4 in the first 4 bytes.
    pub peer_addr: [u8; 16],
    /// Owner's `comm`, part of the key so a recycled pid never merges two processes.
    pub comm: [u8; COMM_LEN],
}

/// Cumulative counters for one [`ConnKey`], per CPU; user space sums CPUs and takes deltas.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections we initiated that reached ESTABLISHED.
    pub opened_active: u64,
    /// Connections accepted from a listener that reached ESTABLISHED.
    pub opened_passive: u64,
    /// Established connections that closed.
    pub closed: u64,
    /// Sum of the lifetimes of closed connections, nanoseconds.
    pub duration_ns: u64,
    /// Connects that went SYN_SENT -> CLOSE (refused, timed out, unreachable).
    pub failed_connects: u64,
    /// RST segments sent.
    pub resets_sent: u64,
    /// RST segments received.
    pub resets_received: u64,
    /// Retransmitted segments.
    pub retransmits: u64,
    /// RSTs received in answer to a connect: connects the peer refused (also counted in
    /// `failed_connects` and `resets_received`).
    pub refused_connects: u64,
}

/// Data sent on one socket, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    /// `sendmsg` calls that sent data.
    pub sends: u64,
    /// Bytes those calls sent.
    pub bytes: u64,
}

/// Kind of a [`TcpEvent`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEventKind {
    /// A connect that never reached ESTABLISHED.
    FailedConnect = 1,
    /// The socket received a RST.
    ResetReceived = 2,
    /// The socket (or the kernel, for no socket) sent a RST.
    ResetSent = 3,
}

impl TcpEventKind {
    /// Decodes the wire value.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::FailedConnect),
            2 => Some(Self::ResetReceived),
            3 => Some(Self::ResetSent),
            _ => None,
        }
    }
}

/// A discrete event, sent through the [`maps::EVENTS`] ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpEvent {
    /// The kernel's tick count (`bpf_jiffies64`), as in [`ProcEvent::ts_ticks`].
    pub ts_ticks: u64,
    /// [`TcpEventKind`] as u32.
    pub kind: u32,
    /// Owner.
    pub owner: Owner,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub peer_port: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// Local address; IPv4 in the first 4 bytes.
    pub local_addr: [u8; 16],
    /// Remote address; IPv4 in the first 4 bytes.
    pub peer_addr: [u8; 16],
}

/// Slots of the [`maps::COUNTERS`] per-CPU array: how much the kernel side had to drop.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events not written because the ring buffer was full.
    RingbufDrops = 0,
    /// Updates lost because `CONN_STATS` was full.
    ConnStatsFull = 1,
    /// Tracked sockets dropped because newer sockets took every way of their `SOCKS` bucket.
    SockInsertFailed = 2,
    /// Sends not counted because `SEND_STATS` was full.
    SendStatsFull = 3,
    /// Updates lost because `PROC_STATS` was full.
    ProcStatsFull = 4,
    /// Slow syscalls or block requests not timed: a block request's in-flight bucket was full,
    /// or a thread whose tid maps to the same `SYSCALL_START` slot (only when `pid_max`
    /// exceeds the table) entered a timed syscall meanwhile.
    StartMapFull = 5,
    /// Updates lost because `IO_STATS`, `SYSCALL_ERRORS`, `SYSCALL_LAT` or `CONNECT_LAT` was full.
    HostStatsFull = 6,
    /// Process events not written because their ring buffer was full.
    ProcRingbufDrops = 7,
    /// Thread batches flushed early because another thread's tid mapped to the same slot
    /// (only when `pid_max` exceeds the slot table).
    ThreadSlotShared = 8,
}

/// Number of [`Counter`] slots.
pub const COUNTERS_LEN: u32 = 9;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all types are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::SockBucket {}
    unsafe impl aya::Pod for super::ListenKey {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnStats {}
    unsafe impl aya::Pod for super::SendStats {}
    unsafe impl aya::Pod for super::TcpEvent {}
    unsafe impl aya::Pod for super::LatHist {}
    unsafe impl aya::Pod for super::ProcStats {}
    unsafe impl aya::Pod for super::IoKey {}
    unsafe impl aya::Pod for super::IoStats {}
    unsafe impl aya::Pod for super::SyscallKey {}
    unsafe impl aya::Pod for super::ProcEvent {}
}

/// Field offsets in the tracepoint records the programs read (from
/// `/sys/kernel/tracing/events/<category>/<name>/format`). The collector checks them against the
/// running kernel before attaching and refuses, naming the field, if any moved.
pub mod layout {
    /// `(category, tracepoint, field, offset, size)`.
    pub type Field = (&'static str, &'static str, &'static str, usize, usize);

    /// `sock:inet_sock_set_state`.
    pub mod inet_sock_set_state {
        pub const SKADDR: usize = 8;
        pub const OLDSTATE: usize = 16;
        pub const NEWSTATE: usize = 20;
        pub const SPORT: usize = 24;
        pub const DPORT: usize = 26;
        pub const FAMILY: usize = 28;
        pub const PROTOCOL: usize = 30;
        pub const SADDR: usize = 32;
        pub const DADDR: usize = 36;
        pub const SADDR_V6: usize = 40;
        pub const DADDR_V6: usize = 56;
    }
    /// `tcp:tcp_retransmit_skb`.
    pub mod tcp_retransmit_skb {
        pub const SKBADDR: usize = 8;
        pub const SKADDR: usize = 16;
        pub const SPORT: usize = 28;
        pub const DPORT: usize = 30;
        pub const FAMILY: usize = 32;
        pub const DADDR: usize = 38;
        pub const DADDR_V6: usize = 58;
    }
    /// `tcp:tcp_receive_reset` and `tcp:tcp_destroy_sock` (same leading layout).
    pub mod tcp_receive_reset {
        pub const SKADDR: usize = 8;
        pub const SPORT: usize = 16;
        pub const DPORT: usize = 18;
        pub const FAMILY: usize = 20;
        pub const SADDR: usize = 22;
        pub const DADDR: usize = 26;
        pub const SADDR_V6: usize = 30;
        pub const DADDR_V6: usize = 46;
    }
    /// `tcp:tcp_send_reset`: addresses are `sockaddr_in` / `sockaddr_in6` (28 bytes).
    pub mod tcp_send_reset {
        pub const SKADDR: usize = 16;
        pub const SADDR: usize = 32;
        pub const DADDR: usize = 60;
    }

    /// `oom:mark_victim`.
    pub mod mark_victim {
        pub const PID: usize = 8;
        pub const COMM_LOC: usize = 12;
        pub const TOTAL_VM: usize = 16;
        pub const ANON_RSS: usize = 24;
    }
    /// `sched:sched_process_exit`.
    pub mod sched_process_exit {
        pub const PID: usize = 24;
        pub const GROUP_DEAD: usize = 32;
    }

    /// Every field the programs read, for the collector's check against the running kernel.
    pub const FIELDS: &[Field] = &[
        ("sock", "inet_sock_set_state", "skaddr", 8, 8),
        ("sock", "inet_sock_set_state", "oldstate", 16, 4),
        ("sock", "inet_sock_set_state", "newstate", 20, 4),
        ("sock", "inet_sock_set_state", "sport", 24, 2),
        ("sock", "inet_sock_set_state", "dport", 26, 2),
        ("sock", "inet_sock_set_state", "family", 28, 2),
        ("sock", "inet_sock_set_state", "protocol", 30, 2),
        ("sock", "inet_sock_set_state", "saddr", 32, 4),
        ("sock", "inet_sock_set_state", "daddr", 36, 4),
        ("sock", "inet_sock_set_state", "saddr_v6", 40, 16),
        ("sock", "inet_sock_set_state", "daddr_v6", 56, 16),
        ("tcp", "tcp_retransmit_skb", "skbaddr", 8, 8),
        ("tcp", "tcp_retransmit_skb", "skaddr", 16, 8),
        ("tcp", "tcp_retransmit_skb", "sport", 28, 2),
        ("tcp", "tcp_retransmit_skb", "dport", 30, 2),
        ("tcp", "tcp_retransmit_skb", "family", 32, 2),
        ("tcp", "tcp_retransmit_skb", "daddr", 38, 4),
        ("tcp", "tcp_retransmit_skb", "daddr_v6", 58, 16),
        ("tcp", "tcp_receive_reset", "skaddr", 8, 8),
        ("tcp", "tcp_receive_reset", "sport", 16, 2),
        ("tcp", "tcp_receive_reset", "dport", 18, 2),
        ("tcp", "tcp_receive_reset", "family", 20, 2),
        ("tcp", "tcp_receive_reset", "saddr", 22, 4),
        ("tcp", "tcp_receive_reset", "daddr", 26, 4),
        ("tcp", "tcp_receive_reset", "saddr_v6", 30, 16),
        ("tcp", "tcp_receive_reset", "daddr_v6", 46, 16),
        ("tcp", "tcp_destroy_sock", "skaddr", 8, 8),
        ("tcp", "tcp_send_reset", "skaddr", 16, 8),
        ("tcp", "tcp_send_reset", "saddr", 32, 28),
        ("tcp", "tcp_send_reset", "daddr", 60, 28),
        ("oom", "mark_victim", "pid", 8, 4),
        ("oom", "mark_victim", "comm", 12, 4),
        ("oom", "mark_victim", "total_vm", 16, 8),
        ("oom", "mark_victim", "anon_rss", 24, 8),
        ("sched", "sched_process_exit", "pid", 24, 4),
        ("sched", "sched_process_exit", "group_dead", 32, 1),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket's counts file whole under its owner and peer, and "nothing to take" means
    /// every field, the handshake sample included.
    #[test]
    fn socket_counts_file_under_the_owner_and_peer() {
        let owner = Owner { tgid: 42, _pad: 0, comm: *b"svc\0\0\0\0\0\0\0\0\0\0\0\0\0" };
        let mut st = SockState {
            owner,
            family: AF_INET,
            peer_port: 443,
            flags: 0,
            peer_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            opened_ns: 0,
            counts: SockCounts::default(),
        };
        assert!(st.counts.is_zero());
        st.counts.handshake_ns = 1;
        assert!(!st.counts.is_zero(), "a handshake sample alone must be taken");
        st.counts = SockCounts {
            closed: 1,
            duration_ns: 5,
            retransmits: 3,
            resets_received: 1,
            ..Default::default()
        };
        let mut s = ConnStats::default();
        s.add(&st.counts);
        s.add(&st.counts);
        assert_eq!((s.closed, s.duration_ns, s.retransmits, s.resets_received), (2, 10, 6, 2));
        let k = st.key();
        assert_eq!(
            (k.tgid, k.comm, k.family, k.peer_port, k.peer_addr),
            (42, owner.comm, AF_INET, 443, st.peer_addr)
        );
        // User space maps the table: the kernel lays array elements out at their size rounded
        // up to 8 bytes, so the bucket must already be a multiple of 8.
        assert_eq!(size_of::<SockBucket>() % 8, 0);
        // A destroyed socket's tag never collides with a live socket's (64-byte aligned) address.
        assert_eq!(0xffff_8880_1234_5640u64 & DESTROYED_TAG, 0);
    }

    /// Entry is hooked exactly for the timed syscalls, by the real program and its baseline.
    #[test]
    fn slow_syscall_entries_match_the_timed_list() {
        use programs::{HOST, HOST_BASELINE, Hook};
        for (list, name) in [(HOST, "sys_enter_slow"), (HOST_BASELINE, "baseline_sys_enter_slow")] {
            let mut hooked = list.iter().filter(|p| p.name == name).map(|p| match p.hook {
                Hook::Tracepoint("syscalls", event) => event.strip_prefix("sys_enter_"),
                _ => None,
            });
            for (_, syscall) in SLOW_SYSCALLS {
                assert_eq!(hooked.next(), Some(Some(*syscall)), "{name}");
            }
            assert_eq!(hooked.next(), None, "{name}");
        }
    }

    /// Sockets come from a slab: consecutive objects a little over 2 KiB apart. 10,000 live
    /// ones must spread so that (almost) none overflows its bucket.
    #[test]
    fn sock_buckets_spread_slab_addresses() {
        let mut load = [0u32; SOCK_BUCKETS as usize];
        for i in 0..10_000u64 {
            let sk = 0xffff_8881_0000_0000 + i * 2368;
            let b = sock_bucket(sk);
            assert!(b < SOCK_BUCKETS);
            load[b as usize] += 1;
        }
        let overflowing = load.iter().filter(|&&n| n as usize > SOCK_WAYS).count();
        assert!(overflowing <= 5, "{overflowing} buckets hold more than {SOCK_WAYS} sockets");
    }

    /// Two devices' full tag sets (1,024 requests each, as blk-mq lays them out: back to back,
    /// each rounded up to a cache line) are all in flight at once without a full bucket.
    #[test]
    fn io_buckets_spread_a_devices_requests() {
        let mut load = [0u32; IO_BUCKETS as usize];
        for base in [0xffff_8881_0400_0000u64, 0xffff_8881_2a00_0000] {
            for tag in 0..1024u64 {
                let b = io_bucket((base + tag * 448) as u32);
                assert!(b < IO_BUCKETS);
                load[b as usize] += 1;
            }
        }
        assert!(load.iter().all(|&n| n as usize <= IO_WAYS));
    }
}
