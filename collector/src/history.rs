//! History kept across restarts: a live collector's series, events and what each service
//! ran, saved to the data directory now and then and when it stops, and restored when it
//! starts. Without this, every upgrade or reboot would wipe the seven days of history the
//! store is built to keep, and "have we seen this before?" would have nothing to look at.
//!
//! One file per source (`history-ebpf.bin`, `history-procfs.bin`: the two are not the same
//! measurement), laid out as
//!
//! ```text
//! "BPFSIGHT-HISTORY" | version u32 | body length u64 | CRC-32 of the body u32 | body
//! ```
//!
//! little-endian, the body in postcard. A save goes to a temporary file that is `fsync`ed and
//! renamed over the old one, so a crash leaves the previous save whole. Only one process
//! saves a file: the first to take an exclusive `flock` on `<file>.lock`. Another collector
//! on the same data directory (a `bpfsight call` next to a running server) restores from the
//! file but never writes it.
//!
//! What is restored: every service's series at the three resolutions, the event log (its
//! cursors keep counting up), each service's command line and executable, and the periods the
//! earlier runs watched ([`Health::earlier_runs`]), so that rates over a window spanning the
//! downtime divide by the seconds watched. What is not: pids and open connections, which
//! describe the system as it was, and the collector's own drop counters. A file saved on
//! another machine, by another source or format version, or damaged, is moved aside to
//! `<file>.bad` (kept, not deleted) and the collector starts empty.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::service::ServiceId;
use crate::store::{COARSE_SLOTS, Event, MAX_EVENTS, ServiceState, Store, Watched};

/// Format version of the file; a build refuses other versions (and moves them aside).
pub const VERSION: u32 = 1;
/// Earlier runs remembered; past this the two oldest are merged (counting the gap between
/// them as watched, which dilutes a rate rather than inflating it).
pub const MAX_EARLIER_RUNS: usize = 64;

const MAGIC: &[u8; 16] = b"BPFSIGHT-HISTORY";
const HEADER_LEN: usize = 16 + 4 + 8 + 4;

/// Why history could not be saved or restored.
pub type HistoryError = crate::error::FileError;

/// The body as written: borrowed from the store, so a save copies nothing but the bytes.
#[derive(Serialize)]
struct SavedRef<'a> {
    source: &'a str,
    machine: &'a str,
    saved_at: u64,
    watched: Vec<Watched>,
    next_seq: u64,
    services: &'a HashMap<ServiceId, ServiceState>,
    /// JSON: events carry untagged, flattened details that postcard cannot read back.
    events: String,
    cmdlines: &'a HashMap<ServiceId, String>,
    exes: &'a HashMap<ServiceId, String>,
}

/// The body as read back.
#[derive(Deserialize)]
struct Saved {
    source: String,
    machine: String,
    saved_at: u64,
    watched: Vec<Watched>,
    next_seq: u64,
    services: HashMap<ServiceId, ServiceState>,
    events: String,
    cmdlines: HashMap<ServiceId, String>,
    exes: HashMap<ServiceId, String>,
}

/// What a restore brought back, for the log.
#[derive(Clone, Copy, Debug)]
pub struct Restored {
    /// Services with history.
    pub services: usize,
    /// Events.
    pub events: usize,
    /// Unix second of the save.
    pub saved_at: u64,
    /// Bytes read.
    pub bytes: usize,
}

/// What a save wrote, for the log.
#[derive(Clone, Copy, Debug)]
pub struct SaveStats {
    /// Bytes written.
    pub bytes: usize,
    /// Time taken by encoding (under the store's read lock), ms.
    pub encode_ms: f64,
    /// Time taken in all, with the `fsync`s, ms.
    pub total_ms: f64,
}

/// How history is being kept, for `bpfsight://health`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistoryStatus {
    /// The history file.
    pub file: String,
    /// Whether this process saves it (false: another bpfsight does, this one only read it).
    pub saving: bool,
    /// Seconds between saves.
    pub every_s: u64,
    /// Unix second of the save restored at start, if one was.
    pub restored_from: Option<u64>,
    /// Unix second of this process's last successful save.
    pub last_saved_at: Option<u64>,
    /// Size of that save, bytes.
    pub last_save_bytes: u64,
    /// Why the last save or the restore failed, if it did.
    pub last_error: Option<String>,
}

