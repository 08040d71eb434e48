//! Block IO: latency of each request to its completion, bytes and operations, attributed to
//! the process that issued the request (at issue time), per device.
//!
//! BTF tracepoints: the request itself is the argument, so a request in flight is keyed by its
//! address (see [`IoBucket`](bpfsight_common::IoBucket)), and its start is the block layer's
//! own timestamp when it keeps one, which spares a clock read per request.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use bpfsight_common::{InflightIo, IoKey, io_kind};

use crate::maps::{bump_io, io_put, io_take};
use crate::record::{btf_field, current_owner, now_ns};

/// Byte offsets in the block layer's structs, set by the loader from the kernel's BTF.
#[unsafe(no_mangle)]
static RQ_QUEUE_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static RQ_CMD_FLAGS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static RQ_DATA_LEN_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static RQ_START_TIME_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static QUEUE_DISK_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static DISK_PART0_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static BDEV_DEV_OFFSET: u32 = 0;

/// `enum req_op`: the operation is the low byte of `cmd_flags`. These have had these values
/// since Linux 4.10.
const REQ_OP_MASK: u32 = 0xff;
const REQ_OP_READ: u32 = 0;
const REQ_OP_WRITE: u32 = 1;
const REQ_OP_FLUSH: u32 = 2;
const REQ_OP_DISCARD: u32 = 3;
const REQ_OP_SECURE_ERASE: u32 = 5;

/// The device of request `rq`, as the classic tracepoint reports it (`disk_devt`: the whole
/// disk's); 0 for a request without a disk.
#[inline(always)]
fn rq_dev(rq: u64) -> u32 {
    let q: u64 = btf_field(rq, &RQ_QUEUE_OFFSET);
    let disk: u64 = btf_field(q, &QUEUE_DISK_OFFSET);
    if disk == 0 {
        return 0;
    }
    let part0: u64 = btf_field(disk, &DISK_PART0_OFFSET);
    btf_field(part0, &BDEV_DEV_OFFSET)
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue(ctx: BtfTracePointContext) -> u32 {
    // block_rq_issue(struct request *rq)
    let rq: u64 = ctx.arg(0);
    // A discard's size is blocks released, not data moved (deleting a file on a `discard`
    // mount releases gigabytes): it is counted apart, as the kernel's disk statistics do.
    // Write-zeroes, zone management and driver commands are left out. (Zone appends, on
    // zoned devices only, do move data and are not counted yet.)
    let kind = match btf_field::<u32>(rq, &RQ_CMD_FLAGS_OFFSET) & REQ_OP_MASK {
        REQ_OP_READ => io_kind::READ,
        REQ_OP_WRITE | REQ_OP_FLUSH => io_kind::WRITE,
        REQ_OP_DISCARD | REQ_OP_SECURE_ERASE => io_kind::DISCARD,
        _ => return 0,
    };
    // Set when the request was allocated if the queue keeps IO statistics (the default) or
    // has a scheduler; 0 otherwise.
    let started: u64 = btf_field(rq, &RQ_START_TIME_OFFSET);
    let io = InflightIo {
        owner: current_owner(),
        start_ns: if started != 0 { started } else { now_ns() },
        bytes: btf_field(rq, &RQ_DATA_LEN_OFFSET),
        dev: rq_dev(rq),
        kind,
        _pad: 0,
    };
    io_put(rq, &io);
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete(ctx: BtfTracePointContext) -> u32 {
    // block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)
    let Some(io) = io_take(ctx.arg(0)) else { return 0 };
    let lat = now_ns().saturating_sub(io.start_ns);
    let error = ctx.arg::<u64>(1) as u8;
    bump_io(&IoKey { owner: io.owner, dev: io.dev, _pad: 0 }, |s| {
        s.lat.add(lat);
        match io.kind {
            io_kind::READ => {
                s.read_ops += 1;
                s.read_bytes += io.bytes as u64;
            }
            io_kind::WRITE => {
                s.write_ops += 1;
                s.write_bytes += io.bytes as u64;
            }
            _ => {
                s.discard_ops += 1;
                s.discard_bytes += io.bytes as u64;
            }
        }
        if error != 0 {
            s.errors += 1;
        }
    });
    0
}
