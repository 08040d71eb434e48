//! Helpers every program uses: reading tracepoint records, who is running, the clock.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::TracePointContext,
};
use bpfsight_common::Owner;

/// Loads a scalar record field. Offsets are constants checked against the running kernel's
/// format files before attach. Volatile keeps each load a single `ctx + constant` access of
/// the field's width, the only form the verifier accepts for context reads.
#[inline(always)]
pub fn at<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    let p = unsafe { (ctx.as_ptr() as *const u8).add(off) } as *const T;
    // SAFETY: inside the tracepoint record.
    unsafe { p.read_volatile() }
}

/// The task running now, valid only in process context.
#[inline(always)]
pub fn current_owner() -> Owner {
    Owner { tgid: (bpf_get_current_pid_tgid() >> 32) as u32, _pad: 0, comm: current_comm() }
}

/// The running task's `comm`. (aya's wrapper zeroes the buffer first, which compiles to a
/// byte-by-byte `memset` loop; the helper writes all 16 bytes itself.)
#[inline(always)]
pub fn current_comm() -> [u8; 16] {
    let mut comm = core::mem::MaybeUninit::<[u8; 16]>::uninit();
    // SAFETY: a 16-byte buffer on our stack; the helper NUL-pads the name, or zeroes the
    // buffer when it fails, so it is initialised either way.
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), 16);
        comm.assume_init()
    }
}

/// A field of a BTF-typed kernel pointer (a tp_btf argument), at the byte offset held in the
/// `.rodata` static `off` that the loader set from the kernel's BTF. `.rodata` is frozen, so the
/// verifier sees a constant offset, checks the load against the pointer's BTF type and turns it
/// into a guarded direct load: no helper call.
#[inline(always)]
pub fn btf_field<T: Copy>(ptr: u64, off: &u32) -> T {
    // SAFETY: the offset is a loader-set constant; the load is verified against BTF.
    unsafe {
        let off = core::ptr::read_volatile(off) as u64;
        core::ptr::read_volatile((ptr + off) as *const T)
    }
}

/// CLOCK_MONOTONIC. A read costs about 50 ns on these VMs, about half a trivial program's whole
/// run: read it only where a time is needed.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}