/// The history file of one source in a data directory.
pub struct HistoryFile {
    path: PathBuf,
    source: String,
    machine: String,
    /// The `flock`ed lock file while this process is the one that saves.
    lock: Option<File>,
}

impl HistoryFile {
    /// The history file of `source` in `dir` (created if missing). Takes the save lock if no
    /// other process holds it.
    pub fn open(dir: &Path, source: &str) -> Result<HistoryFile, HistoryError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| HistoryError::Io { path, cause }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(format!("history-{source}.bin"));
        let lock_path = path.with_extension("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // SAFETY: flock on a descriptor we own; the lock goes with the descriptor.
        let lock = if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            Some(lock)
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(io(&lock_path)(e));
            }
            None
        };
        Ok(HistoryFile { path, source: source.to_string(), machine: machine_id(), lock })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this process saves the file (else another one holds it and this one only read).
    pub fn saves(&self) -> bool {
        self.lock.is_some()
    }

    /// Restores the saved history into `store`, a store that has just started: `Ok(None)` if
    /// there is no file. A file that cannot be restored here is moved aside (when this
    /// process saves the file) and reported as an error; `store` is then left as it was.
    pub fn restore_into(&self, store: &mut Store) -> Result<Option<Restored>, HistoryError> {
        let mut bytes = Vec::new();
        match File::open(&self.path) {
            Ok(mut f) => f.read_to_end(&mut bytes).map_err(|cause| self.io(cause))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => return Err(self.io(cause)),
        };
        let (saved, events) = match self.decode(&bytes) {
            Ok(s) => s,
            Err(reason) => {
                let mut reason = reason;
                if self.saves() {
                    let aside = self.path.with_extension("bin.bad");
                    match std::fs::rename(&self.path, &aside) {
                        Ok(()) => reason += &format!("; moved to {}", aside.display()),
                        Err(e) => reason += &format!("; could not move it aside: {e}"),
                    }
                }
                return Err(self.format(&reason));
            }
        };
        let restored = Restored {
            services: saved.services.len(),
            events: events.len(),
            saved_at: saved.saved_at,
            bytes: bytes.len(),
        };
        apply(store, saved, events);
        Ok(Some(restored))
    }

    /// Checks and decodes a whole file.
    fn decode(&self, bytes: &[u8]) -> Result<(Saved, Vec<Event>), String> {
        if bytes.len() < HEADER_LEN || &bytes[..16] != MAGIC {
            return Err("not a bpfsight history file".into());
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let version = word(16);
        if version != VERSION {
            return Err(format!("history format {version}; this build reads {VERSION}"));
        }
        let len = u64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes"));
        let body = &bytes[HEADER_LEN..];
        if body.len() as u64 != len {
            return Err(format!("truncated: {} of {len} bytes", body.len()));
        }
        if crc32fast::hash(body) != word(28) {
            return Err("checksum mismatch".into());
        }
        let saved: Saved = postcard::from_bytes(body).map_err(|e| format!("undecodable: {e}"))?;
        if saved.source != self.source {
            return Err(format!("saved by the {} source, not {}", saved.source, self.source));
        }
        if saved.machine != self.machine {
            return Err(format!("saved on another machine ({}; this is {})", saved.machine, self.machine));
        }
        let events = serde_json::from_str(&saved.events).map_err(|e| format!("events: {e}"))?;
        Ok((saved, events))
    }

    /// Saves `store`'s history: encoded, written and `fsync`ed, then renamed over the
    /// previous save. Does nothing and returns `Ok(None)` when another process saves this
    /// file.
    pub fn save(&self, store: &Store) -> Result<Option<SaveStats>, HistoryError> {
        if !self.saves() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let file = self.encode(store)?;
        self.finish(t0, &file).map(Some)
    }

    /// [`HistoryFile::save`] for the collector's shared store: encoded under its read lock,
    /// written with the lock released, so the collector never waits for the disk.
    pub fn save_shared(&self, store: &RwLock<Store>) -> Result<Option<SaveStats>, HistoryError> {
        if !self.saves() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let file = {
            let store = store
                .read()
                .map_err(|_| self.format("the store's lock is poisoned (the collector panicked)"))?;
            self.encode(&store)?
        };
        self.finish(t0, &file).map(Some)
    }

    fn encode(&self, store: &Store) -> Result<Vec<u8>, HistoryError> {
        encode(store, &self.source, &self.machine).map_err(|r| self.format(&r))
    }

    /// Writes an encoded file started at `t0`.
    fn finish(&self, t0: Instant, file: &[u8]) -> Result<SaveStats, HistoryError> {
        let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
        self.write(file)?;
        Ok(SaveStats { bytes: file.len(), encode_ms, total_ms: t0.elapsed().as_secs_f64() * 1e3 })
    }

    fn write(&self, file: &[u8]) -> Result<(), HistoryError> {
        let tmp = self.path.with_extension("bin.tmp");
        let io = |cause| HistoryError::Io { path: tmp.clone(), cause };
        // Owner-only: command lines can carry secrets (answers redact them; the file cannot).
        // A temporary file left by a crash may predate that: start it afresh.
        let _ = std::fs::remove_file(&tmp);
        let mut f =
            File::options().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        f.write_all(file).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        // The rename itself must reach the disk, or a crash may bring back the old file.
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|cause| self.io(cause))?;
        }
        Ok(())
    }

    fn io(&self, cause: std::io::Error) -> HistoryError {
        HistoryError::Io { path: self.path.clone(), cause }
    }

    fn format(&self, reason: &str) -> HistoryError {
        HistoryError::Format { path: self.path.clone(), reason: reason.into() }
    }
}

