//! Process life and memory: execs, exits with their exit codes, OOM kills, page allocations.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_kernel_str_bytes,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use bpfsight_common::{Counter, Owner, ProcEvent, ProcEventKind, exit_is_kill, layout};

use crate::maps::{PROC_EVENTS, count, current_thread_slot, exit_flags};
use crate::record::{at, btf_field, current_task, task_owner, ticks};

/// Byte offset of `exit_code` in `struct task_struct`, set by the loader.
#[unsafe(no_mangle)]
static TASK_EXIT_CODE_OFFSET: u32 = 0;

const BPF_RB_NO_WAKEUP: u64 = 1;

#[inline(always)]
fn emit(kind: ProcEventKind, owner: Owner, exit_code: u32, total_vm: u64, anon_rss: u64) {
    match PROC_EVENTS.reserve::<ProcEvent>(0) {
        Some(mut slot) => {
            slot.write(ProcEvent {
                ts_ticks: ticks(),
                kind: kind as u32,
                exit_code,
                owner,
                total_vm,
                anon_rss,
            });
            slot.submit(BPF_RB_NO_WAKEUP);
        }
        None => count(Counter::ProcRingbufDrops),
    }
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    // Batched in the thread's slot (see `ThreadSlot`): its next flush happens in process
    // context, under the name the thread has then, the new image's.
    if let Some(t) = current_thread_slot() {
        t.execs = t.execs.wrapping_add(1);
    }
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    use layout::sched_process_exit as f;
    // Threads exit one by one; the process is gone when the last one does.
    if at::<u8>(&ctx, f::GROUP_DEAD) == 0 {
        return 0;
    }
    // The exiting task is current.
    let task = current_task();
    let code: u32 = btf_field(task, &TASK_EXIT_CODE_OFFSET);
    // Counted in the thread's slot: its last switch, which follows, files it under the process.
    if let Some(t) = current_thread_slot() {
        t.exit = exit_flags::EXITED
            | if exit_is_kill(code) {
                exit_flags::KILLED
            } else if code != 0 {
                exit_flags::FAILED
            } else {
                0
            };
    }
    if code != 0 {
        emit(ProcEventKind::FailedExit, task_owner(task), code, 0, 0);
    }
    0
}

#[tracepoint]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    use layout::mark_victim as f;
    let pid: i32 = at(&ctx, f::PID);
    // `comm` is a __data_loc string: (length << 16 | offset from the record start).
    let loc: u32 = at(&ctx, f::COMM_LOC);
    let mut comm = [0u8; 16];
    // SAFETY: reads at most 16 bytes of the record's string, NUL terminated.
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut comm) };
    let owner = Owner { tgid: pid as u32, _pad: 0, comm };
    emit(ProcEventKind::OomKill, owner, 0, at(&ctx, f::TOTAL_VM), at(&ctx, f::ANON_RSS));
    0
}

#[btf_tracepoint(function = "mm_page_alloc")]
pub fn mm_page_alloc(ctx: BtfTracePointContext) -> u32 {
    // mm_page_alloc(struct page *page, unsigned int order, gfp_t gfp_flags, int migratetype)
    let order: u32 = ctx.arg(1);
    // Batched in the thread's slot with its scheduler counters (see `ThreadSlot`).
    if let Some(t) = current_thread_slot() {
        t.page_allocs += 1u32 << (order & 15);
    }
    0
}
