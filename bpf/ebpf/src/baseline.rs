//! Trivial counting programs on the same hooks as the real ones. The benchmark attaches them
//! next to the real programs to measure the floor cost of a tracepoint program on this machine.
//! With them, cost probes on the TCP state hook that do the parts of a real program's work one
//! by one, so the benchmark can show what each part costs here.

use aya_ebpf::{
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use bpfsight_common::{Owner, maps::PROBE_LOG_ENTRIES};

use crate::maps::BASELINE;
use crate::record::{at, current_owner, now_ns};

#[inline(always)]
fn tick(slot: u32) -> u32 {
    if let Some(p) = BASELINE.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
    0
}

#[tracepoint]
pub fn baseline_inet_sock_set_state(_ctx: TracePointContext) -> u32 {
    tick(0)
}

#[tracepoint]
pub fn baseline_tcp_retransmit_skb(_ctx: TracePointContext) -> u32 {
    tick(1)
}

#[tracepoint]
pub fn baseline_tcp_receive_reset(_ctx: TracePointContext) -> u32 {
    tick(2)
}

#[tracepoint]
pub fn baseline_tcp_send_reset(_ctx: TracePointContext) -> u32 {
    tick(3)
}

#[tracepoint]
pub fn baseline_tcp_destroy_sock(_ctx: TracePointContext) -> u32 {
    tick(4)
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn baseline_sock_send_length(_ctx: RawTracePointContext) -> u32 {
    tick(5)
}

#[tracepoint]
pub fn baseline_tp_sock_send_length(_ctx: TracePointContext) -> u32 {
    tick(6)
}

#[btf_tracepoint(function = "sched_switch")]
pub fn baseline_sched_switch(_ctx: BtfTracePointContext) -> u32 {
    tick(10)
}

#[tracepoint]
pub fn baseline_sched_process_exec(_ctx: TracePointContext) -> u32 {
    tick(11)
}

#[tracepoint]
pub fn baseline_sched_process_exit(_ctx: TracePointContext) -> u32 {
    tick(12)
}

#[tracepoint]
pub fn baseline_mark_victim(_ctx: TracePointContext) -> u32 {
    tick(13)
}

#[btf_tracepoint(function = "mm_page_alloc")]
pub fn baseline_mm_page_alloc(_ctx: BtfTracePointContext) -> u32 {
    tick(14)
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn baseline_block_rq_issue(_ctx: BtfTracePointContext) -> u32 {
    tick(15)
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn baseline_block_rq_complete(_ctx: BtfTracePointContext) -> u32 {
    tick(16)
}

#[tracepoint]
pub fn baseline_sys_enter_slow(_ctx: TracePointContext) -> u32 {
    tick(17)
}

#[btf_tracepoint(function = "sys_exit")]
pub fn baseline_sys_exit(_ctx: BtfTracePointContext) -> u32 {
    tick(18)
}

/// A TCP state change as the cost probes copy it: about what a program that logged every
/// transition for user space to aggregate would write.
#[repr(C)]
pub struct ProbeEntry {
    sk: u64,
    ts: u64,
    owner: Owner,
    states: u32,
    ports: u32,
    addr: u64,
}

/// Where the cost probes write, a ring of entries per CPU (sized by the loader: one entry
/// unless the benchmark attaches the probes).
#[map(name = "PROBE_LOG")]
pub static PROBE_LOG: PerCpuArray<ProbeEntry> = PerCpuArray::with_max_entries(PROBE_LOG_ENTRIES, 0);

/// The cost probes' shared part: a TCP transition's fields copied into the next [`PROBE_LOG`]
/// entry, with the running task's owner and the time when asked. What each adds over the one
/// before is what that part costs a real program on this machine.
#[inline(always)]
fn probe(ctx: &TracePointContext, slot: u32, owner: bool, clock: bool) -> u32 {
    use bpfsight_common::layout::inet_sock_set_state as f;
    if at::<u16>(ctx, f::PROTOCOL) != 6 {
        return 0;
    }
    let Some(cursor) = BASELINE.get_ptr_mut(slot) else { return 0 };
    // SAFETY: per-CPU values, only this CPU writes them.
    let e = unsafe {
        let i = *cursor;
        *cursor = i + 1;
        match PROBE_LOG.get_ptr_mut((i % PROBE_LOG_ENTRIES as u64) as u32) {
            Some(e) => &mut *e,
            None => return 0,
        }
    };
    e.sk = at(ctx, f::SKADDR);
    e.states = (at::<u32>(ctx, f::OLDSTATE) << 8) | at::<u32>(ctx, f::NEWSTATE);
    e.ports = at::<u32>(ctx, f::SPORT);
    e.addr = at::<u32>(ctx, f::DADDR) as u64 | ((at::<u16>(ctx, f::FAMILY) as u64) << 32);
    if owner {
        e.owner = current_owner();
    }
    if clock {
        e.ts = now_ns();
    }
    0
}

/// Cost probe: copy a transition's fields.
#[tracepoint]
pub fn probe_copy(ctx: TracePointContext) -> u32 {
    probe(&ctx, 20, false, false)
}

/// Cost probe: copy a transition's fields and who runs.
#[tracepoint]
pub fn probe_copy_owner(ctx: TracePointContext) -> u32 {
    probe(&ctx, 21, true, false)
}

/// Cost probe: copy a transition's fields, who runs, and read the clock once.
#[tracepoint]
pub fn probe_copy_owner_clock(ctx: TracePointContext) -> u32 {
    probe(&ctx, 22, true, true)
}
