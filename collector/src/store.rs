//! Bounded, per-service history of TCP and whole-host counters, and a bounded log of discrete
//! events.
//!
//! Each service keeps three rings per signal family: one-second slots for 16 minutes,
//! ten-second slots for 6 hours and one-minute slots for 7 days. Slots exist only for periods
//! with activity. TCP slots keep at most [`MAX_PEERS_PER_SLOT`] peers (extra peers are summed
//! into [`Peer::OTHER`]), host slots at most a few syscall-error pairs and devices (see
//! [`crate::host`]). At most [`MAX_SERVICES`] services are kept (the least recently active is
//! evicted) and [`MAX_EVENTS`] events.
//!
//! Memory budget, measured by `history_memory_budget` below for a service active every
//! second with a typical run-queue histogram, a syscall-error pair and two TCP peers: about
//! 50 bytes per slot, since only the newest slot of each ring is a struct and older ones are
//! packed (see [`Ring`]). Such a service costs about 0.1 MiB for the first 15 minutes,
//! 0.35 MiB at 6 hours and 1.3 MiB at the full 7 days (all three rings full). Services active
//! only now and then cost a fraction of that: slots exist only for periods with activity. All
//! history together is capped at [`MAX_HISTORY_SLOTS`]. Past it the oldest one-second slots of
//! every service go first (down to the last [`MIN_FINE_SECS`]), then the oldest ten-second
//! slots (down to [`MIN_MID_SECS`]); a window reaching back into trimmed seconds reads them
//! from the next coarser ring, so its totals stay whole and only its edges get coarser. Only
//! when that is not enough are the least recently active services evicted.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::host::HostCounters;
use crate::service::{IdentitySource, Pid, ServiceId};
use crate::tcp::{Peer, TcpCounters};
use crate::window::Window;

/// One-second slots kept per service (16 minutes: the 15-minute window plus slack).
pub const FINE_SLOTS: u64 = 16 * 60;
/// Ten-second slots kept per service (6 hours).
pub const MID_SLOTS: u64 = 6 * 360;
/// One-minute slots kept per service (7 days).
pub const COARSE_SLOTS: u64 = 7 * 24 * 60;
/// Peers kept per slot before the rest are summed into [`Peer::OTHER`].
pub const MAX_PEERS_PER_SLOT: usize = 16;
/// Services kept.
pub const MAX_SERVICES: usize = 2048;
/// Discrete events kept.
pub const MAX_EVENTS: usize = 10_000;
/// Pids remembered per service.
pub const MAX_PIDS_PER_SERVICE: usize = 64;
/// Slots kept over all services, resolutions and signal families (about 12 MB at the ~40
/// bytes of a packed host slot; TCP slots with many peers weigh more); past it the oldest fine
/// slots are trimmed first (see the module docs).
pub const MAX_HISTORY_SLOTS: usize = 300_000;
/// One-second history every service keeps however short memory is.
pub const MIN_FINE_SECS: u64 = 60;
/// Ten-second history every service keeps however short memory is.
pub const MIN_MID_SECS: u64 = 3600;

/// TCP counters of one time slot, in total and per peer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct TcpSlot {
    total: TcpCounters,
    /// Packed as (address, port) rather than `Peer`'s "addr:port" text.
    #[serde(with = "packed_peers")]
    peers: Vec<(Peer, TcpCounters)>,
}

/// `(Peer, counters)` pairs as `((IpAddr, port), counters)`: a few bytes per address in a
/// packed slot, and no text to parse back.
mod packed_peers {
    use super::{Peer, TcpCounters};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::IpAddr;

