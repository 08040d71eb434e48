//! Trivial counting programs on the same hooks as the real ones. The benchmark attaches them
//! next to the real programs to measure the floor cost of a tracepoint program on this machine.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use crate::maps::BASELINE;

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

#[tracepoint]
pub fn baseline_block_rq_issue(_ctx: TracePointContext) -> u32 {
    tick(15)
}

#[tracepoint]
pub fn baseline_block_rq_complete(_ctx: TracePointContext) -> u32 {
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
