//! Errors of the collector.

use std::path::PathBuf;

/// Why the collector could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The recording could not be created.
    #[error("recording: {0}")]
    Journal(#[from] crate::journal::JournalError),
    /// The process lacks a capability the kernel requires.
    #[error(
        "permission denied: loading eBPF programs needs {missing}. Run bpfsight as root, or grant \
         the binary the capabilities: `sudo setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep \
         $(command -v bpfsight)` (kernel.unprivileged_bpf_disabled does not matter then)"
    )]
    PermissionDenied {
        /// Capability names, e.g. "CAP_BPF and CAP_PERFMON".
        missing: String,
    },
    /// A kernel interface the collector needs is not there.
    #[error("{what} is not available: {hint}")]
    Unsupported {
        /// What is missing.
        what: String,
        /// What to do about it.
        hint: String,
    },
    /// A tracepoint record does not have the layout the programs were built for.
    #[error(
        "tracepoint {category}:{name} field `{field}` is at offset {found}, the programs expect \
         {expected}: this kernel is not supported by this build of bpfsight"
    )]
    LayoutMismatch {
        /// Tracepoint category.
        category: String,
        /// Tracepoint name.
        name: String,
        /// Field name.
        field: String,
        /// Offset the programs read.
        expected: String,
        /// Offset in the running kernel.
        found: String,
    },
    /// Reading a kernel file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// aya refused to load the object or a program.
    #[error("loading eBPF {what}: {source}")]
    Load {
        /// Object, program or map.
        what: String,
        /// Cause, with aya's own context.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl CollectorError {
    pub(crate) fn load(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        let what = what.into();
        if is_permission_error(&e) {
            return CollectorError::PermissionDenied { missing: missing_caps() };
        }
        CollectorError::Load { what, source: Box::new(e) }
    }
}

/// Walks the error chain for EPERM. (EACCES is not a privilege problem here: it is how the
/// verifier rejects a program, and its log is what the user needs then.)
fn is_permission_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Names the capabilities this process is missing, from /proc/self/status.
pub(crate) fn missing_caps() -> String {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |c: u32| eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return "CAP_SYS_ADMIN or CAP_BPF + CAP_PERFMON (the kernel still refused; check \
                kernel.unprivileged_bpf_disabled and any LSM policy)"
            .into();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        "CAP_BPF and CAP_PERFMON (present, but the kernel still refused; check LSM policy)".into()
    } else {
        format!("{} (or root)", missing.join(" and "))
    }
}

/// A file of bpfsight's own (a recording, saved history) that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file or its directory could not be created, written or read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The file is not one this build can read here.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}
