//! Prepares the machine for the programs: privileges, kernel filesystems, tracepoint layouts.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use bpfsight_common::layout;
use bpfsight_common::programs::Hook;

use crate::error::{CollectorError, missing_caps};

/// Where tracefs is (or will be) mounted.
const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS: &str = "/sys/kernel/debug";
const BPFFS: &str = "/sys/fs/bpf";

/// Fails early, naming the capabilities, when this process cannot load BPF programs.
pub fn check_privileges() -> Result<(), CollectorError> {
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_PERFMON: u64 = 1 << 38;
    const CAP_BPF: u64 = 1 << 39;
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|source| CollectorError::Io { path: "/proc/self/status".into(), source })?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let ok = eff & CAP_SYS_ADMIN != 0 || (eff & CAP_BPF != 0 && eff & CAP_PERFMON != 0);
    if ok { Ok(()) } else { Err(CollectorError::PermissionDenied { missing: missing_caps() }) }
}

/// Mounts tracefs and bpffs where a fresh machine may lack them. Returns the tracefs root.
pub fn ensure_mounts() -> Result<PathBuf, CollectorError> {
    let tracing = Path::new(TRACEFS);
    if !tracing.join("events").is_dir() {
        mount("tracefs", TRACEFS, "tracefs");
    }
    if tracing.join("events").is_dir() {
        if !Path::new(BPFFS).join(".").exists() || !is_mounted(BPFFS) {
            mount("bpf", BPFFS, "bpf");
        }
        return Ok(tracing.to_path_buf());
    }
    // Old layout: tracefs under debugfs.
    if !Path::new(DEBUGFS).join("tracing/events").is_dir() {
        mount("debugfs", DEBUGFS, "debugfs");
    }
    let legacy = Path::new(DEBUGFS).join("tracing");
    if legacy.join("events").is_dir() {
        return Ok(legacy);
    }
    Err(CollectorError::Unsupported {
        what: "tracefs".into(),
        hint: format!(
            "could not find or mount it at {TRACEFS}; mount it with `mount -t tracefs tracefs {TRACEFS}`"
        ),
    })
}

fn is_mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(path)))
        .unwrap_or(false)
}

fn mount(src: &str, target: &str, fstype: &str) {
    let (Ok(s), Ok(t), Ok(f)) = (CString::new(src), CString::new(target), CString::new(fstype)) else {
        return;
    };
    // SAFETY: valid NUL-terminated strings; failure is reported through the return value.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        tracing::info!(target, fstype, "mounted");
    } else {
        tracing::debug!(target, fstype, err = %std::io::Error::last_os_error(), "mount failed");
    }
}

/// Lifts RLIMIT_MEMLOCK for kernels that still charge BPF maps against it (before 5.11).
pub fn raise_memlock() {
    let r = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } != 0 {
        tracing::debug!("setrlimit(RLIMIT_MEMLOCK) failed; fine on kernels >= 5.11");
    }
}

/// Why the running kernel may not have `hook`: the hook as named in messages, and the reason.
pub fn missing_hook_reason(hook: Hook) -> (String, &'static str) {
    let why = match hook {
        Hook::Tracepoint("syscalls", _) => {
            "this kernel was built without syscall tracepoints (CONFIG_FTRACE_SYSCALLS)"
        }
        Hook::Tracepoint(..) => "this kernel does not have it (bpfsight's full set needs Linux 6.3 or later)",
        Hook::BtfTracepoint(_) | Hook::RawTracepoint(_) => {
            "this kernel's BTF does not list it (bpfsight's full set needs Linux 6.3 or later)"
        }
    };
    (crate::plan::hook_name(hook), why)
}

/// The error for a hook the running kernel does not have, saying why that may be and what to
/// do (the `Unsupported` kind, so `--source auto` falls back to /proc).
pub fn missing_hook(hook: Hook) -> CollectorError {
    let (what, why) = missing_hook_reason(hook);
    CollectorError::Unsupported {
        what,
        hint: format!("{why}; `--source procfs`, or the default `--source auto`, answers from /proc instead"),
    }
}

/// Checks every field the programs read from tracepoint `cat:name`'s record against the
/// running kernel's format file.
pub fn check_layout(tracefs: &Path, cat: &str, name: &str) -> Result<(), CollectorError> {
    let mut fields = layout::FIELDS.iter().filter(|f| f.0 == cat && f.1 == name).peekable();
    if fields.peek().is_none() {
        return Ok(());
    }
    let path = tracefs.join("events").join(cat).join(name).join("format");
    let text =
        std::fs::read_to_string(&path).map_err(|e| CollectorError::Io { path: path.clone(), source: e })?;
    for &(_, _, field, offset, size) in fields {
        match find_field(&text, field) {
            Some((o, s)) if o == offset && s == size => {}
            found => {
                return Err(CollectorError::LayoutMismatch {
                    category: cat.into(),
                    name: name.into(),
                    field: field.into(),
                    expected: format!("{offset} (size {size})"),
                    found: found.map_or("absent".into(), |(o, s)| format!("{o} (size {s})")),
                });
            }
        }
    }
    Ok(())
}

/// Finds `field:<type> <name>[...]; offset:N; size:M;` in a format file.
fn find_field(format: &str, name: &str) -> Option<(usize, usize)> {
    for line in format.lines() {
        let line = line.trim();
        let Some(decl) = line.strip_prefix("field:") else { continue };
        let mut parts = decl.split(';').map(str::trim);
        let decl = parts.next()?;
        let ident = decl.rsplit(' ').next()?.split('[').next()?;
        if ident != name {
            continue;
        }
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        return Some((offset?, size?));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_format_lines() {
        let f = "name: x\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
                 \tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n";
        assert_eq!(find_field(f, "skaddr"), Some((8, 8)));
        assert_eq!(find_field(f, "saddr_v6"), Some((40, 16)));
        assert_eq!(find_field(f, "daddr"), None);
    }

    /// A record laid out differently is a `LayoutMismatch` naming the field; one with every
    /// field where the program reads it passes. Real format files, in a made-up tracefs.
    #[test]
    fn a_moved_record_field_is_named() {
        let root = std::env::temp_dir().join(format!("bpfsight-layout-{}", std::process::id()));
        let dir = root.join("events/tcp/tcp_send_reset");
        std::fs::create_dir_all(&dir).unwrap();
        let fields: Vec<_> = layout::FIELDS.iter().filter(|f| f.1 == "tcp_send_reset").collect();
        let write = |shift: usize| {
            let mut text = String::from("name: tcp_send_reset\nformat:\n");
            for (i, f) in fields.iter().enumerate() {
                let off = if i == 0 { f.3 + shift } else { f.3 };
                text += &format!("\tfield:__u8 {}[{}];\toffset:{off};\tsize:{};\tsigned:0;\n", f.2, f.4, f.4);
            }
            std::fs::write(dir.join("format"), text).unwrap();
        };
        write(0);
        check_layout(&root, "tcp", "tcp_send_reset").expect("matching layout");
        write(8);
        let e = check_layout(&root, "tcp", "tcp_send_reset").unwrap_err();
        assert!(matches!(e, CollectorError::LayoutMismatch { .. }), "{e:?}");
        assert!(e.to_string().contains(fields[0].2), "{e}");
        // Tracepoints whose records no program reads need no format file.
        check_layout(&root, "sched", "sched_switch").expect("nothing to check");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
