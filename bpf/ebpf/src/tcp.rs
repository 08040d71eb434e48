//! TCP connection health: opens, closes, failed connects, resets, retransmits and sends,
//! attributed to the process that owns the socket.
//!
//! Most of these tracepoints fire in softirq context, where `current` is whichever task the
//! CPU happened to be running. Attribution therefore goes through `SOCKS`, filled in process
//! context (connect, listen, first send) and from `LISTENERS` for accepted connections. The
//! events of a tracked socket are counted in its own `SOCKS` way (`SockCounts`), which user
//! space empties every poll: an atomic add where a hashed aggregate would cost more than a
//! whole trivial program. Only sockets we never saw go to `CONN_STATS` directly.
//!
//! Cost matters: record fields are read with plain loads from the context (the verifier
//! bounds-checks them), never with `bpf_probe_read_kernel`, and the per-send path touches one
//! per-CPU slot found by address arithmetic.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use bpfsight_common::{
    AF_INET, AF_INET6, ConnKey, Counter, ListenKey, Owner, SendSlot, SendStats, SockCounts, SockState,
    TcpEvent, TcpEventKind, layout, sock_flags,
};

use crate::maps::{
    EVENTS, LISTENERS, SEND_STATS, add, add64, bump, count, send_slot_here, sock_destroyed, sock_get,
    sock_put,
};
use crate::record::{at, current_owner, now_ns, ticks};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const IPPROTO_TCP: u16 = 6;
const BPF_RB_NO_WAKEUP: u64 = 1;

/// An IPv4 address from the record, as the widest aligned loads the offset allows (array
/// copies would become a moving pointer, which the verifier refuses on the context).
#[inline(always)]
fn addr4(ctx: &TracePointContext, off: usize) -> [u8; 4] {
    if off % 4 == 0 {
        at::<u32>(ctx, off).to_ne_bytes()
    } else {
        let (a, b) = (at::<u16>(ctx, off).to_ne_bytes(), at::<u16>(ctx, off + 2).to_ne_bytes());
        [a[0], a[1], b[0], b[1]]
    }
}

/// An IPv4 address in the 16-byte form the maps use. Built from words, not bytes: zeroing a
/// byte array compiles to a byte-by-byte `memset` loop in BPF.
#[inline(always)]
fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    // SAFETY: same size, and every bit pattern is a valid `[u8; 16]`.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>([u32::from_ne_bytes(a), 0, 0, 0]) }
}

/// An IPv6 address from the record (see [`addr4`]).
#[inline(always)]
fn addr16(ctx: &TracePointContext, off: usize) -> [u8; 16] {
    // SAFETY (all three): same size, and every bit pattern is a valid `[u8; 16]`.
    if off % 8 == 0 {
        let w: [u64; 2] = [at(ctx, off), at(ctx, off + 8)];
        unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(w) }
    } else if off % 4 == 0 {
        let w: [u32; 4] = [at(ctx, off), at(ctx, off + 4), at(ctx, off + 8), at(ctx, off + 12)];
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
    } else {
        let mut w = [0u16; 8];
        for (i, x) in w.iter_mut().enumerate() {
            *x = at(ctx, off + i * 2);
        }
        unsafe { core::mem::transmute::<[u16; 8], [u8; 16]>(w) }
    }
}

/// Reads the address for `family` from the v4 or the v6 field.
#[inline(always)]
fn addr(ctx: &TracePointContext, family: u16, v4: usize, v6: usize) -> [u8; 16] {
    if family == AF_INET6 { addr16(ctx, v6) } else { v4_in_16(addr4(ctx, v4)) }
}

#[inline(always)]
fn key_for(owner: &Owner, family: u16, peer_port: u16, peer_addr: [u8; 16]) -> ConnKey {
    ConnKey { tgid: owner.tgid, family, peer_port, peer_addr, comm: owner.comm }
}

