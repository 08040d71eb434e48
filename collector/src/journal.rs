//! Recordings: every change the collector makes to its [`Store`], as JSON lines, so a
//! recording replays into a store that answers every query exactly as the live one did.
//!
//! A recording starts with a header line, then one line per change:
//!
//! ```text
//! {"bpfsight_recording":1,"source":"ebpf","started_at":1795871000}
//! {"tcp":{"t":1795871001,"service":"nginx","identity":"process_name","pid":42,"peer":"10.0.0.2:5432","d":{...}}}
//! {"host":{"t":1795871001,"service":"nginx","identity":"process_name","pids":[42],"d":{...}}}
//! {"event":{"seq":7,"time_ms":1795871001234,"kind":"oom_kill","service":"nginx","pid":42,...}}
//! {"procs":{"pids":{...},"cmdlines":{...},"rss":{...},"exes":{...}}}
//! {"tick":{"now":1795871001,"health":{...}}}
//! ```
//!
//! Lines are flushed once per poll, so a recording cut short (crash, kill) loses at most the
//! last second; a torn last line is ignored on replay.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::HostCounters;
use crate::procs::ProcessTable;
use crate::service::{IdentitySource, Pid, ServiceId};
use crate::store::{Event, Health, Store};
use crate::tcp::{Peer, TcpCounters};

/// Format version written in the header; replay refuses others.
pub const VERSION: u32 = 1;

/// Why a recording could not be written or read.
pub type JournalError = crate::error::FileError;

#[derive(Serialize, Deserialize)]
struct Header {
    bpfsight_recording: u32,
    source: String,
    started_at: u64,
}

#[derive(Serialize, Deserialize)]
struct TcpRecord {
    t: u64,
    service: ServiceId,
    identity: IdentitySource,
    pid: Pid,
    peer: Peer,
    d: TcpCounters,
}

#[derive(Serialize, Deserialize)]
struct HostRecord {
    t: u64,
    service: ServiceId,
    identity: IdentitySource,
    pids: Vec<Pid>,
    d: HostCounters,
}

#[derive(Serialize, Deserialize)]
struct Tick {
    now: u64,
    health: Health,
}

/// One line after the header.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Tcp(TcpRecord),
    Host(HostRecord),
    Event(Event),
    Procs(ProcessTable),
    Tick(Tick),
}

/// Appends the collector's changes to a recording.
pub struct JournalWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// The process table last recorded: tables are recorded only when they change.
    last_table: Option<ProcessTable>,
    /// The first write error; later writes are skipped and the error is reported once.
    failed: bool,
}

impl JournalWriter {
    /// Creates (truncates) the recording at `path` and writes its header.
    pub fn create(path: &Path, source: &str, started_at: u64) -> Result<Self, JournalError> {
        let io = |cause| JournalError::Io { path: path.to_path_buf(), cause };
        let file = File::create(path).map_err(io)?;
        let mut w = JournalWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            last_table: None,
            failed: false,
        };
        let header = Header { bpfsight_recording: VERSION, source: source.to_string(), started_at };
        serde_json::to_writer(&mut w.out, &header).map_err(|e| io(e.into()))?;
        w.out.write_all(b"\n").map_err(io)?;
        Ok(w)
    }

    fn line(&mut self, line: &Line) {
        if self.failed {
            return;
        }
        let r = serde_json::to_writer(&mut self.out, line)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = r {
            self.failed = true;
            tracing::error!(path = %self.path.display(), error = %e, "recording stopped");
        }
    }

    /// Records [`Store::record`].
    pub fn tcp(
        &mut self,
        t: u64,
        service: &ServiceId,
        identity: IdentitySource,
        pid: Pid,
        peer: Peer,
        d: TcpCounters,
    ) {
        self.line(&Line::Tcp(TcpRecord { t, service: service.clone(), identity, pid, peer, d }));
    }

    /// Records [`Store::record_host`].
    pub fn host(
        &mut self,
        t: u64,
        service: &ServiceId,
        identity: IdentitySource,
        pids: &[Pid],
        d: &HostCounters,
    ) {
        let r = HostRecord { t, service: service.clone(), identity, pids: pids.to_vec(), d: d.clone() };
        self.line(&Line::Host(r));
    }

    /// Records [`Store::push_event`].
    pub fn event(&mut self, e: &Event) {
        self.line(&Line::Event(e.clone()));
    }

    /// Records [`Store::set_processes`], if the table changed since the last one recorded.
    pub fn procs(&mut self, p: &ProcessTable) {
        if self.last_table.as_ref() != Some(p) {
            self.line(&Line::Procs(p.clone()));
            self.last_table = Some(p.clone());
        }
    }

    /// Records [`Store::tick`] with the health at that moment, and flushes.
    pub fn tick(&mut self, now: u64, health: &Health) {
        self.line(&Line::Tick(Tick { now, health: health.clone() }));
        if !self.failed
            && let Err(e) = self.out.flush()
        {
            self.failed = true;
            tracing::error!(path = %self.path.display(), error = %e, "recording stopped");
        }
    }
}

/// Reads a recording into a store, as the live collector had it at the recording's last tick.
/// The store's source reads `replay` so answers say where they came from.
pub fn replay(path: &Path) -> Result<Store, JournalError> {
    let io = |cause| JournalError::Io { path: path.to_path_buf(), cause };
    let format = |reason: String| JournalError::Format { path: path.to_path_buf(), reason };
    let mut lines = BufReader::new(File::open(path).map_err(io)?).lines();
    let first = lines.next().ok_or_else(|| format("empty file".into()))?.map_err(io)?;
    let header: Header = serde_json::from_str(&first)
        .map_err(|e| format(format!("not a bpfsight recording (first line: {e})")))?;
    if header.bpfsight_recording != VERSION {
        return Err(format(format!(
            "recording format {} is not supported by this build (it reads {VERSION})",
            header.bpfsight_recording
        )));
    }
    let mut store = Store::new(header.started_at);
    store.health_mut().started_at = header.started_at;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in lines.enumerate() {
        let line = line.map_err(io)?;
        // Only the last line may be torn (the recorder was killed mid-write).
        if let Some((n, e)) = pending.take() {
            return Err(format(format!("line {}: {e}", n + 2)));
        }
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Tcp(r)) => store.record(r.t, &r.service, r.identity, r.pid, r.peer, r.d),
            Ok(Line::Host(r)) => store.record_host(r.t, &r.service, r.identity, &r.pids, &r.d),
            Ok(Line::Event(e)) => {
                store.push_event(e);
            }
            Ok(Line::Procs(p)) => store.set_processes(p),
            Ok(Line::Tick(t)) => {
                store.tick(t.now);
                *store.health_mut() = Health { source: "replay", ..t.health };
            }
            Err(e) => pending = Some((i, e.to_string())),
        }
    }
    if let Some((n, e)) = pending {
        tracing::warn!(path = %path.display(), line = n + 2, error = %e, "ignoring a torn last line");
    }
    store.health_mut().source = "replay";
    Ok(store)
}