    pub(super) fn serialize<S: Serializer>(peers: &[(Peer, TcpCounters)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(peers.iter().map(|(p, c)| ((p.addr, p.port), c)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Peer, TcpCounters)>, D::Error> {
        let v = Vec::<((IpAddr, u16), TcpCounters)>::deserialize(d)?;
        Ok(v.into_iter().map(|((addr, port), c)| (Peer { addr, port }, c)).collect())
    }
}

impl TcpSlot {
    fn add(&mut self, peer: Peer, d: TcpCounters) {
        self.total += d;
        if let Some((_, c)) = self.peers.iter_mut().find(|(p, _)| *p == peer) {
            *c += d;
        } else if self.peers.len() < MAX_PEERS_PER_SLOT {
            self.peers.push((peer, d));
        } else if let Some((_, c)) = self.peers.iter_mut().find(|(p, _)| *p == Peer::OTHER) {
            *c += d;
        } else {
            // Make room for OTHER by folding the last peer into it.
            let (_, last) = self.peers.pop().expect("cap > 0");
            let mut other = last;
            other += d;
            self.peers.push((Peer::OTHER, other));
        }
    }
}

impl Slot for TcpSlot {
    fn heap_bytes(&self) -> usize {
        self.peers.capacity() * std::mem::size_of::<(Peer, TcpCounters)>()
    }
}

/// Host counters of one time slot, compact: the fields nearly every busy second has inline,
/// the rest (IO, slow syscalls, exits, handshakes) boxed and absent for most slots.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct HostSlot {
    runq: crate::host::Histogram,
    oncpu_ns: u64,
    page_allocs: u64,
    vol_switches: u32,
    invol_switches: u32,
    /// `(syscall nr, errno, count)`, as in [`HostCounters::syscall_errors`].
    syscall_errors: Vec<(u16, u16, u32)>,
    rare: Option<Box<HostCounters>>,
}

impl HostSlot {
    fn add(&mut self, d: &HostCounters) {
        self.runq.merge(&d.runq);
        self.oncpu_ns += d.oncpu_ns;
        self.page_allocs += d.page_allocs;
        self.vol_switches = self.vol_switches.saturating_add(d.vol_switches.min(u32::MAX as u64) as u32);
        self.invol_switches =
            self.invol_switches.saturating_add(d.invol_switches.min(u32::MAX as u64) as u32);
        let mut overflow = Vec::new();
        for &(nr, errno, n) in &d.syscall_errors {
            let n32 = n.min(u32::MAX as u64) as u32;
            let room = self.syscall_errors.len() < crate::host::MAX_SYSCALL_ERRORS_PER_SLOT;
            match self.syscall_errors.iter_mut().find(|(s, e, _)| *s as u32 == nr && *e as u32 == errno) {
                Some(e) => e.2 = e.2.saturating_add(n32),
                None if room && nr <= u16::MAX as u32 && errno <= u16::MAX as u32 => {
                    self.syscall_errors.push((nr as u16, errno as u16, n32))
                }
                None => overflow.push((nr, errno, n)),
            }
        }
        let rare = HostCounters {
            runq: Default::default(),
            oncpu_ns: 0,
            page_allocs: 0,
            vol_switches: 0,
            invol_switches: 0,
            syscall_errors: overflow,
            ..d.clone()
        };
        if !rare.is_zero() {
            self.rare.get_or_insert_default().merge(&rare);
        }
    }

    fn add_to(&self, out: &mut HostCounters) {
        out.runq.merge(&self.runq);
        out.oncpu_ns += self.oncpu_ns;
        out.page_allocs += self.page_allocs;
        out.vol_switches += self.vol_switches as u64;
        out.invol_switches += self.invol_switches as u64;
        for &(nr, errno, n) in &self.syscall_errors {
            out.add_syscall_error(nr as u32, errno as u32, n as u64);
        }
        if let Some(r) = &self.rare {
            out.merge(r);
        }
    }
}

impl Slot for HostSlot {
    fn heap_bytes(&self) -> usize {
        self.runq.heap_bytes()
            + self.syscall_errors.capacity() * std::mem::size_of::<(u16, u16, u32)>()
            + self.rare.as_ref().map_or(0, |r| std::mem::size_of::<HostCounters>() + r.heap_bytes())
    }
}

/// Room kept free at the end of a ring's byte buffer before packing a slot: a busy second
/// packs into 20-40 bytes. (A bigger slot still fits: the buffer then grows as a `Vec` does.)
const MAX_PACKED_GUESS: usize = 64;

/// What a ring needs of its slots: a value that can be packed into bytes once it is sealed.
pub(crate) trait Slot: Default + Serialize + serde::de::DeserializeOwned {
    /// Heap bytes held by an unpacked slot (the open one).
    fn heap_bytes(&self) -> usize;
}

/// A ring of fixed-resolution slots covering a fixed span, sparse in time.
///
/// Only the newest slot is a value (it is still being added to). Older ones are sealed: packed
/// with postcard (varints, no field names) back to back in one byte buffer. A busy second of
/// a host slot packs into ~30 bytes where the struct with its vectors took ~190; a query
/// unpacks the slots it reads.
#[derive(Clone, Debug)]
struct Ring<S> {
    resolution: u64,
    span: u64,
    /// Sealed slots, oldest first: start second (minus `base`) and packed length.
    sealed: VecDeque<(u32, u32)>,
    /// Seconds in `sealed` count from here: the first slot this ring ever held.
    base: u64,
    /// The packed sealed slots, back to back, from `bytes[head]` on (the bytes before `head`
    /// belonged to dropped slots, and go at the next compaction).
    bytes: Vec<u8>,
    head: usize,
    /// The newest slot, unpacked: (start second, value).
    open: Option<(u64, S)>,
    /// Seconds before this were trimmed to save memory: the next coarser ring answers for
    /// them. Always a multiple of that ring's resolution.
    complete_from: u64,
}

impl<S: Slot> Ring<S> {
    fn new(resolution: u64, slots: u64) -> Self {
        Ring {
            resolution,
            span: resolution * slots,
            sealed: VecDeque::new(),
            base: 0,
            bytes: Vec::new(),
            head: 0,
            open: None,
            complete_from: 0,
        }
    }

    /// The slot holding second `t`, created if needed; older slots past the span are dropped.
    fn slot(&mut self, t: u64) -> &mut S {
        // Never below the trimmed edge: the coarser ring already holds those seconds.
        let start = (t - t % self.resolution).max(self.complete_from);
        // Late data for an older slot (clock stepped back) folds into the newest slot.
        if self.open.as_ref().is_none_or(|(s, _)| *s < start) {
            if let Some((s, slot)) = self.open.take() {
                self.seal(s, &slot);
            }
            self.open = Some((start, S::default()));
        }
        let expired = self.count_before((t + 1).saturating_sub(self.span));
        self.drop_front(expired);
        &mut self.open.as_mut().expect("opened above").1
    }

    /// Packs `slot` (which starts at second `s`, after every sealed one) onto the end.
    fn seal(&mut self, s: u64, slot: &S) {
        if self.sealed.is_empty() {
            self.base = s;
            self.bytes.clear();
            self.head = 0;
        }
        let Ok(rel) = u32::try_from(s - self.base) else {
            // 136 years after this ring's first slot: start a new epoch rather than lie.
            self.drop_front(self.sealed.len());
            return self.seal(s, slot);
        };
        // Buffers grow by a quarter, not double, and reclaim dropped bytes before growing:
        // with thousands of rings, doubling left two thirds of the history bytes unused.
        if self.bytes.capacity() - self.bytes.len() < MAX_PACKED_GUESS {
            self.compact();
            if self.bytes.capacity() - self.bytes.len() < MAX_PACKED_GUESS {
                self.bytes.reserve_exact((self.bytes.len() / 4).max(4 * MAX_PACKED_GUESS));
            }
        }
        if self.sealed.len() == self.sealed.capacity() {
            self.sealed.reserve_exact((self.sealed.len() / 4).max(8));
        }
        let before = self.bytes.len();
        match postcard::to_extend(slot, std::mem::take(&mut self.bytes)) {
            Ok(bytes) => {
                self.bytes = bytes;
                self.sealed.push_back((rel, (self.bytes.len() - before) as u32));
            }
            // Plain structs of integers cannot fail to serialise; if one ever did, that
            // second is lost, the rest of the history is not.
            Err(e) => tracing::warn!(error = %e, "history slot could not be packed; dropped"),
        }
    }

    /// Moves the live bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.head > 0 {
            self.bytes.drain(..self.head);
            self.head = 0;
        }
    }

