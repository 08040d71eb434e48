//! Sockets that existed before bpfsight started: the kernel programs only learn owners from
//! state changes and sends, so listeners opened earlier (the usual case for a daemon started
//! after the services it watches) are found here, from /proc, and handed to the kernel side.

use std::collections::HashMap;

use bpfsight_common::{AF_INET, AF_INET6, COMM_LEN, ListenKey, Owner};

use crate::service::Pid;

/// TCP state LISTEN in /proc/net/tcp.
const LISTEN: &str = "0A";

/// Listening sockets now: (key, socket inode).
fn listening() -> Vec<(ListenKey, u64)> {
    let mut out = Vec::new();
    for (path, family) in [("/proc/net/tcp", AF_INET), ("/proc/net/tcp6", AF_INET6)] {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != LISTEN {
                continue;
            }
            let Some(port) = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) else {
                continue;
            };
            let Ok(inode) = f[9].parse::<u64>() else { continue };
            out.push((ListenKey { family, port }, inode));
        }
    }
    out
}

/// Finds which process holds each socket inode, by reading /proc/*/fd links.
fn owners_of(inodes: &HashMap<u64, ()>) -> HashMap<u64, Pid> {
    let mut found = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<Pid>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains_key(&inode) {
                found.entry(inode).or_insert(pid);
            }
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    found
}

/// Owners of the TCP listeners that exist now.
pub fn listeners() -> Vec<(ListenKey, Owner)> {
    let socks = listening();
    let inodes: HashMap<u64, ()> = socks.iter().map(|(_, i)| (*i, ())).collect();
    let owners = owners_of(&inodes);
    socks
        .into_iter()
        .filter_map(|(key, inode)| {
            let pid = *owners.get(&inode)?;
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let mut comm = [0u8; COMM_LEN];
            let bytes = name.trim_end().as_bytes();
            let n = bytes.len().min(COMM_LEN - 1);
            comm[..n].copy_from_slice(&bytes[..n]);
            Some((key, Owner { tgid: pid, _pad: 0, comm }))
        })
        .collect()
}
