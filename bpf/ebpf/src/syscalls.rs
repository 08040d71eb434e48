//! Syscalls: failures by syscall and errno for every call, and latency for the few calls where
//! a service waits on the network or the disk ([`SLOW_SYSCALLS`](bpfsight_common::SLOW_SYSCALLS)).
//!
//! The exit hook runs on every syscall on the machine, so it is a BTF tracepoint (the raw
//! arguments, without the cost of formatting a `raw_syscalls` record for each call), and its
//! common case (a call that succeeded and is not timed) is two comparisons and no map access.
//! Entry is hooked only for the timed calls.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use bpfsight_common::{MAX_ERRNO, SyscallKey};

use crate::maps::{bump_syscall_error, bump_syscall_lat, store_start, take_start};
use crate::record::{btf_field, current_owner, now_ns};

/// Byte offset of the syscall number in `struct pt_regs` (`orig_ax`), set by the loader.
#[unsafe(no_mangle)]
static PT_REGS_SYSCALL_NR_OFFSET: u32 = 0;

/// Whether `nr` is timed; must list the same numbers as `SLOW_SYSCALLS`.
#[inline(always)]
fn is_slow(nr: i64) -> bool {
    matches!(nr, 42 | 43 | 288 | 74 | 75 | 277)
}

/// Entry of a timed syscall. Attached to `syscalls:sys_enter_<name>` of each of the
/// [`SLOW_SYSCALLS`](bpfsight_common::SLOW_SYSCALLS) only, not to `sys_enter`: the kernel's
/// syscall-event handler skips every other call with a bit test, where a `sys_enter` program,
/// however trivial, is a BPF run on every syscall on the machine.
#[tracepoint]
pub fn sys_enter_slow(_ctx: TracePointContext) -> u32 {
    store_start(bpf_get_current_pid_tgid() as u32, now_ns());
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> u32 {
    // sys_exit(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    // The syscall number saved in `regs` (`orig_ax`).
    let nr: i64 = btf_field(ctx.arg(0), &PT_REGS_SYSCALL_NR_OFFSET);
    let failed = ret < 0 && ret >= -(MAX_ERRNO as i64);
    let slow = is_slow(nr);
    if !failed && !slow {
        return 0;
    }
    let owner = current_owner();
    if slow {
        let start = take_start(bpf_get_current_pid_tgid() as u32);
        if start != 0 {
            bump_syscall_lat(&SyscallKey { owner, nr: nr as u32, errno: 0 }, now_ns().saturating_sub(start));
        }
    }
    if failed {
        bump_syscall_error(&SyscallKey { owner, nr: nr as u32, errno: (-ret) as u32 });
    }
    0
}
