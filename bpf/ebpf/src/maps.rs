//! Maps shared by the programs. Names match `bpfsight_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use bpfsight_common::{COUNTERS_LEN, ConnKey, ConnStats, Counter, ListenKey, Owner, SendStats, SockState};

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
pub static BASELINE: PerCpuArray<u64> = PerCpuArray::with_max_entries(8, 0);

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
