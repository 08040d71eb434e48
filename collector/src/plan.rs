//! Which programs to attach on the running kernel, and what is lost without the others.
//!
//! An older kernel lacks some hooks (`sock_send_length` came in Linux 6.3) or formats a record
//! differently. Rather than give up eBPF for all of them, the loader leaves out each program
//! whose hook is missing or whose record does not match, and the programs that are no use
//! without it (the per-thread batches of execs, exits and page allocations are filed by the
//! scheduler hook, a block request's latency needs both its issue and its completion). What is
//! left out is reported with the signal it would have given, so answers can say what they
//! cannot see instead of showing zeros.

use bpfsight_common::programs::{Hook, Program};
use serde::{Deserialize, Serialize};

/// Environment variable naming hooks to treat as missing (comma-separated, `category:event`
/// or a bare event name): how bpfsight behaves on a kernel without them, seen on this one.
pub const HIDE_HOOKS_ENV: &str = "BPFSIGHT_HIDE_HOOKS";

/// A family of signals a user can turn off (`bpfsight serve --without syscalls`), for a host
/// where its hooks cost more than its answers are worth: the per-syscall hook, for one, puts
/// every syscall on the machine on the kernel's slower traced path.
///
/// (De)serialised by [`SignalGroup::name`] and [`SignalGroup::parse`], so a config file and the
/// command line accept the same names and refuse a wrong one with the same message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum SignalGroup {
    /// Every TCP program: connections, retransmits, resets, sends.
    Tcp,
    /// Only the per-send counting (`sock_send_length`, on every `sendmsg`).
    TcpSends,
    /// Run-queue latency, on-CPU time and context switches, and with them what the scheduler
    /// hook files: execs, exits and page allocations.
    Scheduler,
    /// Execs and exits.
    Process,
    /// Page allocations.
    Memory,
    /// OOM kills.
    Oom,
    /// Block IO.
    Block,
    /// Failed syscalls and the latency of timed syscalls.
    Syscalls,
}

impl SignalGroup {
    /// Every group, in the order help texts list them.
    pub const ALL: [SignalGroup; 8] = [
        SignalGroup::Tcp,
        SignalGroup::TcpSends,
        SignalGroup::Scheduler,
        SignalGroup::Process,
        SignalGroup::Memory,
        SignalGroup::Oom,
        SignalGroup::Block,
        SignalGroup::Syscalls,
    ];

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            SignalGroup::Tcp => "tcp",
            SignalGroup::TcpSends => "tcp-sends",
            SignalGroup::Scheduler => "scheduler",
            SignalGroup::Process => "process",
            SignalGroup::Memory => "memory",
            SignalGroup::Oom => "oom",
            SignalGroup::Block => "block",
            SignalGroup::Syscalls => "syscalls",
        }
    }

    /// Parses a name users write; the error lists the names there are.
    pub fn parse(s: &str) -> Result<SignalGroup, String> {
        let s = s.trim();
        SignalGroup::ALL.into_iter().find(|g| g.name() == s).ok_or_else(|| {
            let names: Vec<&str> = SignalGroup::ALL.iter().map(|g| g.name()).collect();
            format!("{s:?} is not a signal group; the groups are {}", names.join(", "))
        })
    }
}

impl TryFrom<String> for SignalGroup {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        SignalGroup::parse(&s)
    }
}

impl From<SignalGroup> for &'static str {
    fn from(g: SignalGroup) -> Self {
        g.name()
    }
}

impl std::fmt::Display for SignalGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A signal bpfsight cannot collect on this kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnavailableSignal {
    /// What is not collected, e.g. "TCP sends and bytes sent".
    pub signal: String,
    /// The program left out (`procfs` for what the /proc source cannot give).
    pub program: String,
    /// Why: the missing hook or record field, or the program it depends on.
    pub reason: String,
}

/// What each program collects, and the programs it cannot work without.
struct Role {
    program: &'static str,
    signal: &'static str,
    needs: &'static [&'static str],
    /// The groups whose `--without` turns the program off.
    groups: &'static [SignalGroup],
}

use SignalGroup as G;

