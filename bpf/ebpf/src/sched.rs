//! Scheduler signals: run-queue delay (runnable to running) as a log2 histogram, voluntary and
//! involuntary context switches, and on-CPU time, per process.
//!
//! `sched_switch` is the hottest hook bpfsight has, so it does the least it can: it never
//! timestamps anything (no wakeup hooks, no clock reads). The kernel already accounts every
//! task's wait on the run queue (`sched_info.run_delay`, summed at each arrival on a CPU) and
//! CPU time (`se.sum_exec_runtime`); at each switch-out the program reads those fields of the
//! outgoing task straight from its `task_struct` (a BTF pointer: plain loads, no helper calls)
//! and turns the growth since the task's previous switch-out into one run-queue sample. It
//! then batches in the thread's [`ThreadSlot`], which reaches the per-process counters now and
//! then.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use bpfsight_common::{HIST_BUCKETS, hist_bucket};

use crate::maps::{FLUSH_MAX_SAMPLES, FLUSH_NS, claim_slot, flush_slot, thread_slot};
use crate::record::{btf_field as field, task_owner};

/// Byte offset of `pid` (the thread id) in `struct task_struct`, set by the loader.
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u32 = 0;
/// Byte offset of `sched_info.run_delay` in `struct task_struct`, set by the loader.
#[unsafe(no_mangle)]
static TASK_RUN_DELAY_OFFSET: u32 = 0;
/// Byte offset of `sched_info.pcount` in `struct task_struct`, set by the loader.
#[unsafe(no_mangle)]
static TASK_PCOUNT_OFFSET: u32 = 0;
/// Byte offset of `sched_info.last_arrival` in `struct task_struct`, set by the loader.
#[unsafe(no_mangle)]
static TASK_LAST_ARRIVAL_OFFSET: u32 = 0;
/// Byte offset of `se.sum_exec_runtime` in `struct task_struct`, set by the loader.
#[unsafe(no_mangle)]
static TASK_SUM_EXEC_OFFSET: u32 = 0;

/// `TASK_DEAD` in `task_struct::__state`: the task's last switch.
const TASK_DEAD: u64 = 0x80;

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    // sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
    //              unsigned int prev_state); `current` is still prev.
    let prev: u64 = ctx.arg(1);
    let tid: u32 = field(prev, &TASK_PID_OFFSET);
    // The idle task belongs to no process.
    if tid == 0 {
        return 0;
    }
    let Some(t) = thread_slot(tid) else { return 0 };
    if t.tid != tid {
        claim_slot(t, tid, task_owner(prev));
    }
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    let run_delay: u64 = field(prev, &TASK_RUN_DELAY_OFFSET);
    let pcount = field::<u64>(prev, &TASK_PCOUNT_OFFSET) as u32;
    let arrival: u64 = field(prev, &TASK_LAST_ARRIVAL_OFFSET);

    if t.flushed_at == 0 {
        // First switch-out seen for this thread: note where its counters stand.
        t.last_exec = field(prev, &TASK_SUM_EXEC_OFFSET);
        t.flushed_at = arrival | 1;
    } else {
        // One arrival on a CPU since the last switch-out, normally; more if switches were
        // missed, then their waits count as one sample of their mean.
        let arrivals = pcount.wrapping_sub(t.last_pcount);
        if arrivals != 0 {
            let waited = run_delay.saturating_sub(t.last_run_delay);
            t.runq_count += arrivals;
            t.runq_sum_ns += waited;
            let b = hist_bucket(waited / arrivals as u64);
            if b < HIST_BUCKETS {
                t.runq_buckets[b] += arrivals as u16;
            }
        }
    }
    t.last_run_delay = run_delay;
    t.last_pcount = pcount;
    // Still runnable when switched out: preempted (a time slice ran out or a task with a
    // better claim woke up).
    if preempt & 0xff != 0 || prev_state as u32 == 0 {
        t.invol_switches += 1;
    } else {
        t.vol_switches += 1;
    }

    let dead = prev_state & TASK_DEAD != 0;
    if dead || arrival.saturating_sub(t.flushed_at) >= FLUSH_NS || t.runq_count >= FLUSH_MAX_SAMPLES {
        let exec: u64 = field(prev, &TASK_SUM_EXEC_OFFSET);
        // The thread is current: its name now is the one to file the batch under.
        t.set_owner(&task_owner(prev));
        flush_slot(t, exec.saturating_sub(t.last_exec));
        t.last_exec = exec;
        t.flushed_at = arrival | 1;
        if dead {
            t.tid = 0;
        }
    }
    0
}
