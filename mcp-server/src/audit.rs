//! The audit log: one JSON line per tool call, with who called what, how it went, how big the
//! answer was and how long it took. Rotated by size.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

/// One audit record.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// RFC 3339 UTC time the call finished.
    pub time: String,
    /// MCP session id (`stdio` for the stdio transport).
    pub session: &'a str,
    /// Who called.
    pub principal: &'a str,
    /// Transport: `stdio` or `http`.
    pub transport: &'a str,
    /// Tool name.
    pub tool: &'a str,
    /// Arguments as given.
    pub arguments: &'a serde_json::Value,
    /// `ok`, `tool_error`, `invalid_params`, `denied` or `error`.
    pub outcome: &'a str,
    /// Error message, when not ok.
    pub error: Option<&'a str>,
    /// Size of the serialized result, bytes.
    pub result_bytes: usize,
    /// Time spent in the call, milliseconds.
    pub latency_ms: f64,
}

/// Appends audit records to a file, rotating it to `PATH.1` past `max_bytes`.
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<Option<File>>,
}

impl AuditLog {
    /// An audit log at `path` (created if missing).
    pub fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<AuditLog> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(AuditLog { path, max_bytes, file: Mutex::new(Some(file)) })
    }

    /// Writes one record. Audit failures are logged, never turned into tool failures.
    pub fn write(&self, rec: &AuditRecord<'_>) {
        let Ok(mut line) = serde_json::to_vec(rec) else { return };
        line.push(b'\n');
        let Ok(mut guard) = self.file.lock() else { return };
        if let Err(e) = self.write_locked(&mut guard, &line) {
            tracing::warn!(path = %self.path.display(), error = %e, "audit log write failed");
        }
    }

    fn write_locked(&self, guard: &mut Option<File>, line: &[u8]) -> std::io::Result<()> {
        let size = guard.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            *guard = None;
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&self.path, rotated)?;
        }
        if guard.is_none() {
            *guard = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        }
        guard.as_mut().expect("opened above").write_all(line)
    }
}

/// Current UTC time as RFC 3339 with milliseconds, without a date library.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn writes_lines_and_rotates() {
        let dir = std::env::temp_dir().join(format!("bpfsight-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(path.clone(), 600).unwrap();
        let args = serde_json::json!({"window": "5m"});
        for _ in 0..5 {
            log.write(&AuditRecord {
                time: now_rfc3339(),
                session: "s",
                principal: "p",
                transport: "stdio",
                tool: "list_services",
                arguments: &args,
                outcome: "ok",
                error: None,
                result_bytes: 10,
                latency_ms: 0.1,
            });
        }
        let cur = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(dir.join("audit.jsonl.1")).unwrap();
        assert_eq!(cur.lines().count() + old.lines().count(), 5);
        for l in cur.lines().chain(old.lines()) {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["tool"], "list_services");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