const ROLES: &[Role] = &[
    Role {
        program: "inet_sock_set_state",
        signal: "TCP connections (opened, closed, failed connects, durations, handshake latency) and the owner of new sockets",
        needs: &[],
        groups: &[G::Tcp],
    },
    Role { program: "tcp_retransmit_skb", signal: "TCP retransmits", needs: &[], groups: &[G::Tcp] },
    Role { program: "tcp_receive_reset", signal: "TCP resets received", needs: &[], groups: &[G::Tcp] },
    Role { program: "tcp_send_reset", signal: "TCP resets sent", needs: &[], groups: &[G::Tcp] },
    Role {
        program: "tcp_destroy_sock",
        signal: "release of destroyed sockets",
        needs: &[],
        groups: &[G::Tcp],
    },
    // User space learns that a socket is gone, and frees its send counters, from the socket
    // table that tcp_destroy_sock clears.
    Role {
        program: "sock_send_length",
        signal: "TCP sends and bytes sent",
        needs: &["tcp_destroy_sock"],
        groups: &[G::Tcp, G::TcpSends],
    },
    Role {
        program: "sched_switch",
        signal: "run-queue latency, on-CPU time and context switches",
        needs: &[],
        groups: &[G::Scheduler],
    },
    // These three mark the thread's slot; its next switch files them.
    Role { program: "sched_process_exec", signal: "execs", needs: &["sched_switch"], groups: &[G::Process] },
    Role {
        program: "sched_process_exit",
        signal: "process exits (failed, killed)",
        needs: &["sched_switch"],
        groups: &[G::Process],
    },
    Role {
        program: "mm_page_alloc",
        signal: "page allocations",
        needs: &["sched_switch"],
        groups: &[G::Memory],
    },
    Role { program: "mark_victim", signal: "OOM kills", needs: &[], groups: &[G::Oom] },
    Role {
        program: "block_rq_issue",
        signal: "block IO (bytes, operations, latency)",
        needs: &["block_rq_complete"],
        groups: &[G::Block],
    },
    Role {
        program: "block_rq_complete",
        signal: "block IO (bytes, operations, latency)",
        needs: &["block_rq_issue"],
        groups: &[G::Block],
    },
    Role {
        program: "sys_exit",
        signal: "failed syscalls, and the latency of timed syscalls",
        needs: &[],
        groups: &[G::Syscalls],
    },
    // The entry stores the time; the exit hook takes it.
    Role {
        program: "sys_enter_slow",
        signal: "latency of timed syscalls",
        needs: &["sys_exit"],
        groups: &[G::Syscalls],
    },
];

/// The program a benchmark baseline (`baseline_NAME`, `baseline_tp_NAME`) stands in for; a real
/// program stands for itself.
fn stands_for(name: &str) -> &str {
    name.trim_start_matches("baseline_tp_").trim_start_matches("baseline_")
}

/// The signal a program gives on `hook` (a timed syscall's entry names its call).
fn signal_of(p: &Program) -> String {
    match (p.name, p.hook) {
        ("sys_enter_slow", Hook::Tracepoint(_, event)) => {
            format!("latency of {}", event.trim_start_matches("sys_enter_"))
        }
        (name, _) => {
            let name = stands_for(name);
            ROLES
                .iter()
                .find(|r| r.program == name)
                .map_or_else(|| name.to_string(), |r| r.signal.to_string())
        }
    }
}

fn needs_of(name: &str) -> &'static [&'static str] {
    ROLES.iter().find(|r| r.program == name).map_or(&[], |r| r.needs)
}

/// The first group in `without` that turns `p` (or the program a baseline stands in for) off.
fn turned_off_by(p: &Program, without: &[SignalGroup]) -> Option<SignalGroup> {
    let role = ROLES.iter().find(|r| r.program == stands_for(p.name))?;
    role.groups.iter().copied().find(|g| without.contains(g))
}

/// Whether `hidden` (from [`HIDE_HOOKS_ENV`]) names `hook`.
fn is_hidden(hidden: &[String], hook: Hook) -> bool {
    let (cat, event) = match hook {
        Hook::Tracepoint(cat, event) => (Some(cat), event),
        Hook::BtfTracepoint(event) | Hook::RawTracepoint(event) => (None, event),
    };
    hidden.iter().any(|h| match h.split_once(':') {
        Some((c, e)) => Some(c) == cat && e == event,
        None => h == event,
    })
}

