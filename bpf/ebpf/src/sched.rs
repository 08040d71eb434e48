//! Scheduler signals: run-queue delay (wakeup or preemption to running) as a log2 histogram,
//! voluntary and involuntary context switches, and on-CPU time, per process.
//!
//! These are the hottest hooks bpfsight has (every context switch), so they are BTF
//! tracepoints (raw arguments, no record formatting), read at most the two words of the next
//! task they need, and keep one start timestamp per thread.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use bpfsight_common::Owner;

use crate::maps::{ONCPU_SINCE, RUNQ_START, bump_proc, store_start, take_start};
use crate::record::now_ns;

/// Byte offset of `pid` in `struct task_struct` (`tgid` is the next word), set by the loader.
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u32 = 0;
/// Byte offset of `comm` in `struct task_struct`, set by the loader.
#[unsafe(no_mangle)]
static TASK_COMM_OFFSET: u32 = 0;

/// `(pid, tgid)` of a task.
#[inline(always)]
fn task_ids(task: u64) -> (u32, u32) {
    // SAFETY: .rodata constant set by the loader.
    let off = unsafe { core::ptr::read_volatile(&TASK_PID_OFFSET) } as u64;
    // SAFETY: probe read; a failure reads as the idle task, which is skipped.
    match unsafe { bpf_probe_read_kernel((task + off) as *const u64) } {
        Ok(v) => (v as u32, (v >> 32) as u32),
        Err(_) => (0, 0),
    }
}

/// A task's `comm`.
#[inline(always)]
fn task_comm(task: u64) -> [u8; 16] {
    // SAFETY: .rodata constant set by the loader.
    let off = unsafe { core::ptr::read_volatile(&TASK_COMM_OFFSET) } as u64;
    // SAFETY: probe read of a fixed-size array.
    unsafe { bpf_probe_read_kernel((task + off) as *const [u8; 16]) }.unwrap_or([0; 16])
}

/// Marks thread `pid` runnable from now.
#[inline(always)]
fn enqueued(pid: u32, now: u64) {
    if pid != 0 {
        store_start(&RUNQ_START, pid, now);
    }
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    // sched_wakeup(struct task_struct *p)
    let (pid, _) = task_ids(ctx.arg(0));
    enqueued(pid, now_ns());
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    let (pid, _) = task_ids(ctx.arg(0));
    enqueued(pid, now_ns());
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    // sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
    //              unsigned int prev_state); `current` is still prev.
    let now = now_ns();
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    let next: u64 = ctx.arg(2);

    let since = match ONCPU_SINCE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        Some(p) => unsafe { core::mem::replace(&mut *p, now) },
        None => 0,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let prev_pid = pid_tgid as u32;
    if prev_pid != 0 {
        // Still runnable when switched out: preempted, and back on the run queue from now.
        let involuntary = preempt & 0xff != 0 || prev_state as u32 == 0;
        let owner =
            Owner { tgid: (pid_tgid >> 32) as u32, _pad: 0, comm: bpf_get_current_comm().unwrap_or([0; 16]) };
        bump_proc(&owner, |s| {
            if since != 0 {
                s.oncpu_ns += now.saturating_sub(since);
            }
            if involuntary {
                s.invol_switches += 1;
            } else {
                s.vol_switches += 1;
            }
        });
        if involuntary {
            enqueued(prev_pid, now);
        }
    }

    let (pid, tgid) = task_ids(next);
    if pid == 0 {
        return 0;
    }
    let start = take_start(&RUNQ_START, pid);
    if start == 0 {
        return 0;
    }
    let owner = Owner { tgid, _pad: 0, comm: task_comm(next) };
    bump_proc(&owner, |s| s.runq.add(now.saturating_sub(start)));
    0
}