/// The aggregation key of an event on a socket we never saw: `[unattributed]` with the peer
/// from the record.
#[inline(always)]
fn unattributed(family: u16, dport: u16, daddr: [u8; 16]) -> ConnKey {
    key_for(&Owner::UNKNOWN, family, dport, daddr)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    kind: TcpEventKind,
    owner: Owner,
    family: u16,
    local_port: u16,
    peer_port: u16,
    local_addr: [u8; 16],
    peer_addr: [u8; 16],
) {
    match EVENTS.reserve::<TcpEvent>(0) {
        Some(mut slot) => {
            slot.write(TcpEvent {
                ts_ticks: ticks(),
                kind: kind as u32,
                owner,
                family,
                local_port,
                peer_port,
                _pad: 0,
                local_addr,
                peer_addr,
            });
            // User space drains every 100 ms; a wakeup per event would cost more than the event.
            slot.submit(BPF_RB_NO_WAKEUP);
        }
        None => count(Counter::RingbufDrops),
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    use layout::inet_sock_set_state as f;
    if at::<u16>(&ctx, f::PROTOCOL) != IPPROTO_TCP {
        return 0;
    }
    let skaddr: u64 = at(&ctx, f::SKADDR);
    let old: i32 = at(&ctx, f::OLDSTATE);
    let new: i32 = at(&ctx, f::NEWSTATE);
    let family: u16 = at(&ctx, f::FAMILY);
    let sport: u16 = at(&ctx, f::SPORT);

    // Counts go into the socket's own way (see `SockCounts`): no aggregate map on this path
    // but for sockets we never saw.
    match (old, new) {
        // connect(): process context, `current` is the owner.
        (TCP_CLOSE, TCP_SYN_SENT) => {
            let st = SockState {
                owner: current_owner(),
                family,
                peer_port: at(&ctx, f::DPORT),
                flags: sock_flags::ACTIVE,
                peer_addr: addr(&ctx, family, f::DADDR, f::DADDR_V6),
                // The SYN's time until ESTABLISHED, for the handshake latency.
                opened_ns: now_ns(),
                counts: SockCounts::default(),
            };
            sock_put(skaddr, &st);
        }
        // listen(): process context.
        (_, TCP_LISTEN) => {
            let _ = LISTENERS.insert(&ListenKey { family, port: sport }, &current_owner(), 0);
        }
        (TCP_LISTEN, TCP_CLOSE) => {
            let _ = LISTENERS.remove(&ListenKey { family, port: sport });
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            if let Some(st) = sock_get(skaddr) {
                st.flags |= sock_flags::ESTABLISHED;
                let now = now_ns();
                if st.opened_ns != 0 {
                    // User space files it in the owner's histogram.
                    add64(&mut st.counts.handshake_ns, now.saturating_sub(st.opened_ns).max(1));
                }
                st.opened_ns = now;
                add(&mut st.counts.opened_active, 1);
            }
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            // SAFETY: read-only lookup copied out.
            let owner = match unsafe { LISTENERS.get(&ListenKey { family, port: sport }) } {
                Some(o) => *o,
                None => Owner::UNKNOWN,
            };
            let st = SockState {
                owner,
                family,
                peer_port: 0,
                flags: sock_flags::ESTABLISHED,
                peer_addr: addr(&ctx, family, f::DADDR, f::DADDR_V6),
                opened_ns: now_ns(),
                counts: SockCounts { opened_passive: 1, ..SockCounts::default() },
            };
            sock_put(skaddr, &st);
        }
        (TCP_SYN_SENT, TCP_CLOSE) => {
            let dport: u16 = at(&ctx, f::DPORT);
            let local = addr(&ctx, family, f::SADDR, f::SADDR_V6);
            match sock_get(skaddr) {
                Some(st) => {
                    add(&mut st.counts.failed_connects, 1);
                    // Kept: a reconnect of this socket files the counts first (`sock_put`).
                    st.flags |= sock_flags::CLOSED;
                    emit(TcpEventKind::FailedConnect, st.owner, family, sport, dport, local, st.peer_addr);
                }
                None => {
                    let key = unattributed(family, dport, addr(&ctx, family, f::DADDR, f::DADDR_V6));
                    bump(&key, |s| s.failed_connects += 1);
                    emit(
                        TcpEventKind::FailedConnect,
                        Owner::UNKNOWN,
                        family,
                        sport,
                        dport,
                        local,
                        key.peer_addr,
                    );
                }
            }
        }
        (_, TCP_CLOSE) => {
            if let Some(st) = sock_get(skaddr) {
                // Only connections whose open we counted are counted closed, so that
                // opened - closed is exactly the number still established.
                if st.flags & sock_flags::ESTABLISHED != 0
                    && st.flags & sock_flags::CLOSED == 0
                    && st.opened_ns != 0
                {
                    st.flags |= sock_flags::CLOSED;
                    add64(&mut st.counts.duration_ns, now_ns().saturating_sub(st.opened_ns));
                    add(&mut st.counts.closed, 1);
                }
                // Kept until tcp_destroy_sock: an abortive close sends its RST after this.
            }
        }
        _ => {}
    }
    0
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    sock_destroyed(at(&ctx, layout::tcp_receive_reset::SKADDR));
    // The send counters are left for user space, which reads the final counts (and, from the
    // destroyed way, whose they were) before freeing them.
    0
}

/// Byte offset of `tcp_gso_segs` in `struct sk_buff` (via `cb`), set by the loader.
#[unsafe(no_mangle)]
static SKB_TCP_GSO_SEGS_OFFSET: u32 = 0;

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    use layout::tcp_retransmit_skb as f;
    // One event per retransmitted skb, which may carry several segments (a TSO burst, a tail
    // loss probe of a large write): count what the kernel counts in TcpRetransSegs.
    let skb: u64 = at(&ctx, f::SKBADDR);
    // SAFETY: .rodata constant set by the loader; probe read of the skb being retransmitted.
    let off = unsafe { core::ptr::read_volatile(&SKB_TCP_GSO_SEGS_OFFSET) } as u64;
    let segs = unsafe { bpf_probe_read_kernel((skb + off) as *const u16) }.unwrap_or(1).max(1);
    match sock_get(at(&ctx, f::SKADDR)) {
        Some(st) => add(&mut st.counts.retransmits, segs as u32),
        None => {
            let family: u16 = at(&ctx, f::FAMILY);
            let key = unattributed(family, at(&ctx, f::DPORT), addr(&ctx, family, f::DADDR, f::DADDR_V6));
            bump(&key, |s| s.retransmits += segs as u64);
        }
    }
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    use layout::tcp_receive_reset as f;
    let skaddr: u64 = at(&ctx, f::SKADDR);
    let family: u16 = at(&ctx, f::FAMILY);
    let sport: u16 = at(&ctx, f::SPORT);
    let dport: u16 = at(&ctx, f::DPORT);
    let peer = addr(&ctx, family, f::DADDR, f::DADDR_V6);
    let owner = match sock_get(skaddr) {
        Some(st) => {
            add(&mut st.counts.resets_received, 1);
            // A reset before ESTABLISHED answers the connect's SYN: the peer refused it (the
            // connect's failure follows, SYN_SENT -> CLOSE). Counted apart so that a refusal
            // is one error, not two.
            if st.flags & sock_flags::ESTABLISHED == 0 {
                add(&mut st.counts.refused_connects, 1);
            }
            st.owner
        }
        None => {
            // Sockets we never saw are ones opened before we started, or accepted ones whose
            // listener we missed: established, so not a refusal.
            bump(&unattributed(family, dport, peer), |s| s.resets_received += 1);
            Owner::UNKNOWN
        }
    };
    let local = addr(&ctx, family, f::SADDR, f::SADDR_V6);
    emit(TcpEventKind::ResetReceived, owner, family, sport, dport, local, peer);
    0
}