/// The whole file for `store`.
fn encode(store: &Store, source: &str, machine: &str) -> Result<Vec<u8>, String> {
    let now = store.now;
    let events: Vec<&Event> = store.events.iter().collect();
    let body = SavedRef {
        source,
        machine,
        saved_at: now,
        watched: watched_runs(&store.health.earlier_runs, Watched { from: store.health.started_at, to: now }),
        next_seq: store.next_seq,
        services: &store.services,
        events: serde_json::to_string(&events).map_err(|e| format!("events: {e}"))?,
        cmdlines: &store.cmdlines,
        exes: &store.exes,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + 4096);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 12]);
    let mut out = postcard::to_extend(&body, out).map_err(|e| format!("encoding: {e}"))?;
    let len = (out.len() - HEADER_LEN) as u64;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[20..28].copy_from_slice(&len.to_le_bytes());
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// The runs to remember: the earlier ones still inside the longest history kept, plus this
/// one, at most [`MAX_EARLIER_RUNS`].
fn watched_runs(earlier: &[Watched], this: Watched) -> Vec<Watched> {
    let oldest = this.to.saturating_sub(COARSE_SLOTS * 60);
    let mut runs: Vec<Watched> = earlier.iter().copied().filter(|w| w.to > oldest).collect();
    if this.to > this.from {
        runs.push(this);
    }
    while runs.len() > MAX_EARLIER_RUNS {
        runs[1].from = runs[0].from;
        runs.remove(0);
    }
    runs
}

/// Puts what was saved into a store that has just started.
fn apply(store: &mut Store, saved: Saved, events: Vec<Event>) {
    for (id, st) in saved.services {
        store.services.entry(id).or_insert(st);
    }
    // Events collected since the start (normally none yet) go after the restored ones, and
    // every cursor handed out before the restart stays behind every new event.
    let since_start: Vec<Event> = store.events.drain(..).collect();
    store.events.extend(events);
    store.next_seq = store.next_seq.max(saved.next_seq);
    for e in since_start {
        store.push_event(e);
    }
    while store.events.len() > MAX_EVENTS {
        store.events.pop_front();
    }
    for (id, c) in saved.cmdlines {
        store.cmdlines.entry(id).or_insert(c);
    }
    for (id, e) in saved.exes {
        store.exes.entry(id).or_insert(e);
    }
    store.health.earlier_runs = saved.watched;
    store.generation += 1;
}

