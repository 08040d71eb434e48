//! The live process table from /proc, grouped by service.

use std::collections::HashMap;

use crate::service::{Pid, ServiceId};

/// Scans /proc: live processes by service name (pids sorted, at most `max_pids` each).
pub fn scan(max_pids: usize) -> HashMap<ServiceId, Vec<Pid>> {
    let mut out: HashMap<ServiceId, Vec<Pid>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<Pid>().ok()) else { continue };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
        let comm = comm.trim_end();
        // Kernel threads have no memory map; they are not services.
        if is_kernel_thread(pid) {
            continue;
        }
        let v = out.entry(ServiceId::new(comm)).or_default();
        if v.len() < max_pids {
            v.push(pid);
        }
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

fn is_kernel_thread(pid: Pid) -> bool {
    // /proc/PID/exe of a kernel thread cannot be read (ENOENT); cmdline is empty.
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| c.is_empty()).unwrap_or(true)
}

/// Whether `pid` is alive.
pub fn alive(pid: Pid) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