    /// Calls `f` with the slots overlapping `(now - secs, now]`, newest first. A slot at second
    /// `t` holds what was polled at `t`, i.e. activity in `(t - 1, t]`.
    fn for_window(&self, now: u64, secs: u64, f: &mut impl FnMut(&S)) {
        let from = now.saturating_sub(secs);
        let res = self.resolution;
        let wanted = |s: u64| s + res - 1 > from;
        if let Some((s, slot)) = &self.open {
            if !wanted(*s) {
                return;
            }
            if *s <= now {
                f(slot);
            }
        }
        let mut end = self.bytes.len();
        for &(rel, len) in self.sealed.iter().rev() {
            let s = self.base + rel as u64;
            if !wanted(s) {
                break;
            }
            let at = end - len as usize;
            if s <= now {
                match postcard::from_bytes::<S>(&self.bytes[at..end]) {
                    Ok(slot) => f(&slot),
                    Err(e) => tracing::warn!(error = %e, "history slot could not be unpacked; skipped"),
                }
            }
            end = at;
        }
    }

    /// Slots that start before second `b`.
    fn count_before(&self, b: u64) -> usize {
        let sealed = self.sealed.partition_point(|&(rel, _)| self.base + (rel as u64) < b);
        sealed + usize::from(self.open.as_ref().is_some_and(|(s, _)| *s < b))
    }

    /// Drops the `n` oldest slots.
    fn drop_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let sealed = n.min(self.sealed.len());
        self.head += self.sealed.drain(..sealed).map(|(_, len)| len as usize).sum::<usize>();
        if n > sealed {
            self.open = None;
        }
        if self.sealed.is_empty() {
            self.bytes = Vec::new();
            self.sealed = VecDeque::new();
            self.head = 0;
        }
    }

    /// Drops the slots that start before `b` (a multiple of the next coarser resolution) and
    /// returns how many went.
    fn trim_before(&mut self, b: u64) -> usize {
        let n = self.count_before(b);
        self.drop_front(n);
        self.complete_from = self.complete_from.max(b);
        // The point is to give memory back: keep an eighth for growth.
        self.compact();
        self.bytes.shrink_to(self.bytes.len() + self.bytes.len() / 8);
        self.sealed.shrink_to(self.sealed.len() + self.sealed.len() / 8);
        n
    }

    /// Slots held.
    fn len(&self) -> usize {
        self.sealed.len() + usize::from(self.open.is_some())
    }

    /// Start second of the oldest slot.
    #[cfg(test)]
    fn first_start(&self) -> Option<u64> {
        match self.sealed.front() {
            Some(&(rel, _)) => Some(self.base + rel as u64),
            None => self.open.as_ref().map(|(s, _)| *s),
        }
    }

    fn heap_bytes(&self) -> usize {
        self.sealed.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.bytes.capacity()
            + self.open.as_ref().map_or(0, |(_, s)| s.heap_bytes())
    }
}

/// A ring as saved across restarts (see [`crate::history`]): only the live bytes, as one
/// byte string rather than a sequence of integers.
#[derive(Serialize)]
struct RingRef<'a, S> {
    resolution: u64,
    span: u64,
    sealed: &'a VecDeque<(u32, u32)>,
    base: u64,
    #[serde(with = "serde_bytes")]
    bytes: &'a [u8],
    open: &'a Option<(u64, S)>,
    complete_from: u64,
}

/// [`RingRef`] read back.
#[derive(Deserialize)]
struct RingRepr<S> {
    resolution: u64,
    span: u64,
    sealed: VecDeque<(u32, u32)>,
    base: u64,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
    open: Option<(u64, S)>,
    complete_from: u64,
}

impl<S: Serialize> Serialize for Ring<S> {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        RingRef {
            resolution: self.resolution,
            span: self.span,
            sealed: &self.sealed,
            base: self.base,
            bytes: &self.bytes[self.head..],
            open: &self.open,
            complete_from: self.complete_from,
        }
        .serialize(s)
    }
}

impl<'de, S: serde::de::DeserializeOwned> Deserialize<'de> for Ring<S> {
    /// Refuses a ring whose slot index does not add up to its bytes (a query would slice out
    /// of bounds) or whose slots are out of order.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let r = RingRepr::<S>::deserialize(d)?;
        let packed: u64 = r.sealed.iter().map(|&(_, len)| len as u64).sum();
        if packed != r.bytes.len() as u64 {
            return Err(D::Error::custom(format!(
                "ring index covers {packed} bytes, {} saved",
                r.bytes.len()
            )));
        }
        if !r.sealed.iter().zip(r.sealed.iter().skip(1)).all(|(a, b)| a.0 < b.0) {
            return Err(D::Error::custom("ring slots out of order"));
        }
        if r.resolution == 0 || r.span % r.resolution != 0 {
            return Err(D::Error::custom(format!("ring resolution {}s, span {}s", r.resolution, r.span)));
        }
        Ok(Ring {
            resolution: r.resolution,
            span: r.span,
            sealed: r.sealed,
            base: r.base,
            bytes: r.bytes,
            head: 0,
            open: r.open,
            complete_from: r.complete_from,
        })
    }
}

/// One signal family's history at the three resolutions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "S: Serialize", deserialize = "S: serde::de::DeserializeOwned"))]
struct Series<S> {
    fine: Ring<S>,
    mid: Ring<S>,
    coarse: Ring<S>,
}

impl<S: Slot> Series<S> {
    fn new() -> Self {
        Series {
            fine: Ring::new(1, FINE_SLOTS),
            mid: Ring::new(10, MID_SLOTS),
            coarse: Ring::new(60, COARSE_SLOTS),
        }
    }

    /// Applies `f` to the slot of second `t` at every resolution.
    fn update(&mut self, t: u64, mut f: impl FnMut(&mut S)) {
        f(self.fine.slot(t));
        f(self.mid.slot(t));
        f(self.coarse.slot(t));
    }

    fn rings(&self) -> [&Ring<S>; 3] {
        [&self.fine, &self.mid, &self.coarse]
    }

