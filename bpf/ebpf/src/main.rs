//! bpfsight's kernel side: tracepoint programs that aggregate TCP connection health per
//! (process, peer) in per-CPU maps, and emit discrete events through a ring buffer.
//!
//! Built with `cargo xtask build-bpf`; the object is committed at `bpf/bpfsight.bpf.o`.
#![no_std]
#![no_main]

mod baseline;
mod maps;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