/// Decodes a `sockaddr_in`/`sockaddr_in6` copied into the record: (family, port, address).
#[inline(always)]
fn sockaddr(ctx: &TracePointContext, off: usize) -> (u16, u16, [u8; 16]) {
    let family: u16 = at(ctx, off);
    let port = u16::from_be(at::<u16>(ctx, off + 2));
    let addr = if family == AF_INET6 { addr16(ctx, off + 8) } else { v4_in_16(addr4(ctx, off + 4)) };
    (family, port, addr)
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    use layout::tcp_send_reset as f;
    let skaddr: u64 = at(&ctx, f::SKADDR);
    let (family, sport, local) = sockaddr(&ctx, f::SADDR);
    let (_, dport, peer) = sockaddr(&ctx, f::DADDR);
    let owner = match sock_get(skaddr) {
        Some(st) => {
            add(&mut st.counts.resets_sent, 1);
            st.owner
        }
        None => {
            // With no socket at all (a segment that matched none), the peer's port is whatever
            // ephemeral port it used: keep only its address.
            let (owner, port) = if skaddr == 0 { (Owner::NO_SOCKET, 0) } else { (Owner::UNKNOWN, dport) };
            bump(&key_for(&owner, family, port, peer), |s| s.resets_sent += 1);
            owner
        }
    };
    emit(TcpEventKind::ResetSent, owner, family, sport, dport, local, peer);
    0
}

/// `struct sock_common` prefix: `skc_daddr` at 0, `skc_dport` (network order) at 12, `skc_num`
/// (local port, host order) at 14, `skc_family` at 16. This part of the layout has not moved in
/// two decades, unlike the IPv6 fields further in.
const SKC_DADDR: usize = 0;
const SKC_DPORT: usize = 12;
const SKC_NUM: usize = 14;
const SKC_FAMILY: usize = 16;