/// What names this machine in a history file: `/etc/machine-id`, else the host name. A data
/// directory copied or shared between machines must not mix their histories.
fn machine_id() -> String {
    for path in ["/etc/machine-id", "/proc/sys/kernel/hostname"] {
        if let Ok(s) = std::fs::read_to_string(path) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "unknown".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostCounters;
    use crate::service::IdentitySource;
    use crate::store::{EventDetail, EventKind};
    use crate::tcp::{Peer, TcpCounters};
    use std::net::{IpAddr, Ipv4Addr};

    /// A scratch data directory, removed at drop.
    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("bpfsight-history-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A store started at 1000 that watched until 3000: retransmits every second for "web",
    /// failed opens for "cron" now and then, and a failed connect event.
    fn busy_store() -> Store {
        let mut s = Store::new(1000);
        s.health.started_at = 1000;
        let (web, cron) = (ServiceId::new("web"), ServiceId::new("cron"));
        let peer = Peer { addr: IpAddr::V4(Ipv4Addr::LOCALHOST), port: 5432 };
        for t in 1001..=3000 {
            let d = TcpCounters { retransmits: 1, ..Default::default() };
            s.record(t, &web, IdentitySource::ProcessName, 7, peer, d);
            if t % 100 == 0 {
                let mut h = HostCounters::default();
                h.add_syscall_error(257, 2, 3);
                s.record_host(t, &cron, IdentitySource::ProcessName, &[9], &h);
            }
            s.tick(t);
        }
        s.push_event(Event {
            seq: 0,
            time_ms: 2_999_000,
            kind: EventKind::FailedConnect,
            service: web.clone(),
            pid: 7,
            detail: EventDetail::Tcp { local: "127.0.0.1:40000".into(), peer: "127.0.0.1:5432".into() },
        });
        s.cmdlines.insert(web, "web --port 80".into());
        s
    }

    fn retransmits(s: &Store, name: &str, secs: u64) -> u64 {
        s.services[&ServiceId::new(name)].window(s.now, secs).0.retransmits
    }

    #[test]
    fn a_restored_store_answers_as_the_saved_one_did() {
        let dir = Dir::new("roundtrip");
        let old = busy_store();
        let file = HistoryFile::open(&dir.0, "ebpf").unwrap();
        let stats = file.save(&old).unwrap().expect("this process saves");
        assert!(stats.bytes > HEADER_LEN);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(file.path()).unwrap().permissions().mode() & 0o777, 0o600);
        drop(file);

        // Restarted 60 s later.
        let mut new = Store::new(3060);
        new.health.started_at = 3060;
        let file = HistoryFile::open(&dir.0, "ebpf").unwrap();
        let r = file.restore_into(&mut new).unwrap().expect("a save to restore");
        assert_eq!((r.services, r.events, r.saved_at), (2, 1, 3000));
        new.now = 3000; // read both at the same second
        for secs in [60, 900, 3600, 7 * 86400] {
            assert_eq!(retransmits(&new, "web", secs), retransmits(&old, "web", secs), "{secs}s");
            let h = |s: &Store| s.services[&ServiceId::new("cron")].host_window(3000, secs).syscall_errors;
            assert_eq!(h(&new), h(&old), "{secs}s");
        }
        assert_eq!(new.cmdlines[&ServiceId::new("web")], "web --port 80");
        // What described the old system is not restored.
        assert!(new.services[&ServiceId::new("web")].pids.is_empty());
        // Event cursors go on from the old ones.
        assert_eq!(new.events[0].seq, 1);
        new.now = 3060;
        let seq = new.push_event(new.events[0].clone());
        assert_eq!(seq, 2);
        assert_eq!(new.health.earlier_runs, vec![Watched { from: 1000, to: 3000 }]);
    }

    #[test]
    fn the_downtime_is_not_counted_as_watched() {
        let mut s = Store::new(3120);
        s.health.started_at = 3060;
        s.health.earlier_runs = vec![Watched { from: 1000, to: 3000 }];
        // Last 5 minutes: 60 s of this run and 180 s of the last one; the minute between, no.
        assert_eq!(s.observed_secs(300), 240);
        // Over a day: both runs whole.
        assert_eq!(s.observed_secs(86400), 60 + 2000);
        // Within this run only.
        assert_eq!(s.observed_secs(30), 30);
    }

    #[test]
    fn runs_are_bounded_and_merged_oldest_first() {
        let earlier: Vec<Watched> =
            (0..80).map(|i| Watched { from: 1_000_000 + i * 100, to: 1_000_000 + i * 100 + 50 }).collect();
        let this = Watched { from: 1_010_000, to: 1_010_050 };
        let runs = watched_runs(&earlier, this);
        assert_eq!(runs.len(), MAX_EARLIER_RUNS);
        assert_eq!(runs[0].from, 1_000_000, "the oldest start is kept");
        assert_eq!(*runs.last().unwrap(), this);
        // Runs older than the longest history kept are forgotten.
        let later = Watched {
            from: 1_000_000 + COARSE_SLOTS * 60 + 10_000,
            to: 1_000_000 + COARSE_SLOTS * 60 + 20_000,
        };
        assert_eq!(watched_runs(&runs, later), vec![later]);
    }

    #[test]
    fn a_damaged_or_foreign_file_is_moved_aside_and_nothing_is_restored() {
        let dir = Dir::new("damaged");
        let file = HistoryFile::open(&dir.0, "ebpf").unwrap();
        file.save(&busy_store()).unwrap();
        let mut bytes = std::fs::read(file.path()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(file.path(), &bytes).unwrap();
        let mut s = Store::new(4000);
        let e = file.restore_into(&mut s).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        assert!(s.services.is_empty() && s.health.earlier_runs.is_empty());
        assert!(!file.path().exists() && file.path().with_extension("bin.bad").exists());

        // Saved by another source: the procfs file is another file, and refused if renamed.
        file.save(&busy_store()).unwrap();
        let procfs = HistoryFile::open(&dir.0, "procfs").unwrap();
        assert!(procfs.restore_into(&mut s).unwrap().is_none());
        std::fs::rename(file.path(), procfs.path()).unwrap();
        let e = procfs.restore_into(&mut s).unwrap_err();
        assert!(e.to_string().contains("saved by the ebpf source"), "{e}");
    }

    #[test]
    fn only_the_first_process_saves() {
        let dir = Dir::new("lock");
        let first = HistoryFile::open(&dir.0, "ebpf").unwrap();
        // flock is per open file description: a second open in this process is refused too.
        let second = HistoryFile::open(&dir.0, "ebpf").unwrap();
        assert!(first.saves() && !second.saves());
        assert!(second.save(&busy_store()).unwrap().is_none());
        assert!(!second.path().exists());
        drop(first);
        assert!(HistoryFile::open(&dir.0, "ebpf").unwrap().saves());
    }

    /// Figures for the README: a history at its slot cap saved and restored.
    /// `cargo test --release -p bpfsight-collector history_save_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a benchmark: prints figures, run in release"]
    fn history_save_cost() {
        use crate::store::MAX_HISTORY_SLOTS;
        let dir = Dir::new("cost");
        let mut s = Store::new(0);
        let peer = |p| Peer { addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), port: p };
        let mut h =
            HostCounters { oncpu_ns: 1_000_000, vol_switches: 50, page_allocs: 300, ..Default::default() };
        h.add_syscall_error(257, 2, 3);
        // 100 services busy every second, until the history reaches its cap.
        let services: Vec<ServiceId> = (0..100).map(|i| ServiceId::new(&format!("svc-{i}"))).collect();
        let mut t = 0;
        while s.slot_count() < MAX_HISTORY_SLOTS * 95 / 100 {
            t += 1;
            for (i, id) in services.iter().enumerate() {
                s.record_host(t, id, IdentitySource::ProcessName, &[i as u32 + 2], &h);
                let d = TcpCounters { retransmits: 1, ..Default::default() };
                s.record(t, id, IdentitySource::ProcessName, i as u32 + 2, peer(5432), d);
            }
            s.tick(t);
        }
        let file = HistoryFile::open(&dir.0, "ebpf").unwrap();
        let saved = file.save(&s).unwrap().unwrap();
        let t0 = Instant::now();
        let mut back = Store::new(t);
        file.restore_into(&mut back).unwrap().unwrap();
        let restore_ms = t0.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "history of {} services, {} slots ({:.1} MiB in memory): file {:.1} MiB, save {:.1} ms \
             (encode {:.1} ms under the read lock), restore {restore_ms:.1} ms",
            s.service_count(),
            s.slot_count(),
            s.approx_bytes() as f64 / (1 << 20) as f64,
            saved.bytes as f64 / (1 << 20) as f64,
            saved.total_ms,
            saved.encode_ms,
        );
        assert_eq!(back.slot_count(), s.slot_count());
        // To measure a server restoring it: BENCH_HISTORY_KEEP=DIR keeps the file there.
        if let Some(keep) = std::env::var_os("BENCH_HISTORY_KEEP") {
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(file.path(), Path::new(&keep).join("history-ebpf.bin")).unwrap();
        }
    }
}