    /// Calls `f` with the slots covering the last `secs` seconds before `now`, at the window's
    /// resolution; seconds trimmed from that ring come from the next coarser one.
    fn for_window(&self, now: u64, secs: u64, mut f: impl FnMut(&S)) {
        let first = match Window::from_secs(secs).map(Window::resolution_secs) {
            Some(1) => 0,
            Some(10) => 1,
            _ => 2,
        };
        let from = now.saturating_sub(secs);
        // Each ring answers up to the second before the finer ring's trimmed edge.
        let mut upper = now;
        for ring in self.rings().into_iter().skip(first) {
            ring.for_window(upper, upper - from, &mut f);
            if ring.complete_from <= from + 1 {
                break;
            }
            upper = ring.complete_from - 1;
        }
    }

    /// Slots of ring `level` (0 fine, 1 mid) that start before second `b`.
    fn count_before(&self, level: usize, b: u64) -> usize {
        self.rings()[level].count_before(b)
    }

    /// Trims ring `level` (0 fine, 1 mid) before second `b`; returns the slots dropped.
    fn trim_before(&mut self, level: usize, b: u64) -> usize {
        match level {
            0 => self.fine.trim_before(b),
            _ => self.mid.trim_before(b),
        }
    }

    fn slot_count(&self) -> usize {
        self.rings().iter().map(|r| r.len()).sum()
    }

    fn heap_bytes(&self) -> usize {
        self.rings().iter().map(|r| r.heap_bytes()).sum()
    }
}

/// Everything kept about one service. Saved across restarts without what describes only the
/// running system (pids, open connections).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ServiceState {
    pub(crate) identity: IdentitySource,
    #[serde(skip)]
    pub(crate) pids: BTreeSet<Pid>,
    tcp: Series<TcpSlot>,
    host: Series<HostSlot>,
    /// Since the collector started, to derive connections still established.
    #[serde(skip)]
    pub(crate) opened_total: u64,
    #[serde(skip)]
    pub(crate) closed_total: u64,
    /// Last second with TCP activity (0 if none).
    pub(crate) last_active: u64,
    /// Last second with any activity.
    pub(crate) last_seen: u64,
}

impl ServiceState {
    fn new(identity: IdentitySource) -> Self {
        ServiceState {
            identity,
            pids: BTreeSet::new(),
            tcp: Series::new(),
            host: Series::new(),
            opened_total: 0,
            closed_total: 0,
            last_active: 0,
            last_seen: 0,
        }
    }

    /// TCP counters over the last `secs` seconds before `now`, in total and per peer.
    pub(crate) fn window(&self, now: u64, secs: u64) -> (TcpCounters, HashMap<Peer, TcpCounters>) {
        let mut peers = HashMap::new();
        let mut total = TcpCounters::default();
        self.tcp.for_window(now, secs, |s| {
            total += s.total;
            for (p, c) in &s.peers {
                *peers.entry(*p).or_default() += *c;
            }
        });
        (total, peers)
    }

    /// Whole-host counters over the last `secs` seconds before `now`.
    pub(crate) fn host_window(&self, now: u64, secs: u64) -> HostCounters {
        let mut out = HostCounters::default();
        self.host.for_window(now, secs, |s| s.add_to(&mut out));
        out
    }

    /// Connections opened since start and not yet closed.
    pub(crate) fn active(&self) -> u64 {
        self.opened_total.saturating_sub(self.closed_total)
    }

    fn heap_bytes(&self) -> usize {
        self.tcp.heap_bytes() + self.host.heap_bytes()
    }

    fn count_before(&self, level: usize, b: u64) -> usize {
        self.tcp.count_before(level, b) + self.host.count_before(level, b)
    }

    fn trim_before(&mut self, level: usize, b: u64) -> usize {
        self.tcp.trim_before(level, b) + self.host.trim_before(level, b)
    }
}

/// Kind of an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A TCP connect that never reached ESTABLISHED.
    FailedConnect,
    /// A TCP RST received.
    ResetReceived,
    /// A TCP RST sent.
    ResetSent,
    /// The OOM killer chose one of the service's processes.
    OomKill,
    /// A process exited with a non-zero code or was killed by a signal.
    FailedExit,
}

impl EventKind {
    /// Every kind, in documentation order.
    pub const ALL: [EventKind; 5] = [
        EventKind::FailedConnect,
        EventKind::ResetReceived,
        EventKind::ResetSent,
        EventKind::OomKill,
        EventKind::FailedExit,
    ];

    /// The wire name (`failed_connect`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::FailedConnect => "failed_connect",
            EventKind::ResetReceived => "reset_received",
            EventKind::ResetSent => "reset_sent",
            EventKind::OomKill => "oom_kill",
            EventKind::FailedExit => "failed_exit",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether this is a TCP event.
    pub fn is_tcp(self) -> bool {
        matches!(self, EventKind::FailedConnect | EventKind::ResetReceived | EventKind::ResetSent)
    }
}

/// What an event carries beyond its kind.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventDetail {
    /// TCP events: the endpoints.
    Tcp {
        /// Local endpoint.
        local: String,
        /// Remote endpoint.
        peer: String,
    },
    /// Failed exits.
    Exit {
        /// Exit status (0-255) when the process exited by itself.
        exit_status: Option<u32>,
        /// Signal that killed it (`SIGKILL`), if any.
        signal: Option<String>,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// OOM kills: the victim's size when it was chosen.
    Oom {
        /// Total virtual memory, KiB.
        total_vm_kib: u64,
        /// Anonymous resident memory, KiB.
        anon_rss_kib: u64,
    },
}

/// A discrete event, as kept for queries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Position in the event log, increasing; the cursor of `get_events`.
    pub seq: u64,
    /// Wall-clock time, Unix milliseconds. Kernel events are stamped with the kernel's tick
    /// (4 ms at HZ=250), so two events less than a tick apart may share a time: `seq` orders them.
    pub time_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// Service it is attributed to.
    pub service: ServiceId,
    /// Process id (0 when no process owned the socket).
    pub pid: Pid,
    /// Kind-specific fields.
    #[serde(flatten)]
    pub detail: EventDetail,
}

