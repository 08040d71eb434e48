//! The append-only incident log: the source of truth of recorded incidents.
//!
//! Layout: a header line, then records of `magic u32 | length u32 | crc32 u32 | JSON`, all
//! little-endian. An append takes an exclusive `flock`, so several processes may share one data
//! directory; it is acknowledged only after `fdatasync`. A crash mid-append leaves a torn tail,
//! which readers ignore and the next writer (holding the lock, so the tail's writer is gone)
//! truncates. A record whose checksum fails in the middle of the file is skipped and counted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::incident::Incident;

const HEADER: &[u8] = b"bpfsight incident log v1\n";
const MAGIC: u32 = 0x3149_5042; // "BPI1"
/// Largest record accepted; anything larger is corruption.
const MAX_RECORD: usize = 1 << 20;

/// What reading the log found besides good records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogHealth {
    /// Records skipped because their checksum or JSON was bad.
    pub corrupt_records: u64,
    /// Bytes of an unfinished record at the end (a crashed append); truncated by the next append.
    pub torn_tail_bytes: u64,
}

/// An open incident log.
pub struct IncidentLog {
    path: PathBuf,
    file: File,
    /// Bytes parsed so far (header included); records past this were appended by others.
    consumed: u64,
    health: LogHealth,
}

impl IncidentLog {
    /// Opens (creating if needed) the log at `path` and returns every good record in it.
    pub fn open(path: &Path) -> Result<(IncidentLog, Vec<Incident>), Error> {
        let io = |e| Error::io(path, e);
        let file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io)?;
        let mut log = IncidentLog { path: path.to_owned(), file, consumed: 0, health: LogHealth::default() };
        log.with_lock(|log| {
            if log.file.metadata().map_err(io)?.len() == 0 {
                log.file.write_all(HEADER).map_err(io)?;
                log.file.sync_all().map_err(io)?;
                if let Some(dir) = path.parent() {
                    sync_dir(dir)?;
                }
            }
            Ok(())
        })?;
        let mut header = vec![0u8; HEADER.len()];
        (&log.file).seek(SeekFrom::Start(0)).map_err(io)?;
        (&log.file).read_exact(&mut header).map_err(io)?;
        if header != HEADER {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                why: "not a bpfsight incident log (bad header)".into(),
            });
        }
        log.consumed = HEADER.len() as u64;
        let records = log.read_new()?;
        Ok((log, records))
    }

    /// True when the file has grown since the last read (another process appended, or a torn
    /// tail is still there).
    pub fn has_new(&self) -> bool {
        self.file.metadata().is_ok_and(|m| m.len() > self.consumed + self.health.torn_tail_bytes)
    }

    /// Records appended (by this or another process) since the last read.
    pub fn read_new(&mut self) -> Result<Vec<Incident>, Error> {
        let len = self.file.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        if len <= self.consumed {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (len - self.consumed) as usize];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(self.consumed)).map_err(|e| Error::io(&self.path, e))?;
        f.read_exact(&mut buf).map_err(|e| Error::io(&self.path, e))?;
        let parsed = parse(&buf);
        self.consumed += parsed.consumed as u64;
        self.health.corrupt_records += parsed.corrupt;
        self.health.torn_tail_bytes = (buf.len() - parsed.consumed) as u64;
        Ok(parsed.records)
    }

    /// Appends the incident `make` builds, under the log's lock, and returns it once it is on
    /// disk. `make` sees every record appended by others first (so ids stay unique across
    /// processes); those records are returned too, before the new one.
    pub fn append(
        &mut self,
        make: impl FnOnce(&[Incident]) -> Result<Incident, Error>,
    ) -> Result<Vec<Incident>, Error> {
        self.with_lock(|log| {
            let mut new = log.read_new()?;
            if log.health.torn_tail_bytes > 0 {
                // We hold the lock, so the writer of this tail died before acknowledging it.
                tracing::warn!(bytes = log.health.torn_tail_bytes, "truncating a torn incident record");
                log.file.set_len(log.consumed).map_err(|e| Error::io(&log.path, e))?;
                log.health.torn_tail_bytes = 0;
            }
            let incident = make(&new)?;
            let payload = serde_json::to_vec(&incident).map_err(|e| Error::Corrupt {
                path: log.path.clone(),
                why: format!("cannot encode incident: {e}"),
            })?;
            if payload.len() > MAX_RECORD {
                return Err(Error::Invalid { field: "incident", why: "is larger than 1 MiB".into() });
            }
            let mut record = Vec::with_capacity(12 + payload.len());
            record.extend_from_slice(&MAGIC.to_le_bytes());
            record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            record.extend_from_slice(&payload);
            let io = |e| Error::io(&log.path, e);
            log.file.write_all(&record).map_err(io)?;
            log.file.sync_data().map_err(io)?;
            log.consumed += record.len() as u64;
            new.push(incident);
            Ok(new)
        })
    }

    /// Bytes of good records read so far: indexes built from exactly this much are current.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Corrupt records and torn tail seen so far.
    pub fn health(&self) -> LogHealth {
        self.health
    }

    fn with_lock<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        let fd = self.file.as_raw_fd();
        // SAFETY: flock on a descriptor we own; the lock goes with the descriptor on any exit.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(Error::io(&self.path, std::io::Error::last_os_error()));
        }
        let r = f(self);
        // SAFETY: as above.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        r
    }
}

