//! Block IO: latency from issue to completion, bytes and operations, attributed to the process
//! that issued the request (at issue time), per device.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use bpfsight_common::{InflightIo, IoKey, IoReqKey, layout::block_rq as f};

use crate::maps::{bump_io, io_put, io_take};
use crate::record::{at, current_owner, now_ns};

#[inline(always)]
fn req_key(ctx: &TracePointContext) -> IoReqKey {
    IoReqKey { dev: at(ctx, f::DEV), used: 1, sector: at(ctx, f::SECTOR) }
}

#[tracepoint]
pub fn block_rq_issue(ctx: TracePointContext) -> u32 {
    // rwbs starts with 'W' for writes, 'F' for flushes ("FWS"), 'R' for reads.
    let op = at::<u8>(&ctx, f::RWBS);
    let io = InflightIo {
        owner: current_owner(),
        issued_ns: now_ns(),
        bytes: at(&ctx, f::ISSUE_BYTES),
        write: (op == b'W' || op == b'F') as u32,
    };
    io_put(&req_key(&ctx), &io);
    0
}

#[tracepoint]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    let key = req_key(&ctx);
    let Some(io) = io_take(&key) else { return 0 };
    let lat = now_ns().saturating_sub(io.issued_ns);
    let error: i32 = at(&ctx, f::COMPLETE_ERROR);
    bump_io(&IoKey { owner: io.owner, dev: key.dev, _pad: 0 }, |s| {
        s.lat.add(lat);
        if io.write != 0 {
            s.write_ops += 1;
            s.write_bytes += io.bytes as u64;
        } else {
            s.read_ops += 1;
            s.read_bytes += io.bytes as u64;
        }
        if error != 0 {
            s.errors += 1;
        }
    });
    0
}