/// How the collector itself is doing: drops and lags a user should know about.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Health {
    /// Where data comes from (`ebpf`, or `replay` for a recording).
    #[serde(skip_deserializing)]
    pub source: &'static str,
    /// Unix seconds when collection started.
    pub started_at: u64,
    /// Unix seconds of the last successful poll of the kernel maps.
    pub last_poll: u64,
    /// Events the kernel could not write because the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Counter updates lost because the kernel aggregate map was full.
    pub conn_stats_full: u64,
    /// Sockets the kernel could not track (owner map insert failed).
    pub sock_insert_failed: u64,
    /// Sends not counted because the kernel's per-socket send map was full.
    pub send_stats_full: u64,
    /// Scheduler/memory/process updates lost because the kernel's per-process map was full.
    pub proc_stats_full: u64,
    /// Slow syscalls not timed because the start-time map was full (block requests not
    /// timed because the in-flight map was full).
    pub start_map_full: u64,
    /// IO, syscall or connect-latency updates lost because their kernel map was full.
    pub host_stats_full: u64,
    /// OOM-kill and exit events lost because their ring buffer was full.
    pub proc_ringbuf_drops: u64,
    /// Per-thread scheduler batches flushed early because two live threads mapped to the same
    /// kernel slot (only when `pid_max` is above 32,768); nothing is lost, it costs a flush.
    #[serde(default)]
    pub thread_slots_shared: u64,
    /// Events aged out of the bounded event log.
    pub events_evicted: u64,
    /// Services whose history was dropped because more than [`MAX_SERVICES`] were active or
    /// the history passed [`MAX_HISTORY_SLOTS`] even after trimming (least recently active
    /// first).
    pub services_evicted: u64,
    /// Old one-second and ten-second slots dropped to keep the history within
    /// [`MAX_HISTORY_SLOTS`] (their seconds are still counted at the next coarser resolution).
    #[serde(default)]
    pub slots_trimmed: u64,
    /// Periods that earlier runs of bpfsight watched, restored from the data directory at
    /// start (see [`crate::history`]), oldest first. Their history answers queries, and
    /// their seconds count as watched in [`Store::observed_secs`]. Empty when nothing was
    /// restored; never read back from a recording (it holds no data from before it started).
    #[serde(default, skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub earlier_runs: Vec<Watched>,
    /// Where history is kept across restarts and how the last save went; absent when it is not
    /// kept (`--keep-history off`, a recording).
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::history::HistoryStatus>,
    /// Signals this kernel cannot give (a hook missing or a record laid out differently), and
    /// why. Empty on a kernel with every hook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<crate::plan::UnavailableSignal>,
}

/// Seconds `(from, to]` (Unix) that a run of bpfsight watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watched {
    /// When the run started.
    pub from: u64,
    /// Its last second saved.
    pub to: u64,
}

impl Health {
    /// The signals this kernel cannot give, each once, for answers to list.
    pub fn unavailable_signals(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for u in &self.unavailable {
            if !out.contains(&u.signal) {
                out.push(u.signal.clone());
            }
        }
        out
    }
}

/// The collector's memory: per-service series, events, the live process table, health.
#[derive(Default)]
pub struct Store {
    pub(crate) services: HashMap<ServiceId, ServiceState>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) next_seq: u64,
    /// Live processes by service name, refreshed by the collector.
    pub(crate) processes: HashMap<ServiceId, Vec<Pid>>,
    /// Command line per service: a live one's, else the last seen while the service has
    /// history (a service that crashed is when it matters most).
    pub(crate) cmdlines: HashMap<ServiceId, String>,
    /// Resident memory per live service, bytes (sum over its processes).
    pub(crate) rss: HashMap<ServiceId, u64>,
    /// Executable per service, kept like `cmdlines`.
    pub(crate) exes: HashMap<ServiceId, String>,
    /// The second the latest data belongs to; queries look back from here.
    pub(crate) now: u64,
    pub(crate) health: Health,
    /// Bumped by every change: answers computed at one generation hold until the next.
    pub(crate) generation: u64,
}

impl Store {
    /// An empty store whose clock reads `now` (Unix seconds).
    pub fn new(now: u64) -> Self {
        Store { now, next_seq: 1, ..Default::default() }
    }

    /// Advances the store's clock to `now` (Unix seconds) and keeps the history within
    /// [`MAX_HISTORY_SLOTS`]: oldest fine slots first, then oldest ten-second slots, then whole
    /// services (least recently active first).
    pub fn tick(&mut self, now: u64) {
        self.generation += 1;
        self.now = self.now.max(now);
        self.health.last_poll = now;
        let mut slots = self.slot_count();
        for (level, step, keep) in [(0, 10, MIN_FINE_SECS), (1, 60, MIN_MID_SECS)] {
            if slots > MAX_HISTORY_SLOTS {
                let trimmed = self.trim_oldest(level, step, now.saturating_sub(keep), slots);
                slots -= trimmed;
                self.health.slots_trimmed += trimmed as u64;
            }
        }
        while slots > MAX_HISTORY_SLOTS && self.services.len() > 1 {
            let Some(victim) = self.services.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(st) = self.services.remove(&victim) {
                slots -= st.tcp.slot_count() + st.host.slot_count();
                self.health.services_evicted += 1;
            }
        }
    }

