//! TCP counters in user space: peers and the per-interval deltas of the kernel aggregates.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::AddAssign;

use bpfsight_common::{AF_INET6, ConnStats, SendStats};
use serde::{Deserialize, Serialize};

/// A remote endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
}

impl Peer {
    /// Peer from the kernel's family + 16-byte address (IPv4 in the first four bytes).
    pub fn from_raw(family: u16, addr: [u8; 16], port: u16) -> Peer {
        let addr = if family == AF_INET6 {
            let v6 = Ipv6Addr::from(addr);
            // Dual-stack sockets talk to IPv4 peers through mapped addresses; show them as IPv4.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        } else {
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
        };
        Peer { addr, port }
    }

    /// The peer used for overflow: counts for peers beyond the per-slot cap are summed here.
    pub const OTHER: Peer = Peer { addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED), port: 0 };
}

impl Serialize for Peer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Peer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let sa: std::net::SocketAddr = text.parse().map_err(serde::de::Error::custom)?;
        Ok(Peer { addr: sa.ip(), port: sa.port() })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// TCP counters over some interval. Same fields as the kernel's `ConnStats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpCounters {
    /// Connections initiated (connect) that reached ESTABLISHED.
    pub opened_active: u64,
    /// Connections accepted that reached ESTABLISHED.
    pub opened_passive: u64,
    /// Connections closed (only those whose open was seen).
    pub closed: u64,
    /// Summed lifetime of closed connections, ns.
    pub duration_ns: u64,
    /// Connects that never reached ESTABLISHED.
    pub failed_connects: u64,
    /// RSTs sent.
    pub resets_sent: u64,
    /// RSTs received.
    pub resets_received: u64,
    /// Retransmitted segments.
    pub retransmits: u64,
    /// sendmsg calls that sent data.
    pub sends: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Connects the peer refused with a RST: also in `failed_connects` and `resets_received`.
    /// (Recordings made before it was counted read as 0.)
    #[serde(default)]
    pub refused_connects: u64,
}

impl TcpCounters {
    /// Connections opened in either direction.
    pub fn opened(&self) -> u64 {
        self.opened_active + self.opened_passive
    }

    /// All the error signals summed: failed connects, resets both ways, retransmits. A
    /// refused connect is one error: the RST that refused it is not counted again.
    pub fn errors(&self) -> u64 {
        self.failed_connects
            + self.resets_sent
            + self.resets_received.saturating_sub(self.refused_connects)
            + self.retransmits
    }

    /// What the errors are a share of: connect attempts, accepted connections and
    /// transmissions (sends, and the retransmitted segments, each a transmission too).
    pub fn attempts(&self) -> u64 {
        self.opened_active + self.failed_connects + self.opened_passive + self.sends + self.retransmits
    }

    /// The error rate, percent: `errors / attempts`, where an error with no attempt of its own
    /// in the same counts (a reset on a connection opened earlier, the kernel's answer to a
    /// segment for no socket) counts as its own attempt, so that the rate never passes 100.
    pub fn error_rate_pct(&self) -> f64 {
        let errors = self.errors();
        if errors == 0 { 0.0 } else { 100.0 * errors as f64 / self.attempts().max(errors) as f64 }
    }

    /// Whether every counter is zero.
    pub fn is_zero(&self) -> bool {
        *self == TcpCounters::default()
    }

    /// `self - earlier`, for cumulative kernel counters; a counter that went backwards (the
    /// key was deleted and recreated) counts from zero.
    pub fn delta_since(&self, earlier: &TcpCounters) -> TcpCounters {
        let d = |now: u64, then: u64| if now >= then { now - then } else { now };
        TcpCounters {
            opened_active: d(self.opened_active, earlier.opened_active),
            opened_passive: d(self.opened_passive, earlier.opened_passive),
            closed: d(self.closed, earlier.closed),
            duration_ns: d(self.duration_ns, earlier.duration_ns),
            failed_connects: d(self.failed_connects, earlier.failed_connects),
            resets_sent: d(self.resets_sent, earlier.resets_sent),
            resets_received: d(self.resets_received, earlier.resets_received),
            retransmits: d(self.retransmits, earlier.retransmits),
            sends: d(self.sends, earlier.sends),
            bytes_sent: d(self.bytes_sent, earlier.bytes_sent),
            refused_connects: d(self.refused_connects, earlier.refused_connects),
        }
    }
}

