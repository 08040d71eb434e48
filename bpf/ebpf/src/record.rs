//! Helpers every program uses: reading tracepoint records, who is running, the clock.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
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
    Owner {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
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

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}
