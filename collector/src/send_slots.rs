//! The kernel's per-CPU send slots ([`maps::SEND_SLOTS`](bpfsight_common::maps::SEND_SLOTS)),
//! read through a shared mapping of the map: every poll walks all of them with plain loads, no
//! syscall per socket, and frees those of sockets that are gone.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{Ordering, fence};

use aya::maps::MapData;
use bpfsight_common::{SEND_SLOTS_PER_CPU, SendSlot, SendStats, send_slot};

use crate::error::CollectorError;
use crate::tcp::TcpCounters;

/// A shared, read-write mapping of the send slots.
pub struct SendSlots {
    /// Keeps the map (and so the mapping's backing) alive.
    _map: MapData,
    base: *mut SendSlot,
    slots: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory; the poller thread owns this handle alone.
unsafe impl Send for SendSlots {}

impl SendSlots {
    /// Maps `slots` slots of `map` (created `BPF_F_MMAPABLE`, `slots` entries).
    pub fn new(map: MapData, slots: usize) -> Result<Self, CollectorError> {
        let page = 4096;
        let bytes = (slots * size_of::<SendSlot>()).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array map's fd, as the kernel allows for BPF_F_MMAPABLE arrays;
        // the length is the map's, rounded up to a page as the kernel allocates it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(CollectorError::load("map SEND_SLOTS (mmap)", std::io::Error::last_os_error()));
        }
        Ok(SendSlots { _map: map, base: base.cast(), slots, bytes })
    }

    fn slot(&self, i: usize) -> *mut SendSlot {
        debug_assert!(i < self.slots);
        // SAFETY: in bounds of the mapping.
        unsafe { self.base.add(i) }
    }

    /// Adds every held slot's counters to `out`, by socket.
    pub fn add_to(&self, out: &mut HashMap<u64, TcpCounters>) {
        for i in 0..self.slots {
            let p = self.slot(i);
            // SAFETY: in the mapping; the kernel writes these concurrently, so each is one
            // volatile aligned load (never torn on a 64-bit machine).
            let sk = unsafe { std::ptr::addr_of!((*p).sk).read_volatile() };
            if sk == 0 {
                continue;
            }
            let (sends, bytes) = unsafe {
                (
                    std::ptr::addr_of!((*p).sends).read_volatile(),
                    std::ptr::addr_of!((*p).bytes).read_volatile(),
                )
            };
            *out.entry(sk).or_default() += TcpCounters::from(SendStats { sends, bytes });
        }
    }

    /// Socket `sk`'s counters in its slots, summed over CPUs.
    pub fn sum_for(&self, sk: u64) -> TcpCounters {
        let per_cpu = SEND_SLOTS_PER_CPU as usize;
        let mut sum = TcpCounters::default();
        for cpu in 0..self.slots / per_cpu {
            let p = self.slot(cpu * per_cpu + send_slot(sk) as usize);
            // SAFETY: in the mapping; see `add_to`.
            unsafe {
                if std::ptr::addr_of!((*p).sk).read_volatile() == sk {
                    let sends = std::ptr::addr_of!((*p).sends).read_volatile();
                    let bytes = std::ptr::addr_of!((*p).bytes).read_volatile();
                    sum += TcpCounters::from(SendStats { sends, bytes });
                }
            }
        }
        sum
    }

    /// Frees socket `sk`'s slots on every CPU: counters first, then the socket, the reverse of
    /// the order the kernel claims a slot in.
    pub fn free(&mut self, sk: u64) {
        let per_cpu = SEND_SLOTS_PER_CPU as usize;
        for cpu in 0..self.slots / per_cpu {
            let p = self.slot(cpu * per_cpu + send_slot(sk) as usize);
            // SAFETY: in the mapping; see `add_to`.
            unsafe {
                if std::ptr::addr_of!((*p).sk).read_volatile() != sk {
                    continue;
                }
                std::ptr::addr_of_mut!((*p).sends).write_volatile(0);
                std::ptr::addr_of_mut!((*p).bytes).write_volatile(0);
                fence(Ordering::Release);
                std::ptr::addr_of_mut!((*p).sk).write_volatile(0);
            }
        }
    }
}

impl Drop for SendSlots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.bytes) };
    }
}