impl From<ConnStats> for TcpCounters {
    fn from(s: ConnStats) -> Self {
        TcpCounters {
            opened_active: s.opened_active,
            opened_passive: s.opened_passive,
            closed: s.closed,
            duration_ns: s.duration_ns,
            failed_connects: s.failed_connects,
            resets_sent: s.resets_sent,
            resets_received: s.resets_received,
            retransmits: s.retransmits,
            sends: 0,
            bytes_sent: 0,
            refused_connects: s.refused_connects,
        }
    }
}

impl From<SendStats> for TcpCounters {
    fn from(s: SendStats) -> Self {
        TcpCounters { sends: s.sends, bytes_sent: s.bytes, ..Default::default() }
    }
}

impl AddAssign for TcpCounters {
    fn add_assign(&mut self, o: TcpCounters) {
        self.opened_active += o.opened_active;
        self.opened_passive += o.opened_passive;
        self.closed += o.closed;
        self.duration_ns += o.duration_ns;
        self.failed_connects += o.failed_connects;
        self.resets_sent += o.resets_sent;
        self.resets_received += o.resets_received;
        self.retransmits += o.retransmits;
        self.sends += o.sends;
        self.bytes_sent += o.bytes_sent;
        self.refused_connects += o.refused_connects;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_peers_show_as_v4() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(Peer::from_raw(AF_INET6, a, 80).to_string(), "127.0.0.1:80");
        let mut b = [0u8; 16];
        b[15] = 1;
        assert_eq!(Peer::from_raw(AF_INET6, b, 80).to_string(), "[::1]:80");
        assert_eq!(
            Peer::from_raw(2, [10, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 5).to_string(),
            "10.0.0.7:5"
        );
    }

    #[test]
    fn a_refused_connect_is_one_error_and_rates_stay_within_100() {
        // 10 connects, all refused: 10 failed connects, each with the RST that refused it.
        let refused = TcpCounters {
            failed_connects: 10,
            resets_received: 10,
            refused_connects: 10,
            ..Default::default()
        };
        assert_eq!((refused.errors(), refused.attempts()), (10, 10));
        assert_eq!(refused.error_rate_pct(), 100.0);
        // An established connection reset by its peer is an error of its own.
        let reset = TcpCounters { opened_active: 4, resets_received: 1, sends: 16, ..Default::default() };
        assert_eq!(reset.errors(), 1);
        assert_eq!(reset.error_rate_pct(), 5.0);
        // One large write retransmitted in many segments: a share of the transmissions.
        let bulk = TcpCounters { sends: 1, retransmits: 30, ..Default::default() };
        assert!((bulk.error_rate_pct() - 100.0 * 30.0 / 31.0).abs() < 1e-9);
        // The kernel's answers to segments for no socket: every one is an error and an attempt.
        let no_socket = TcpCounters { resets_sent: 50, ..Default::default() };
        assert_eq!(no_socket.error_rate_pct(), 100.0);
        assert_eq!(TcpCounters::default().error_rate_pct(), 0.0);
    }

    #[test]
    fn delta_handles_recreated_keys() {
        let a = TcpCounters { retransmits: 10, sends: 5, ..Default::default() };
        let b = TcpCounters { retransmits: 13, sends: 2, ..Default::default() };
        let d = b.delta_since(&a);
        assert_eq!(d.retransmits, 3);
        assert_eq!(d.sends, 2);
    }
}
