//! bpfsight's kernel side: tracepoint programs that count TCP connection health per socket
//! (in the socket table, which user space sums by process and peer every second), and
//! scheduler, block IO, syscall, memory and process-life signals per process in per-CPU maps,
//! and emit discrete events through ring buffers.
//!
//! Built with `cargo xtask build-bpf`; the object is committed at `bpf/bpfsight.bpf.o`.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod baseline;
mod block;
mod maps;
mod process;
mod record;
mod sched;
mod syscalls;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
