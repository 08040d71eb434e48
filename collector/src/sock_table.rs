//! The kernel's socket table ([`maps::SOCKS`](bpfsight_common::maps::SOCKS)), read through a
//! shared mapping: who owns each tracked socket, and the events on it that the programs
//! counted in its way ([`SockCounts`]) since the last poll.
//!
//! Every poll takes the counts with atomic swaps to zero (the programs add with atomic adds, so
//! nothing is counted twice or lost) and, once the send counters have been read, frees the ways
//! of the sockets seen destroyed a poll earlier, so that new sockets find free ways and the
//! programs rarely have to file a socket's counts themselves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use aya::maps::MapData;
use bpfsight_common::{
    ConnKey, ConnStats, DESTROYED_TAG, LatHist, Owner, SOCK_BUCKETS, SOCK_WAYS, SockBucket, SockCounts,
    SockState, sock_bucket, sock_flags,
};

use crate::error::CollectorError;
use crate::shared_map::SharedMap;
use crate::tcp::TcpCounters;

/// What one [`SockTable::take_counts`] took.
#[derive(Debug, Default)]
pub struct Taken {
    /// TCP counters by owner and peer.
    pub tcp: HashMap<ConnKey, TcpCounters>,
    /// Handshake times by owner, as histograms.
    pub handshakes: HashMap<Owner, LatHist>,
}

/// The socket table, through a shared mapping.
pub struct SockTable {
    map: SharedMap,
    /// (bucket, way, tagged key) of the ways the last [`take_counts`](Self::take_counts) saw
    /// destroyed.
    destroyed: Vec<(usize, usize, u64)>,
    /// Those of the poll before, which the next [`free_destroyed`](Self::free_destroyed) frees.
    freeable: Vec<(usize, usize, u64)>,
}

impl SockTable {
    /// Maps `map` (created `BPF_F_MMAPABLE`, [`SOCK_BUCKETS`] entries).
    pub fn new(map: MapData) -> Result<Self, CollectorError> {
        let bytes = SOCK_BUCKETS as usize * size_of::<SockBucket>();
        Ok(SockTable {
            map: SharedMap::new(map, bytes, "SOCKS")?,
            destroyed: Vec::new(),
            freeable: Vec::new(),
        })
    }

    fn bucket(&self, b: usize) -> *mut SockBucket {
        debug_assert!(b < SOCK_BUCKETS as usize);
        // SAFETY: in bounds of the mapping (an array element is its value size, a multiple of 8).
        unsafe { self.map.base::<SockBucket>().add(b) }
    }

    /// The socket in way `w` of bucket `b`, 0 if free; one aligned volatile load (the programs
    /// write it concurrently).
    fn holder(&self, b: usize, w: usize) -> u64 {
        // SAFETY: a way of the mapping.
        unsafe { std::ptr::addr_of!((*self.bucket(b)).key[w]).read_volatile() }
    }

    /// Way `w`'s state as it is now (a program may be changing it: a way given to another
    /// socket between this read and a take files that take under the old owner, a race of a
    /// few instructions once per reuse).
    fn state(&self, b: usize, w: usize) -> SockState {
        // SAFETY: a way of the mapping; plain old data whatever the bytes.
        unsafe { std::ptr::addr_of!((*self.bucket(b)).value[w]).read_volatile() }
    }

    /// Way `w`'s counts as they are now, without the rest of its state.
    fn counts(&self, b: usize, w: usize) -> SockCounts {
        // SAFETY: as in `state`.
        unsafe { std::ptr::addr_of!((*self.bucket(b)).value[w].counts).read_volatile() }
    }

