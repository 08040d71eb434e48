//! Service identity: which service a process belongs to.
//!
//! Today a service is a process name (`comm`). The type already carries where its identity
//! came from, so cgroup, systemd unit and container identities can be added without changing
//! the callers.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// The name users know a service by (`nginx`, `postgres`), cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ServiceId(Arc<str>);

impl ServiceId {
    /// A service id from a name.
    pub fn new(name: &str) -> Self {
        ServiceId(Arc::from(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is one of the pseudo-services for traffic with no owning process.
    pub fn is_pseudo(&self) -> bool {
        self.0.starts_with('[')
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a [`ServiceId`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// The process name (`/proc/PID/comm`, or the kernel's `comm` for exited processes).
    ProcessName,
    /// Work the kernel did with no owning process: traffic with no socket owner
    /// (`[no-socket]`, `[unattributed]`) and kernel threads (`[kernel]`).
    Kernel,
}

/// A process id (thread-group id).
pub type Pid = u32;

/// Turns a `comm` byte array into text.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Whether `comm` names a kernel thread (for threads that exited before we could look).
fn is_kernel_thread_name(comm: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "kworker/",
        "ksoftirqd/",
        "migration/",
        "rcu_",
        "cpuhp/",
        "idle_inject/",
        "irq/",
        "jbd2/",
        "kswapd",
        "kcompactd",
        "khugepaged",
        "kthreadd",
        "writeback",
        "kblockd",
        "watchdog/",
        "oom_reaper",
    ];
    PREFIXES.iter().any(|p| comm.starts_with(p))
}

/// Resolves (pid, kernel comm) pairs to services, caching answers so a process that has since
/// exited keeps the identity it had while alive.
#[derive(Default)]
pub struct Resolver {
    cache: HashMap<(Pid, [u8; 16]), (ServiceId, IdentitySource)>,
}

impl Resolver {
    /// The service kernel threads are attributed to.
    pub const KERNEL: &'static str = "[kernel]";

    /// Most entries the cache keeps before it starts over (it refills from live processes).
    const MAX_CACHE: usize = 65536;

    /// The service of `pid`, whose task was called `comm` when the kernel saw it.
    pub fn resolve(&mut self, pid: Pid, comm: &[u8; 16]) -> (ServiceId, IdentitySource) {
        if pid == 0 {
            return (ServiceId::new(&comm_str(comm)), IdentitySource::Kernel);
        }
        if self.cache.len() >= Self::MAX_CACHE {
            self.cache.clear();
        }
        self.cache
            .entry((pid, *comm))
            .or_insert_with(|| {
                // Kernel threads (kworker/1:2, jbd2/vda-8, ...) are one service, not dozens.
                // Short-lived ones may be gone already: then their name gives them away.
                let gone = !crate::procs::alive(pid);
                if crate::procs::is_kernel_thread(pid) || (gone && is_kernel_thread_name(&comm_str(comm))) {
                    return (ServiceId::new(Self::KERNEL), IdentitySource::Kernel);
                }
                // The kernel saw the thread's name; a service is named after its main thread.
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .ok()
                    .map(|s| s.trim_end().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| comm_str(comm));
                (ServiceId::new(&name), IdentitySource::ProcessName)
            })
            .clone()
    }

    /// Forgets pids that no longer exist, keeping the cache bounded over time.
    pub fn retain_live(&mut self, live: &dyn Fn(Pid) -> bool) {
        self.cache.retain(|(pid, _), _| live(*pid));
    }
}
