//! Service identity: which service a process belongs to.
//!
//! In order: the Kubernetes pod or container its cgroup path names, the systemd unit its cgroup
//! path names, else its process name. Kernel threads are one service, `[kernel]`. Answers are
//! cached per (pid, name) so a process that has since exited keeps the identity it had, and a
//! recycled pid with another name is resolved afresh.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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

impl<'de> Deserialize<'de> for ServiceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ServiceId::new(&String::deserialize(d)?))
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a [`ServiceId`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// A Kubernetes pod (`pod:<uid>`), from a `kubepods` cgroup path.
    KubernetesPod,
    /// A container (`container:<12-hex id>`), from a docker / containerd / cri-o / podman
    /// cgroup path.
    Container,
    /// A systemd unit (`nginx.service`), from the cgroup path.
    SystemdUnit,
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

/// The identity a cgroup path gives, if any: a pod, a container, or a systemd service unit.
/// Session and user-manager scopes name no service (their processes are named by process).
pub fn from_cgroup_path(path: &str) -> Option<(String, IdentitySource)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let is_hex_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if segs.iter().any(|s| s.starts_with("kubepods")) {
        for s in segs.iter().rev() {
            // cgroupfs driver: `pod<uid>`; systemd driver: `kubepods-burstable-pod<uid_with_underscores>.slice`.
            let uid = s
                .strip_prefix("pod")
                .or_else(|| s.rsplit_once("-pod").map(|(_, u)| u))
                .map(|u| u.trim_end_matches(".slice").replace('_', "-"));
            if let Some(uid) = uid.filter(|u| u.len() >= 32) {
                return Some((format!("pod:{uid}"), IdentitySource::KubernetesPod));
            }
        }
    }
    for s in segs.iter().rev() {
        let id = s
            .strip_suffix(".scope")
            .and_then(|x| {
                ["docker-", "cri-containerd-", "crio-", "libpod-"].iter().find_map(|p| x.strip_prefix(p))
            })
            .or(Some(*s).filter(|x| is_hex_id(x)));
        if let Some(id) = id.filter(|x| is_hex_id(x)) {
            return Some((format!("container:{}", &id[..12]), IdentitySource::Container));
        }
    }
    segs.iter()
        .rev()
        .find(|s| s.ends_with(".service") && !s.starts_with("user@"))
        .map(|s| (s.to_string(), IdentitySource::SystemdUnit))
}

/// The identity `/proc/PID/cgroup` gives `pid`: the unified (v2) path, or on hybrid hosts the
/// named systemd hierarchy, or any v1 path that names a container.
pub fn cgroup_identity(pid: Pid) -> Option<(String, IdentitySource)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut paths: Vec<(u8, &str)> = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rank = match controllers {
            "" => 0,
            "name=systemd" => 1,
            _ => 2,
        };
        paths.push((rank, path));
    }
    paths.sort_by_key(|(r, _)| *r);
    paths.iter().find_map(|(_, p)| from_cgroup_path(p))
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
                if let Some((name, source)) = cgroup_identity(pid) {
                    return (ServiceId::new(&name), source);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_name_pods_containers_and_units() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases = [
            ("/system.slice/nginx.service", Some(("nginx.service".to_string(), IdentitySource::SystemdUnit))),
            (
                &format!("/system.slice/docker-{id}.scope") as &str,
                Some(("container:0123456789ab".into(), IdentitySource::Container)),
            ),
            (&format!("/docker/{id}"), Some(("container:0123456789ab".into(), IdentitySource::Container))),
            (
                &format!("/kubepods/burstable/pod4a6e8f1c-1111-2222-3333-444455556666/{id}"),
                Some(("pod:4a6e8f1c-1111-2222-3333-444455556666".into(), IdentitySource::KubernetesPod)),
            ),
            (
                &format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod4a6e8f1c_1111_2222_3333_444455556666.slice/cri-containerd-{id}.scope"
                ),
                Some(("pod:4a6e8f1c-1111-2222-3333-444455556666".into(), IdentitySource::KubernetesPod)),
            ),
            ("/user.slice/user-0.slice/user@0.service/app.slice/app-foo.scope", None),
            ("/user.slice/user-0.slice/session-3.scope", None),
            ("/", None),
            ("/process_api/daf1bb4225cf5fc2daa9e315d1b2bb55", None),
        ];
        for (path, want) in cases {
            assert_eq!(from_cgroup_path(path), want, "{path}");
        }
    }
}