    /// The socket at address `sk` that its send counters belong to. The kernel gives a freed
    /// socket's memory to the next socket at once, so within one poll one address may have
    /// been a connection that sent, then sockets that could not: connects refused or still in
    /// their handshake. The sends are then the connection's. So: the live socket if it is
    /// established, else a destroyed one that was, else whichever holds the address.
    pub fn get_sender(&self, sk: u64) -> Option<SockState> {
        if sk == 0 {
            return None;
        }
        let b = sock_bucket(sk) as usize;
        let established = |st: &SockState| st.flags & sock_flags::ESTABLISHED != 0;
        let (mut live, mut sent, mut other) = (None, None, None);
        for w in 0..SOCK_WAYS {
            let key = self.holder(b, w);
            if key == sk {
                live = Some(self.state(b, w));
            } else if key == sk | DESTROYED_TAG {
                let st = self.state(b, w);
                let slot = if established(&st) { &mut sent } else { &mut other };
                slot.get_or_insert(st);
            }
        }
        match live {
            Some(st) if established(&st) => Some(st),
            live => sent.or(live).or(other),
        }
    }

    /// Frees the ways of the sockets [`take_counts`](Self::take_counts) saw destroyed the time
    /// before: their counts were taken then, and the send counters have been read since.
    pub fn free_destroyed(&mut self) {
        for (b, w, key) in std::mem::take(&mut self.freeable) {
            // SAFETY: a way of the mapping. Only if it still holds that destroyed socket: a
            // program may have given it to another since (the exchange fails, the way is theirs).
            let k = unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*self.bucket(b)).key[w])) };
            let _ = k.compare_exchange(key, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        self.freeable = std::mem::take(&mut self.destroyed);
    }

    /// Takes every socket's counts, summed by owner and peer, and notes the destroyed
    /// sockets' ways for [`free_destroyed`](Self::free_destroyed).
    pub fn take_counts(&mut self) -> Taken {
        self.destroyed.clear();
        let mut out = Taken::default();
        for b in 0..SOCK_BUCKETS as usize {
            for w in 0..SOCK_WAYS {
                let sk = self.holder(b, w);
                if sk == 0 {
                    continue;
                }
                // Most sockets were quiet: their owner and peer are not read.
                if !self.counts(b, w).is_zero() {
                    let st = self.state(b, w);
                    let taken = self.take(b, w);
                    let mut s = ConnStats::default();
                    s.add(&taken);
                    *out.tcp.entry(st.key()).or_default() += TcpCounters::from(s);
                    if taken.handshake_ns != 0 {
                        out.handshakes.entry(st.owner).or_default().add(taken.handshake_ns);
                    }
                }
                if sk & DESTROYED_TAG != 0 {
                    self.destroyed.push((b, w, sk));
                }
            }
        }
        out
    }

    /// Takes way `w`'s counts, leaving zeros, field by field as the programs add.
    fn take(&self, b: usize, w: usize) -> SockCounts {
        // SAFETY: aligned fields of a way of the mapping, shared with the programs, which only
        // touch them with atomic operations.
        unsafe {
            let c = std::ptr::addr_of_mut!((*self.bucket(b)).value[w].counts);
            let take = |p: *mut u32| {
                if p.read_volatile() == 0 { 0 } else { AtomicU32::from_ptr(p).swap(0, Ordering::AcqRel) }
            };
            let take64 = |p: *mut u64| {
                if p.read_volatile() == 0 { 0 } else { AtomicU64::from_ptr(p).swap(0, Ordering::AcqRel) }
            };
            SockCounts {
                // Before `resets_received`: the program adds to that first, so a poll never
                // takes a refusal without its reset.
                refused_connects: take(std::ptr::addr_of_mut!((*c).refused_connects)),
                opened_active: take(std::ptr::addr_of_mut!((*c).opened_active)),
                opened_passive: take(std::ptr::addr_of_mut!((*c).opened_passive)),
                closed: take(std::ptr::addr_of_mut!((*c).closed)),
                failed_connects: take(std::ptr::addr_of_mut!((*c).failed_connects)),
                resets_sent: take(std::ptr::addr_of_mut!((*c).resets_sent)),
                resets_received: take(std::ptr::addr_of_mut!((*c).resets_received)),
                retransmits: take(std::ptr::addr_of_mut!((*c).retransmits)),
                duration_ns: take64(std::ptr::addr_of_mut!((*c).duration_ns)),
                handshake_ns: take64(std::ptr::addr_of_mut!((*c).handshake_ns)),
            }
        }
    }
}
