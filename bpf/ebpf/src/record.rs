//! Helpers every program uses: reading tracepoint records, who is running, the clock.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_task_btf, bpf_jiffies64, bpf_ktime_get_ns},
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

/// Byte offset of `tgid` in `struct task_struct`, set by the loader.
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u32 = 0;
/// Byte offset of `comm` in `struct task_struct`, set by the loader.
#[unsafe(no_mangle)]
static TASK_COMM_OFFSET: u32 = 0;

/// The running task, as a BTF pointer its fields can be loaded from directly.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: helper without preconditions; never null in program context.
    unsafe { bpf_get_current_task_btf() as u64 }
}

/// The task running now, valid only in process context.
#[inline(always)]
pub fn current_owner() -> Owner {
    task_owner(current_task())
}

/// The process `task` belongs to: its thread group and name, read with plain loads.
///
/// The helpers that return the same (`bpf_get_current_pid_tgid` and `bpf_get_current_comm`)
/// measured 110-120 ns a call together here, more than a whole trivial program: the name is
/// copied by `strscpy_pad` through several kernel calls. Two 8-byte loads read it as it is
/// stored, and it is stored NUL-padded (`__set_task_comm` pads, `fork` copies the parent's),
/// so the bytes are the ones the helper would give.
#[inline(always)]
pub fn task_owner(task: u64) -> Owner {
    let tgid: u32 = btf_field(task, &TASK_TGID_OFFSET);
    // `comm` is 16 bytes: two loads, both inside it.
    let lo: u64 = btf_field_at(task, &TASK_COMM_OFFSET, 0);
    let hi: u64 = btf_field_at(task, &TASK_COMM_OFFSET, 8);
    // SAFETY: same size, and every bit pattern is a valid `[u8; 16]`.
    let comm = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([lo, hi]) };
    Owner { tgid, _pad: 0, comm }
}

/// A field of a BTF-typed kernel pointer (a tp_btf argument), at the byte offset held in the
/// `.rodata` static `off` that the loader set from the kernel's BTF. `.rodata` is frozen, so the
/// verifier sees a constant offset, checks the load against the pointer's BTF type and turns it
/// into a guarded direct load: no helper call.
#[inline(always)]
pub fn btf_field<T: Copy>(ptr: u64, off: &u32) -> T {
    btf_field_at(ptr, off, 0)
}

/// Like [`btf_field`], `extra` bytes into the field (a part of an array member).
#[inline(always)]
pub fn btf_field_at<T: Copy>(ptr: u64, off: &u32, extra: u64) -> T {
    // SAFETY: the offset is a loader-set constant; the load is verified against BTF.
    unsafe {
        let off = core::ptr::read_volatile(off) as u64 + extra;
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

/// The kernel's tick count (`jiffies_64`, 4 ms apart at HZ=250). The verifier inlines it as a
/// load, where [`now_ns`] costs about 50 ns: event timestamps, which answers give in
/// milliseconds, use it, and user space converts it (see the collector's `TickClock`).
/// Never for durations or latencies.
#[inline(always)]
pub fn ticks() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_jiffies64() }
}
