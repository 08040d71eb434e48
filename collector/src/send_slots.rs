//! The kernel's per-CPU send slots ([`maps::SEND_SLOTS`](bpfsight_common::maps::SEND_SLOTS)),
//! read through a shared mapping of the map: every poll walks all of them with plain loads, no
//! syscall per socket, and frees those of sockets that are gone.

use std::collections::HashMap;
use std::sync::atomic::{Ordering, fence};

use aya::maps::MapData;
use bpfsight_common::{SEND_SLOTS_PER_CPU, SendSlot, SendStats, send_slot};

use crate::error::CollectorError;
use crate::shared_map::SharedMap;
use crate::tcp::TcpCounters;

/// The send slots, through a shared mapping.
pub struct SendSlots {
    map: SharedMap,
    slots: usize,
}

impl SendSlots {
    /// Maps `slots` slots of `map` (created `BPF_F_MMAPABLE`, `slots` entries).
    pub fn new(map: MapData, slots: usize) -> Result<Self, CollectorError> {
        Ok(SendSlots { map: SharedMap::new(map, slots * size_of::<SendSlot>(), "SEND_SLOTS")?, slots })
    }

    fn slot(&self, i: usize) -> *mut SendSlot {
        debug_assert!(i < self.slots);
        // SAFETY: in bounds of the mapping.
        unsafe { self.map.base::<SendSlot>().add(i) }
    }

    /// The socket in slot `p`, 0 if free. The kernel writes slots concurrently, so every field
    /// is read with one volatile aligned load (never torn on a 64-bit machine).
    fn holder(p: *mut SendSlot) -> u64 {
        // SAFETY: `p` is a slot of the mapping.
        unsafe { std::ptr::addr_of!((*p).sk).read_volatile() }
    }

    /// Slot `p`'s counters.
    fn counts(p: *mut SendSlot) -> TcpCounters {
        // SAFETY: `p` is a slot of the mapping; see `holder`.
        let (sends, bytes) = unsafe {
            (std::ptr::addr_of!((*p).sends).read_volatile(), std::ptr::addr_of!((*p).bytes).read_volatile())
        };
        TcpCounters::from(SendStats { sends, bytes })
    }

    /// The slots socket `sk` holds, one CPU's at most each.
    fn held_by(&self, sk: u64) -> impl Iterator<Item = *mut SendSlot> + '_ {
        let per_cpu = SEND_SLOTS_PER_CPU as usize;
        (0..self.slots / per_cpu)
            .map(move |cpu| self.slot(cpu * per_cpu + send_slot(sk) as usize))
            .filter(move |&p| Self::holder(p) == sk)
    }

    /// Adds every held slot's counters to `out`, by socket.
    pub fn add_to(&self, out: &mut HashMap<u64, TcpCounters>) {
        for p in (0..self.slots).map(|i| self.slot(i)) {
            let sk = Self::holder(p);
            if sk != 0 {
                *out.entry(sk).or_default() += Self::counts(p);
            }
        }
    }

    /// Socket `sk`'s counters in its slots, summed over CPUs.
    pub fn sum_for(&self, sk: u64) -> TcpCounters {
        let mut sum = TcpCounters::default();
        for p in self.held_by(sk) {
            sum += Self::counts(p);
        }
        sum
    }

    /// Frees socket `sk`'s slots on every CPU: counters first, then the socket, the reverse of
    /// the order the kernel claims a slot in.
    pub fn free(&mut self, sk: u64) {
        let held: Vec<_> = self.held_by(sk).collect();
        for p in held {
            // SAFETY: a slot of the mapping.
            unsafe {
                std::ptr::addr_of_mut!((*p).sends).write_volatile(0);
                std::ptr::addr_of_mut!((*p).bytes).write_volatile(0);
                fence(Ordering::Release);
                std::ptr::addr_of_mut!((*p).sk).write_volatile(0);
            }
        }
    }
}
