//! The live process table from /proc, grouped by service.

use std::collections::HashMap;

use crate::service::{Pid, ServiceId};

/// Longest command line kept per service, bytes.
pub const MAX_CMDLINE: usize = 512;

/// Live processes grouped by service.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcessTable {
    /// Pids by service (sorted, capped).
    pub pids: HashMap<ServiceId, Vec<Pid>>,
    /// Command line of the service's lowest pid, arguments joined by spaces, truncated. It can
    /// hold secrets: the MCP layer redacts every result before it leaves the process.
    pub cmdlines: HashMap<ServiceId, String>,
    /// Resident memory per service, bytes, summed over all its processes.
    pub rss: HashMap<ServiceId, u64>,
    /// Executable of the service's lowest pid.
    pub exes: HashMap<ServiceId, String>,
}

/// Resident set size of `pid`, bytes (`/proc/PID/statm`).
pub fn rss_bytes(pid: Pid) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page)
}

/// Scans /proc: live processes by service name (pids sorted, at most `max_pids` each).
pub fn scan(max_pids: usize) -> ProcessTable {
    let mut out: HashMap<ServiceId, Vec<Pid>> = HashMap::new();
    let mut rss: HashMap<ServiceId, u64> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return ProcessTable::default() };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<Pid>().ok()) else { continue };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
        let comm = comm.trim_end();
        // Kernel threads have no memory map; they are not services.
        if is_kernel_thread(pid) {
            continue;
        }
        let id = match crate::service::cgroup_identity(pid) {
            Some((name, _)) => ServiceId::new(&name),
            None => ServiceId::new(comm),
        };
        *rss.entry(id.clone()).or_default() += rss_bytes(pid).unwrap_or(0);
        let v = out.entry(id).or_default();
        if v.len() < max_pids {
            v.push(pid);
        }
    }
    let mut cmdlines = HashMap::new();
    let mut exes = HashMap::new();
    for (id, v) in out.iter_mut() {
        v.sort_unstable();
        if let Some(c) = v.first().and_then(|p| cmdline(*p)) {
            cmdlines.insert(id.clone(), c);
        }
        if let Some(e) = v.first().and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok()) {
            exes.insert(id.clone(), e.to_string_lossy().into_owned());
        }
    }
    ProcessTable { pids: out, cmdlines, rss, exes }
}

fn cmdline(pid: Pid) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut s: String =
        String::from_utf8_lossy(&raw).split('\0').filter(|a| !a.is_empty()).collect::<Vec<_>>().join(" ");
    if s.len() > MAX_CMDLINE {
        let mut cut = MAX_CMDLINE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    Some(s)
}

/// Whether `pid` is a kernel thread (`PF_KTHREAD` in `/proc/PID/stat`). Exited pids are not.
pub fn is_kernel_thread(pid: Pid) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // Fields after the parenthesised comm (which may itself hold spaces and parentheses):
    // state ppid pgrp session tty_nr tpgid flags.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return false };
    rest.split_whitespace().nth(6).and_then(|f| f.parse::<u64>().ok()).is_some_and(|f| f & PF_KTHREAD != 0)
}

/// Whether `pid` is alive.
pub fn alive(pid: Pid) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