    /// Trims ring `level` of every service before one cut-off second: the earliest multiple of
    /// `step` (the next coarser resolution) that brings `slots` down to 90 % of the budget, so
    /// that trimming happens now and then rather than every second, and never past `limit`.
    /// Returns the slots dropped.
    fn trim_oldest(&mut self, level: usize, step: u64, limit: u64, slots: usize) -> usize {
        let target = MAX_HISTORY_SLOTS / 10 * 9;
        let freed = |cut: u64| self.services.values().map(|st| st.count_before(level, cut)).sum::<usize>();
        let (mut lo, mut hi) = (1, limit / step);
        if hi < lo {
            return 0;
        }
        // The smallest k whose cut `k * step` frees enough; `freed` grows with k.
        if slots - freed(hi * step) > target {
            lo = hi;
        } else {
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if slots - freed(mid * step) <= target {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
        }
        let cut = lo * step;
        self.services.values_mut().map(|st| st.trim_before(level, cut)).sum()
    }

    fn service_mut(&mut self, service: &ServiceId, identity: IdentitySource, pid: Pid) -> &mut ServiceState {
        if !self.services.contains_key(service) && self.services.len() >= MAX_SERVICES {
            self.evict_one();
        }
        let st = self.services.entry(service.clone()).or_insert_with(|| ServiceState::new(identity));
        if pid != 0 && st.pids.len() < MAX_PIDS_PER_SERVICE {
            st.pids.insert(pid);
        }
        st
    }

    /// Adds TCP `delta` for `service` talking to `peer` at second `t`.
    pub fn record(
        &mut self,
        t: u64,
        service: &ServiceId,
        identity: IdentitySource,
        pid: Pid,
        peer: Peer,
        delta: TcpCounters,
    ) {
        if delta.is_zero() {
            return;
        }
        self.generation += 1;
        let st = self.service_mut(service, identity, pid);
        st.tcp.update(t, |s| s.add(peer, delta));
        st.opened_total += delta.opened();
        st.closed_total += delta.closed;
        st.last_active = st.last_active.max(t);
        st.last_seen = st.last_seen.max(t);
        self.now = self.now.max(t);
    }

    /// Adds whole-host `delta` for `service` at second `t`.
    pub fn record_host(
        &mut self,
        t: u64,
        service: &ServiceId,
        identity: IdentitySource,
        pids: &[Pid],
        delta: &HostCounters,
    ) {
        if delta.is_zero() {
            return;
        }
        self.generation += 1;
        let st = self.service_mut(service, identity, pids.first().copied().unwrap_or(0));
        for p in pids.iter().skip(1) {
            if st.pids.len() >= MAX_PIDS_PER_SERVICE {
                break;
            }
            st.pids.insert(*p);
        }
        st.host.update(t, |s| s.add(delta));
        st.last_seen = st.last_seen.max(t);
        self.now = self.now.max(t);
    }

    fn evict_one(&mut self) {
        if let Some(victim) = self.services.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| k.clone()) {
            self.services.remove(&victim);
            self.health.services_evicted += 1;
        }
    }

