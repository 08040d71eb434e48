//! Syscalls: failures by syscall and errno for every call, and latency for the few calls where
//! a service waits on the network or the disk ([`SLOW_SYSCALLS`](bpfsight_common::SLOW_SYSCALLS)).
//!
//! Both hooks run on every syscall on the machine, so the common case (a call that succeeded
//! and is not timed) is two comparisons and no map access.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};
use bpfsight_common::{MAX_ERRNO, SyscallKey, layout::raw_syscalls as f};

use crate::maps::{SYSCALL_START, bump_syscall_error, bump_syscall_lat, store_start, take_start};
use crate::record::{at, current_owner, now_ns};

/// Whether `nr` is timed; must list the same numbers as `SLOW_SYSCALLS`.
#[inline(always)]
fn is_slow(nr: i64) -> bool {
    matches!(nr, 42 | 43 | 288 | 74 | 75 | 277)
}

#[tracepoint]
pub fn sys_enter(ctx: TracePointContext) -> u32 {
    let nr: i64 = at(&ctx, f::ID);
    if !is_slow(nr) {
        return 0;
    }
    store_start(&SYSCALL_START, bpf_get_current_pid_tgid() as u32, now_ns());
    0
}

#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    let nr: i64 = at(&ctx, f::ID);
    let ret: i64 = at(&ctx, f::RET);
    let failed = ret < 0 && ret >= -(MAX_ERRNO as i64);
    let slow = is_slow(nr);
    if !failed && !slow {
        return 0;
    }
    let owner = current_owner();
    if slow {
        let start = take_start(&SYSCALL_START, bpf_get_current_pid_tgid() as u32);
        if start != 0 {
            bump_syscall_lat(&SyscallKey { owner, nr: nr as u32, errno: 0 }, now_ns().saturating_sub(start));
        }
    }
    if failed {
        bump_syscall_error(&SyscallKey { owner, nr: nr as u32, errno: (-ret) as u32 });
    }
    0
}
