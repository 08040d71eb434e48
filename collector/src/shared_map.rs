//! A shared mapping of a `BPF_F_MMAPABLE` array map: the programs' values as plain memory,
//! read (and, where the protocol allows, written) with no syscall per element.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;

use crate::error::CollectorError;

/// A read-write shared mapping of an array map's values, unmapped on drop.
pub struct SharedMap {
    /// Keeps the map (and so the mapping's backing) alive.
    _map: MapData,
    base: *mut u8,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory; its owner uses it from one thread at a time.
unsafe impl Send for SharedMap {}

impl SharedMap {
    /// Maps the first `bytes` of `map` (created `BPF_F_MMAPABLE`); `name` is for the error.
    pub fn new(map: MapData, bytes: usize, name: &str) -> Result<Self, CollectorError> {
        // SAFETY: plain query.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = bytes.div_ceil(page) * page;
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
            return Err(CollectorError::load(format!("map {name} (mmap)"), std::io::Error::last_os_error()));
        }
        Ok(SharedMap { _map: map, base: base.cast(), bytes })
    }

    /// The start of the values, as an array of `T` (the caller knows the map's value type,
    /// whose size must be a multiple of 8: the kernel lays elements out at that stride).
    pub fn base<T>(&self) -> *mut T {
        self.base.cast()
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.bytes) };
    }
}