    /// Appends a discrete event, evicting the oldest past [`MAX_EVENTS`]; returns the `seq`
    /// assigned to it.
    pub fn push_event(&mut self, mut e: Event) -> u64 {
        self.generation += 1;
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.health.events_evicted += 1;
        }
        let seq = self.next_seq;
        e.seq = seq;
        self.next_seq += 1;
        self.events.push_back(e);
        seq
    }

    /// Replaces the live process table. The command lines and executables of services no
    /// longer running are kept for as long as the service has history here (so the map is
    /// bounded like the services are).
    pub fn set_processes(&mut self, procs: crate::procs::ProcessTable) {
        self.generation += 1;
        let known = |id: &ServiceId| procs.pids.contains_key(id) || self.services.contains_key(id);
        self.cmdlines.retain(|id, _| known(id));
        self.exes.retain(|id, _| known(id));
        self.cmdlines.extend(procs.cmdlines);
        self.exes.extend(procs.exes);
        self.processes = procs.pids;
        self.rss = procs.rss;
    }

    /// Changes with every write to the store: two reads at the same generation see the same
    /// data, so an answer computed at one can be given again until it moves.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The second the latest data belongs to (Unix seconds).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// How many of the last `secs` seconds the collector watched: `secs`, or fewer while it
    /// has run for less than that (a recording: since the recording started). Rates divide
    /// by this, not by the window asked for: ten seconds after a start, "per second over the
    /// last 5 minutes" must not be diluted thirty times by minutes nobody watched. At least 1.
    ///
    /// With history restored from earlier runs, the seconds those runs watched count too, and
    /// the time bpfsight was not running does not.
    pub fn observed_secs(&self, secs: u64) -> u64 {
        let from = self.now.saturating_sub(secs);
        let overlap = |a: u64, b: u64| b.min(self.now).saturating_sub(a.max(from));
        let earlier: u64 = self.health.earlier_runs.iter().map(|w| overlap(w.from, w.to)).sum();
        (overlap(self.health.started_at, self.now) + earlier).min(secs).max(1)
    }

    /// Calls `f` with what each service did in the seconds `(from, to]` (at most the
    /// one-second ring's span), services with no activity there left out: the per-step input of
    /// the predictor. Runs once a second over every service, so it lends one reused scratch
    /// value instead of building a copy per service.
    pub fn for_each_activity(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(&ServiceId, &HostCounters, &TcpCounters),
    ) {
        let secs = to.saturating_sub(from).clamp(1, FINE_SLOTS);
        let mut host = HostCounters::default();
        for (id, st) in &self.services {
            if st.last_seen <= from {
                continue;
            }
            host.clear();
            st.host.fine.for_window(to, secs, &mut |slot: &HostSlot| slot.add_to(&mut host));
            let mut tcp = TcpCounters::default();
            st.tcp.fine.for_window(to, secs, &mut |slot: &TcpSlot| tcp += slot.total);
            if !host.is_zero() || !tcp.is_zero() {
                f(id, &host, &tcp);
            }
        }
    }

    /// Mutable access to health counters, for the collector.
    pub fn health_mut(&mut self) -> &mut Health {
        self.generation += 1;
        &mut self.health
    }

    /// The collector's health.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Approximate bytes held by series and events (for the memory budget check).
    pub fn approx_bytes(&self) -> usize {
        let series: usize =
            self.services.values().map(|s| std::mem::size_of::<ServiceState>() + s.heap_bytes()).sum();
        series + self.events.len() * std::mem::size_of::<Event>()
    }

    /// Services with history.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Slots held over all services and resolutions.
    pub fn slot_count(&self) -> usize {
        self.services.values().map(|s| s.tcp.slot_count() + s.host.slot_count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn peer(port: u16) -> Peer {
        Peer { addr: IpAddr::V4(Ipv4Addr::LOCALHOST), port }
    }

    fn rt(n: u64) -> TcpCounters {
        TcpCounters { retransmits: n, ..Default::default() }
    }

    #[test]
    fn a_service_that_stopped_keeps_its_executable_while_it_has_history() {
        let mut s = Store::new(1000);
        let (gone, never) = (ServiceId::new("crashed"), ServiceId::new("passing"));
        s.record(1000, &gone, IdentitySource::ProcessName, 1, peer(80), rt(1));
        let table = |ids: &[&ServiceId]| crate::procs::ProcessTable {
            pids: ids.iter().map(|id| ((*id).clone(), vec![7])).collect(),
            exes: ids.iter().map(|id| ((*id).clone(), format!("/usr/bin/{id}"))).collect(),
            cmdlines: ids.iter().map(|id| ((*id).clone(), format!("{id} --serve"))).collect(),
            ..Default::default()
        };
        s.set_processes(table(&[&gone, &never]));
        s.set_processes(table(&[]));
        // Its processes are gone; what it ran is still known.
        assert!(!s.processes.contains_key(&gone));
        assert_eq!(s.exes.get(&gone).map(String::as_str), Some("/usr/bin/crashed"));
        assert_eq!(s.cmdlines.get(&gone).map(String::as_str), Some("crashed --serve"));
        // A process with no history here is forgotten with its processes: the maps stay bounded.
        assert!(!s.exes.contains_key(&never) && !s.cmdlines.contains_key(&never));
    }

    #[test]
    fn every_write_moves_the_generation() {
        let mut s = Store::new(1000);
        let svc = ServiceId::new("a");
        let mut seen = vec![s.generation()];
        s.record(1000, &svc, IdentitySource::ProcessName, 1, peer(80), rt(1));
        seen.push(s.generation());
        s.record_host(
            1000,
            &svc,
            IdentitySource::ProcessName,
            &[1],
            &HostCounters { vol_switches: 1, ..Default::default() },
        );
        seen.push(s.generation());
        s.push_event(Event {
            seq: 0,
            time_ms: 1,
            kind: EventKind::FailedConnect,
            service: svc.clone(),
            pid: 1,
            detail: EventDetail::Tcp { local: "127.0.0.1:1".into(), peer: "127.0.0.1:2".into() },
        });
        seen.push(s.generation());
        s.set_processes(crate::procs::ProcessTable::default());
        seen.push(s.generation());
        s.health_mut().ringbuf_drops += 1;
        seen.push(s.generation());
        s.tick(1001);
        seen.push(s.generation());
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        // A zero delta changes nothing, so answers computed before it still hold.
        let g = s.generation();
        s.record(1001, &svc, IdentitySource::ProcessName, 1, peer(80), TcpCounters::default());
        assert_eq!(s.generation(), g);
    }

    #[test]
    fn window_sums_only_recent_seconds() {
        let mut s = Store::new(1000);
        let svc = ServiceId::new("a");
        for t in 1000..1100 {
            s.record(t, &svc, IdentitySource::ProcessName, 1, peer(80), rt(1));
        }
        let st = &s.services[&svc];
        assert_eq!(st.window(1099, 10).0.retransmits, 10);
        assert_eq!(st.window(1099, 100).0.retransmits, 100);
        assert_eq!(st.window(1099, 900).0.retransmits, 100);
        // Nothing happened in the last 10 s before 1200.
        assert_eq!(st.window(1200, 10).0.retransmits, 0);
    }

    #[test]
    fn fine_history_is_bounded_and_coarse_keeps_older_data() {
        let mut s = Store::new(0);
        let svc = ServiceId::new("a");
        for t in 0..3 * 3600 {
            s.record(t, &svc, IdentitySource::ProcessName, 1, peer(80), rt(1));
        }
        let st = &s.services[&svc];
        assert!(st.tcp.fine.len() as u64 <= FINE_SLOTS);
        assert!(st.tcp.mid.len() as u64 <= MID_SLOTS);
        let now = 3 * 3600 - 1;
        assert_eq!(st.window(now, 900).0.retransmits, 900);
        // One hour at ten-second resolution: 360 full slots.
        assert_eq!(st.window(now, 3600).0.retransmits, 3600);
    }

    #[test]
    fn peers_beyond_the_cap_fold_into_other_without_losing_counts() {
        let mut s = Store::new(0);
        let svc = ServiceId::new("a");
        for p in 0..100u16 {
            s.record(5, &svc, IdentitySource::ProcessName, 1, peer(p), rt(1));
        }
        let (total, peers) = s.services[&svc].window(5, 1);
        assert_eq!(total.retransmits, 100);
        assert!(peers.len() <= MAX_PEERS_PER_SLOT);
        assert_eq!(peers.values().map(|c| c.retransmits).sum::<u64>(), 100);
    }

    #[test]
    fn services_and_events_are_bounded() {
        let mut s = Store::new(0);
        for i in 0..MAX_SERVICES + 10 {
            s.record(
                i as u64,
                &ServiceId::new(&format!("s{i}")),
                IdentitySource::ProcessName,
                1,
                peer(1),
                rt(1),
            );
        }
        assert_eq!(s.services.len(), MAX_SERVICES);
        assert_eq!(s.health.services_evicted, 10);
        assert!(!s.services.contains_key(&ServiceId::new("s0")));
        for i in 0..MAX_EVENTS + 5 {
            s.push_event(Event {
                seq: 0,
                time_ms: i as u64,
                kind: EventKind::FailedConnect,
                service: ServiceId::new("x"),
                pid: 1,
                detail: EventDetail::Tcp { local: String::new(), peer: String::new() },
            });
        }
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(s.health.events_evicted, 5);
        assert_eq!(s.events.back().unwrap().seq, (MAX_EVENTS + 5) as u64);
    }

    #[test]
    fn history_past_the_slot_budget_trims_the_oldest_fine_slots_first() {
        let mut s = Store::new(0);
        let ids: Vec<ServiceId> = (0..400).map(|i| ServiceId::new(&format!("s{i}"))).collect();
        for sec in 0..960 {
            for id in &ids {
                s.record(sec, id, IdentitySource::ProcessName, 1, peer(1), rt(1));
            }
        }
        assert!(s.slot_count() > MAX_HISTORY_SLOTS);
        s.tick(959);
        assert!(s.slot_count() <= MAX_HISTORY_SLOTS, "{}", s.slot_count());
        assert_eq!(s.health.services_evicted, 0, "no service loses its history");
        assert!(s.health.slots_trimmed > 0);
        let st = &s.services[&ids[7]];
        let cut = st.tcp.fine.complete_from;
        assert!(cut > 0 && cut.is_multiple_of(10) && cut <= 959 - MIN_FINE_SECS, "{cut}");
        assert_eq!(st.tcp.fine.first_start(), Some(cut));
        // Every window still counts every second: the trimmed part comes from 10 s slots.
        for secs in [30, 60, 300, 600, 900] {
            assert_eq!(st.window(959, secs).0.retransmits, secs, "{secs} s window");
        }
        // Late data for a trimmed second lands at the edge, not before it (no double count).
        let mut s2 = s.services[&ids[7]].clone();
        s2.tcp.update(cut - 5, |slot| slot.add(peer(1), rt(1)));
        assert!(s2.tcp.fine.first_start().unwrap() >= cut);
    }

    #[test]
    fn history_still_over_budget_after_trimming_evicts_the_least_recently_active() {
        let mut s = Store::new(0);
        let ids: Vec<ServiceId> = (0..32).map(|i| ServiceId::new(&format!("s{i}"))).collect();
        // Active once a minute for 7 days: ~10,400 slots each, mostly minute slots.
        let end = 7 * 24 * 60;
        for m in 0..end {
            for (i, id) in ids.iter().enumerate() {
                // The second half went quiet a minute before the end.
                if i >= 16 && m == end - 1 {
                    continue;
                }
                s.record(m * 60, id, IdentitySource::ProcessName, 1, peer(1), rt(1));
            }
        }
        assert!(s.slot_count() > MAX_HISTORY_SLOTS);
        s.tick((end - 1) * 60);
        assert!(s.slot_count() <= MAX_HISTORY_SLOTS, "{}", s.slot_count());
        assert!(s.health.slots_trimmed > 0, "trimming comes first");
        assert!(s.health.services_evicted > 0);
        assert!(ids[..16].iter().all(|id| s.services.contains_key(id)), "active services kept");
        // Ten-second slots older than an hour are gone; a 6 h window reads them from minute
        // slots (one per minute of activity; the slot on the window's edge counts whole).
        let st = &s.services[&ids[0]];
        assert!(st.tcp.mid.complete_from > 0);
        let now = (end - 1) * 60;
        for (secs, minutes) in [(6 * 3600, 360), (3600, 60), (900, 15)] {
            let n = st.window(now, secs).0.retransmits;
            assert!(n == minutes || n == minutes + 1, "{secs} s: {n}");
        }
    }

    #[test]
    fn week_long_windows_use_minute_slots() {
        let mut s = Store::new(0);
        let svc = ServiceId::new("a");
        // One retransmit per minute for 8 days: the 7-day window sees 7 days of them.
        for m in 0..8 * 24 * 60u64 {
            s.record(m * 60, &svc, IdentitySource::ProcessName, 1, peer(80), rt(1));
        }
        let now = (8 * 24 * 60 - 1) * 60;
        let st = &s.services[&svc];
        assert_eq!(st.window(now, 7 * 24 * 3600).0.retransmits, 7 * 24 * 60);
        assert!(st.tcp.coarse.len() as u64 <= COARSE_SLOTS);
    }

    #[test]
    fn packed_slots_read_back_exactly() {
        use crate::host::{HostCounters, IoTotals};
        let mut s = Store::new(0);
        let svc = ServiceId::new("a");
        let v6 = Peer { addr: "2001:db8::1".parse().unwrap(), port: 443 };
        let mut h = HostCounters {
            oncpu_ns: 1 << 40,
            vol_switches: 7,
            execs: 2,
            failed_exits: 1,
            ..Default::default()
        };
        h.runq = crate::host::Histogram::from_mean(9, 9 * 70_000);
        h.add_syscall_error(257, 2, 5);
        h.io_devices.push((8 << 20, IoTotals { read_ops: 3, read_bytes: 12_288, ..Default::default() }));
        let mut want = HostCounters::default();
        for t in 1..=30 {
            s.record_host(t, &svc, IdentitySource::ProcessName, &[1], &h);
            s.record(t, &svc, IdentitySource::ProcessName, 1, v6, rt(3));
            s.record(t, &svc, IdentitySource::ProcessName, 1, peer(80), rt(1));
            want.merge(&h);
        }
        let st = &s.services[&svc];
        // 29 of the 30 one-second slots are packed by now, and so are the ten-second slots
        // before the last.
        assert_eq!(st.host.fine.sealed.len(), 29);
        assert_eq!(st.host.mid.sealed.len(), 3);
        assert_eq!(st.host_window(30, 30), want);
        assert_eq!(st.host_window(30, 600), want);
        let (total, peers) = st.window(30, 30);
        assert_eq!(total.retransmits, 120);
        assert_eq!(peers[&v6].retransmits, 90);
        assert_eq!(peers[&peer(80)].retransmits, 30);
    }

    #[test]
    fn history_memory_budget() {
        use crate::host::HostCounters;
        use bpfsight_common::LatHist;
        // A service active every second for 15 minutes, with a typical run-queue histogram,
        // a syscall error pair and TCP traffic with two peers.
        let mut s = Store::new(0);
        let svc = ServiceId::new("a");
        let mut raw = LatHist::default();
        for us in [3, 5, 9, 17, 40, 120] {
            raw.add(us * 1000);
        }
        let mut h = HostCounters { oncpu_ns: 1_000_000, vol_switches: 50, ..Default::default() };
        h.runq = crate::host::Histogram::delta(&raw, &LatHist::default());
        h.add_syscall_error(2, 2, 3);
        for t in 0..900 {
            s.record_host(t, &svc, IdentitySource::ProcessName, &[1], &h);
            s.record(t, &svc, IdentitySource::ProcessName, 1, peer(80), rt(1));
            s.record(t, &svc, IdentitySource::ProcessName, 1, peer(81), rt(1));
        }
        let per_slot = s.approx_bytes() as f64 / s.slot_count() as f64;
        let fifteen_min = s.approx_bytes();
        eprintln!(
            "15 min of a busy service: {} slots, {:.0} KiB, {per_slot:.0} B/slot",
            s.slot_count(),
            fifteen_min as f64 / 1024.0
        );
        // Documented in the module docs: about 100 KiB (host + TCP, 2,000 slots in 15 minutes);
        // it was 750 KiB before slots were packed.
        assert!(fifteen_min < 150 * 1024, "{fifteen_min}");
    }
}