/// Byte offset of `sk_protocol` in `struct sock`, set by the loader from the kernel's BTF.
#[unsafe(no_mangle)]
static SK_PROTOCOL_OFFSET: u32 = 0;

/// Counts data sent per socket. The hottest program: it runs on every `sendmsg` of every
/// socket, so it is a raw tracepoint (raw arguments, no record formatting; unlike a BTF
/// tracepoint's, the socket pointer is a plain number the program may hash) and its common
/// path is the socket's slot on this CPU in [`SEND_SLOTS`](crate::maps::SEND_SLOTS): an
/// array access and a compare, no hashing of keys or walking of buckets.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> u32 {
    // sock_send_length(struct sock *sk, int ret, int flags)
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    if ret <= 0 || sk == 0 {
        return 0;
    }
    let slot = match send_slot_here(sk) {
        Some(s) if s.sk == sk => {
            s.sends += 1;
            s.bytes += ret as u64;
            return 0;
        }
        other => other,
    };
    // The slot is another socket's: this one is counted in the hash, if it is TCP at all.
    if let Some(v) = SEND_STATS.get_ptr_mut(&sk) {
        // SAFETY: per-CPU value, only this CPU writes it.
        let v = unsafe { &mut *v };
        v.sends += 1;
        v.bytes += ret as u64;
        return 0;
    }
    send_slow_path(sk, ret, slot);
    0
}

/// First send of a socket on this CPU: is it TCP over IP, and do we know its owner?
/// (Inlined: a separate function would carry a mangled, build-dependent symbol name into the
/// committed object.)
#[inline(always)]
fn send_slow_path(sk: u64, ret: i32, slot: Option<&mut SendSlot>) {
    // SAFETY: probe reads of kernel memory; failures skip the socket.
    let Ok(family) = (unsafe { bpf_probe_read_kernel((sk as usize + SKC_FAMILY) as *const u16) }) else {
        return;
    };
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    // SAFETY: a .rodata constant the loader set.
    let proto_off = unsafe { core::ptr::read_volatile(&SK_PROTOCOL_OFFSET) } as usize;
    let Ok(proto) = (unsafe { bpf_probe_read_kernel((sk as usize + proto_off) as *const u16) }) else {
        return;
    };
    if proto != IPPROTO_TCP {
        return;
    }
    match slot {
        Some(s) if s.sk == 0 => {
            // The socket last, so that user space, which frees a slot counters first, never
            // sees this socket with the previous holder's counts.
            // SAFETY: a map value this CPU owns.
            unsafe {
                core::ptr::write_volatile(&mut s.sends, 1);
                core::ptr::write_volatile(&mut s.bytes, ret as u64);
                core::ptr::write_volatile(&mut s.sk, sk);
            }
        }
        _ => {
            let first = SendStats { sends: 1, bytes: ret as u64 };
            if SEND_STATS.insert(&sk, &first, 0).is_err() {
                count(Counter::SendStatsFull);
            }
        }
    }
    if sock_get(sk).is_none() {
        learn_owner(sk, family);
    }
}
/// A socket from before bpfsight started, seen sending in process context: remember its
/// owner so that its retransmits and resets are attributed too.
#[inline(always)]
fn learn_owner(sk: u64, family: u16) {
    let mut peer_addr = v4_in_16([0; 4]);
    let mut peer_port = 0u16;
    if family == AF_INET {
        // SAFETY: probe reads of kernel memory; failure leaves zeros.
        if let Ok(a) = unsafe { bpf_probe_read_kernel((sk as usize + SKC_DADDR) as *const [u8; 4]) } {
            peer_addr = v4_in_16(a);
        }
        if let Ok(p) = unsafe { bpf_probe_read_kernel((sk as usize + SKC_DPORT) as *const u16) } {
            peer_port = u16::from_be(p);
        }
    }
    // An accepted connection (its local port is a listener's): the remote port is ephemeral.
    // SAFETY: probe read of kernel memory.
    if let Ok(local) = unsafe { bpf_probe_read_kernel((sk as usize + SKC_NUM) as *const u16) } {
        // SAFETY: read-only presence check.
        if unsafe { LISTENERS.get(&ListenKey { family, port: local }) }.is_some() {
            peer_port = 0;
        }
    }
    let st = SockState {
        owner: current_owner(),
        family,
        peer_port,
        flags: sock_flags::ESTABLISHED,
        peer_addr,
        // Open not seen: neither its close nor its duration is counted.
        opened_ns: 0,
        counts: SockCounts::default(),
    };
    sock_put(sk, &st);
}