/// What [`parse`] found in a byte range of the log (after the header).
pub struct Parsed {
    /// Good records, in order.
    pub records: Vec<Incident>,
    /// Bytes up to the end of the last complete record; the rest is a torn tail.
    pub consumed: usize,
    /// Records skipped as corrupt.
    pub corrupt: u64,
}

/// Parses log records from `buf` (the bytes after the header). Never panics, whatever the
/// bytes: the log may be damaged by anything from a crash to a bad disk.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut out = Parsed { records: Vec::new(), consumed: 0, corrupt: 0 };
    let mut at = 0;
    while buf.len() - at >= 12 {
        let word = |i: usize| u32::from_le_bytes(buf[at + i..at + i + 4].try_into().unwrap());
        let len = word(4) as usize;
        if word(0) != MAGIC || len > MAX_RECORD {
            // Lost framing: resynchronise on the next magic, counting one corrupt record.
            out.corrupt += 1;
            match find_magic(&buf[at + 1..]) {
                Some(next) => {
                    at += 1 + next;
                    out.consumed = at;
                    continue;
                }
                None => break,
            }
        }
        if buf.len() - at - 12 < len {
            break; // torn tail
        }
        let payload = &buf[at + 12..at + 12 + len];
        let good = crc32fast::hash(payload) == word(8);
        match good.then(|| serde_json::from_slice::<Incident>(payload).ok()).flatten() {
            Some(i) => out.records.push(i),
            None => out.corrupt += 1,
        }
        at += 12 + len;
        out.consumed = at;
    }
    out
}

fn find_magic(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == MAGIC.to_le_bytes())
}

/// Makes a rename or create in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Writes `bytes` to `path` so that readers see the old or the new file, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = tmp_path(path);
    let io = |e| Error::io(&tmp, e);
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// A temporary name next to `path`, unique to this process.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::Source;
    use crate::schema::Signature;

    fn incident(id: &str) -> Incident {
        Incident {
            id: id.into(),
            title: "t".into(),
            services: vec![],
            time_range: None,
            signature: Signature::default(),
            description: String::new(),
            root_cause: "c".into(),
            resolution: "r".into(),
            tags: vec![],
            source: Source::Recorded,
            created_at_ms: 1,
        }
    }

    #[test]
    fn torn_tails_are_ignored_then_truncated_and_corruption_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("incidents.log");
        let (mut log, recs) = IncidentLog::open(&path).unwrap();
        assert!(recs.is_empty());
        log.append(|_| Ok(incident("inc-1"))).unwrap();
        log.append(|_| Ok(incident("inc-2"))).unwrap();
        let good_len = std::fs::metadata(&path).unwrap().len();
        // A crashed writer: half a record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&MAGIC.to_le_bytes()).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(b"xx").unwrap();
        let (mut log, recs) = IncidentLog::open(&path).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(log.health().torn_tail_bytes, 10);
        let out = log.append(|seen| Ok(incident(&format!("inc-{}", seen.len() + 3)))).unwrap();
        assert_eq!(out[0].id, "inc-3");
        // Flip a byte inside the first record's payload: it is skipped, the rest survive.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER.len() + 14] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (log, recs) = IncidentLog::open(&path).unwrap();
        let ids: Vec<_> = recs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["inc-2", "inc-3"]);
        assert_eq!(log.health().corrupt_records, 1);
        assert!(std::fs::metadata(&path).unwrap().len() > good_len);
    }
}