/// The hooks [`HIDE_HOOKS_ENV`] names.
pub fn hidden_hooks() -> Vec<String> {
    std::env::var(HIDE_HOOKS_ENV)
        .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

/// The programs to attach, and the signals lost with the ones left out.
#[derive(Debug, Default)]
pub struct Plan {
    /// Programs (one entry per hook) whose hook is there and whose dependencies are too.
    pub attach: Vec<Program>,
    /// What is not collected, and why.
    pub unavailable: Vec<UnavailableSignal>,
}

/// Splits `wanted` into what attaches and what does not: a program turned off by a group in
/// `without`, hidden, or whose hook `check` refuses (with the reason) is left out, and then,
/// until nothing changes, every program that needs one left out on all its hooks.
pub fn plan(
    wanted: &[Program],
    without: &[SignalGroup],
    hidden: &[String],
    mut check: impl FnMut(Hook) -> Result<(), String>,
) -> Plan {
    let mut out = Plan::default();
    let left_out = |p: &Program, reason: String, out: &mut Plan| {
        let signal = signal_of(p);
        // One line per signal and reason: both block programs say the same.
        if !out.unavailable.iter().any(|u| u.signal == signal && u.program == p.name) {
            out.unavailable.push(UnavailableSignal { signal, program: p.name.to_string(), reason });
        }
    };
    for p in wanted {
        let verdict = if let Some(g) = turned_off_by(p, without) {
            Err(format!("turned off by --without {g}"))
        } else if is_hidden(hidden, p.hook) {
            Err(format!("{} is hidden by {HIDE_HOOKS_ENV}", hook_name(p.hook)))
        } else {
            check(p.hook)
        };
        match verdict {
            Ok(()) => out.attach.push(*p),
            Err(reason) => left_out(p, reason, &mut out),
        }
    }
    loop {
        let attached = |name: &str| out.attach.iter().any(|p| p.name == name);
        let Some(i) = out.attach.iter().position(|p| {
            // Baselines count events; they need nothing else.
            stands_for(p.name) == p.name && needs_of(p.name).iter().any(|n| !attached(n))
        }) else {
            break;
        };
        let p = out.attach.remove(i);
        let missing: Vec<&str> =
            needs_of(p.name).iter().copied().filter(|n| !out.attach.iter().any(|q| q.name == *n)).collect();
        let reason = format!("needs {}, which is not attached", missing.join(", "));
        left_out(&p, reason, &mut out);
    }
    out
}

/// How a hook is named in messages.
pub fn hook_name(hook: Hook) -> String {
    match hook {
        Hook::Tracepoint(cat, event) => format!("tracepoint {cat}:{event}"),
        Hook::BtfTracepoint(event) => format!("BTF tracepoint {event}"),
        Hook::RawTracepoint(event) => format!("raw tracepoint {event}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfsight_common::programs::{HOST, TCP};

    fn all() -> Vec<Program> {
        [TCP, HOST].concat()
    }

    #[test]
    fn every_program_has_a_role() {
        for p in all() {
            assert!(ROLES.iter().any(|r| r.program == p.name), "{} has no role", p.name);
        }
        for r in ROLES {
            for n in r.needs {
                assert!(ROLES.iter().any(|q| q.program == *n), "{} needs unknown {n}", r.program);
            }
        }
    }

    #[test]
    fn a_kernel_with_every_hook_attaches_everything() {
        let p = plan(&all(), &[], &[], |_| Ok(()));
        assert_eq!(p.attach.len(), all().len());
        assert!(p.unavailable.is_empty());
    }

    #[test]
    fn a_missing_hook_leaves_out_its_program_and_those_that_need_it() {
        // Linux 6.1: no sock_send_length. And suppose no sched_switch BTF tracepoint either.
        let p = plan(&all(), &[], &[], |h| match h {
            Hook::RawTracepoint("sock_send_length") | Hook::BtfTracepoint("sched_switch") => {
                Err("not in this kernel".into())
            }
            _ => Ok(()),
        });
        let out: Vec<&str> = p.unavailable.iter().map(|u| u.program.as_str()).collect();
        for name in
            ["sock_send_length", "sched_switch", "sched_process_exec", "sched_process_exit", "mm_page_alloc"]
        {
            assert!(out.contains(&name), "{name} not left out: {out:?}");
            assert!(!p.attach.iter().any(|q| q.name == name), "{name} attached");
        }
        assert!(p.attach.iter().any(|q| q.name == "inet_sock_set_state"));
        assert!(p.attach.iter().any(|q| q.name == "sys_exit"));
        let exec = p.unavailable.iter().find(|u| u.program == "sched_process_exec").unwrap();
        assert_eq!(exec.reason, "needs sched_switch, which is not attached");
        assert_eq!(exec.signal, "execs");
    }

    #[test]
    fn one_missing_syscall_entry_loses_only_that_call() {
        let p = plan(&all(), &[], &[], |h| match h {
            Hook::Tracepoint("syscalls", "sys_enter_sync_file_range") => Err("absent".into()),
            _ => Ok(()),
        });
        assert_eq!(p.unavailable.len(), 1);
        assert_eq!(p.unavailable[0].signal, "latency of sync_file_range");
        assert_eq!(p.attach.iter().filter(|q| q.name == "sys_enter_slow").count(), 5);
        // Without the exit hook, no entry is any use.
        let p = plan(&all(), &[], &["sys_exit".to_string()], |_| Ok(()));
        assert!(!p.attach.iter().any(|q| q.name == "sys_enter_slow" || q.name == "sys_exit"));
        assert!(p.unavailable[0].reason.contains("hidden by BPFSIGHT_HIDE_HOOKS"));
    }

    #[test]
    fn a_group_turned_off_leaves_out_its_programs_and_those_that_need_them() {
        let p = plan(&all(), &[SignalGroup::Syscalls, SignalGroup::Scheduler], &[], |_| Ok(()));
        let out: Vec<&str> = p.unavailable.iter().map(|u| u.program.as_str()).collect();
        for name in ["sys_exit", "sys_enter_slow", "sched_switch", "sched_process_exit", "mm_page_alloc"] {
            assert!(out.contains(&name), "{name} not left out: {out:?}");
            assert!(!p.attach.iter().any(|q| q.name == name), "{name} attached");
        }
        let exit = p.unavailable.iter().find(|u| u.program == "sys_exit").unwrap();
        assert_eq!(exit.reason, "turned off by --without syscalls");
        assert!(p.attach.iter().any(|q| q.name == "inet_sock_set_state"));
        assert!(p.attach.iter().any(|q| q.name == "block_rq_issue"));

        // tcp-sends is part of tcp; a baseline goes with the program it stands in for.
        let set = [TCP, bpfsight_common::programs::BASELINE].concat();
        let p = plan(&set, &[SignalGroup::TcpSends], &[], |_| Ok(()));
        let attached: Vec<&str> = p.attach.iter().map(|q| q.name).collect();
        assert!(!attached.contains(&"sock_send_length") && !attached.contains(&"baseline_sock_send_length"));
        assert!(attached.contains(&"tcp_destroy_sock"));
        let p = plan(&set, &[SignalGroup::Tcp], &[], |_| Ok(()));
        assert!(p.attach.is_empty(), "{:?}", p.attach);
    }

    #[test]
    fn group_names_parse_and_a_wrong_one_lists_them() {
        for g in SignalGroup::ALL {
            assert_eq!(SignalGroup::parse(g.name()), Ok(g));
        }
        // Config files read the same names, and refuse with the same message.
        assert_eq!(serde_json::to_string(&SignalGroup::TcpSends).unwrap(), "\"tcp-sends\"");
        assert_eq!(serde_json::from_str::<SignalGroup>("\"tcp-sends\"").unwrap(), SignalGroup::TcpSends);
        let e = serde_json::from_str::<SignalGroup>("\"sycalls\"").unwrap_err().to_string();
        assert!(e.contains("\"sycalls\" is not a signal group; the groups are tcp,"), "{e}");
        let e = SignalGroup::parse("sycalls").unwrap_err();
        assert_eq!(
            e,
            "\"sycalls\" is not a signal group; the groups are tcp, tcp-sends, scheduler, process, memory, oom, block, syscalls"
        );
    }

    #[test]
    fn hidden_hooks_match_by_event_or_category_and_event() {
        let hidden = vec!["tcp:tcp_send_reset".to_string(), "sock_send_length".to_string()];
        assert!(is_hidden(&hidden, Hook::Tracepoint("tcp", "tcp_send_reset")));
        assert!(!is_hidden(&hidden, Hook::Tracepoint("sock", "tcp_send_reset")));
        assert!(is_hidden(&hidden, Hook::RawTracepoint("sock_send_length")));
        assert!(!is_hidden(&hidden, Hook::BtfTracepoint("tcp_send_reset")));
    }
}
