//! [`CaseBase`]: the seed library plus recorded incidents, searchable by symptoms and by text.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::embed::Embedder;
use crate::incident::{Incident, NewIncident, Source};
use crate::index::VectorIndex;
use crate::log::{IncidentLog, LogHealth, write_atomic};
use crate::schema::{self, SCHEMA_VERSION, Signature};
use crate::{Error, seeds};

/// Most matches one search returns.
pub const MAX_TOP_K: usize = 50;

/// Restricts which incidents a search may return.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only incidents involving this service (case-insensitive; seeds involve none).
    pub service: Option<String>,
    /// Only incidents carrying all of these tags.
    pub tags: Vec<String>,
    /// Only seeded or only recorded incidents.
    pub source: Option<Source>,
}

impl Filter {
    fn accepts(&self, i: &Incident) -> bool {
        self.service.as_ref().is_none_or(|s| i.services.iter().any(|x| x.eq_ignore_ascii_case(s)))
            && self.tags.iter().all(|t| i.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
            && self.source.is_none_or(|s| i.source == s)
    }
}

/// A search: by symptom signature, by embedded text, or both (weighted fusion).
#[derive(Clone, Debug)]
pub struct Query<'a> {
    /// Symptoms to match.
    pub signature: Option<&'a Signature>,
    /// An embedded description (from the case base's [`Embedder`]).
    pub text: Option<&'a [f32]>,
    /// How many matches to return (1..=[`MAX_TOP_K`]).
    pub top_k: usize,
    /// Which incidents qualify.
    pub filter: Filter,
    /// Weight of the text similarity when both parts are given (0..=1; the signature gets the rest).
    pub text_weight: f32,
}

/// One search result.
#[derive(Clone, Debug, Serialize)]
pub struct Match {
    /// The incident.
    pub incident: Incident,
    /// Fused similarity in `[-1, 1]`; higher is closer.
    pub score: f32,
    /// Cosine similarity of the signatures, when the query had one.
    pub signature_score: Option<f32>,
    /// Cosine similarity of the texts, when the query had one.
    pub text_score: Option<f32>,
    /// Features both signatures push the same way, strongest first; `description` when the text matched.
    pub matched_on: Vec<String>,
}

/// Sizes and health, for status tools and logs.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// Seeded patterns.
    pub seeded: usize,
    /// Recorded incidents.
    pub recorded: usize,
    /// Signature schema version.
    pub schema_version: u32,
    /// The text embedder in use.
    pub embedder: String,
    /// Records skipped as corrupt when reading the log.
    pub corrupt_records: u64,
    /// Where recorded incidents live (None: in memory only).
    pub data_dir: Option<PathBuf>,
    /// Bytes used by the two vector indexes.
    pub index_bytes: usize,
}

/// Which saved index files belong to which log length; replaced atomically as one commit point.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct IndexMeta {
    schema_version: u32,
    embedder: String,
    seeds: u32,
    log_bytes: u64,
    count: usize,
    signatures: String,
    text: String,
}

struct Inner {
    incidents: Vec<Incident>,
    signatures: VectorIndex,
    texts: VectorIndex,
    text_dims: usize,
    log: Option<IncidentLog>,
    seeded: usize,
}

/// Incident memory: seeds compiled in, recorded incidents in an append-only log under the data
/// directory, and two usearch indexes (signatures, text) rebuilt from them when stale.
pub struct CaseBase {
    inner: RwLock<Inner>,
    embedder: Embedder,
    dir: Option<PathBuf>,
}

const LOG: &str = "incidents.log";
const META: &str = "index.json";

impl CaseBase {
    /// The seed library only, in memory; [`CaseBase::record`] is refused.
    pub async fn in_memory(embedder: Embedder) -> Result<CaseBase, Error> {
        let incidents = seeds::load()?;
        let inner = build(incidents.len(), incidents, None, &embedder).await?;
        Ok(CaseBase { inner: RwLock::new(inner), embedder, dir: None })
    }

    /// Opens (creating) the case base in `dir`: reads the log, loads the saved indexes if they
    /// match it, else rebuilds and saves them.
    pub async fn open(dir: &Path, embedder: Embedder) -> Result<CaseBase, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (log, recorded) = IncidentLog::open(&dir.join(LOG))?;
        let mut incidents = seeds::load()?;
        let seeded = incidents.len();
        incidents.extend(recorded);
        let expected = |sig: &str, text: &str| IndexMeta {
            schema_version: SCHEMA_VERSION,
            embedder: embedder.id(),
            seeds: seeds::fingerprint(),
            log_bytes: log.consumed(),
            count: incidents.len(),
            signatures: sig.into(),
            text: text.into(),
        };
        let saved: Option<IndexMeta> =
            std::fs::read(dir.join(META)).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(meta) = saved
            && meta == expected(&meta.signatures, &meta.text)
        {
            let text_dims = incidents_text_dims(&embedder).await?;
            match (
                VectorIndex::load(&dir.join(&meta.signatures), schema::dimensions()),
                VectorIndex::load(&dir.join(&meta.text), text_dims),
            ) {
                (Ok(signatures), Ok(texts))
                    if signatures.len() == incidents.len() && texts.len() == incidents.len() =>
                {
                    tracing::debug!(incidents = incidents.len(), "loaded saved case-base indexes");
                    let inner = Inner { incidents, signatures, texts, text_dims, log: Some(log), seeded };
                    return Ok(CaseBase { inner: RwLock::new(inner), embedder, dir: Some(dir.to_owned()) });
                }
                (s, t) => tracing::warn!(
                    signatures = ?s.err(),
                    text = ?t.err(),
                    "saved case-base indexes unreadable; rebuilding from the log"
                ),
            }
        }
        tracing::info!(incidents = incidents.len(), "building case-base indexes");
        let inner = build(seeded, incidents, Some(log), &embedder).await?;
        let cb = CaseBase { inner: RwLock::new(inner), embedder, dir: Some(dir.to_owned()) };
        cb.save_indexes(&cb.inner.read().unwrap())?;
        Ok(cb)
    }

    /// The embedder that turns descriptions into query vectors.
    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Finds the incidents closest to `q`, best first.
    pub fn search(&self, q: &Query<'_>) -> Result<Vec<Match>, Error> {
        if q.top_k == 0 || q.top_k > MAX_TOP_K {
            return Err(Error::Invalid {
                field: "top_k",
                why: format!("is {}; allowed 1 to {MAX_TOP_K}", q.top_k),
            });
        }
        let sig = q.signature.filter(|s| !s.is_zero());
        let text = q.text.filter(|t| t.iter().any(|x| *x != 0.0));
        if sig.is_none() && text.is_none() {
            return Err(Error::Invalid {
                field: "query",
                why: "has no symptoms and no usable description: give a service with activity in the window, or a description".into(),
            });
        }
        self.refresh()?;
        let inner = self.inner.read().map_err(|_| poisoned())?;
        let accepts = |key: u64| inner.incidents.get(key as usize).is_some_and(|i| q.filter.accepts(i));
        // Candidates from each index; both similarities are then computed exactly for fusion.
        let fetch = (q.top_k * 4).max(32);
        let mut keys: Vec<u64> = Vec::new();
        if let Some(s) = sig {
            keys.extend(inner.signatures.search(s.as_slice(), fetch, accepts)?.into_iter().map(|(k, _)| k));
        }
        if let Some(t) = text {
            if t.len() != inner.text_dims {
                return Err(Error::Invalid {
                    field: "text",
                    why: format!("vector has {} dimensions; the index has {}", t.len(), inner.text_dims),
                });
            }
            keys.extend(inner.texts.search(t, fetch, accepts)?.into_iter().map(|(k, _)| k));
        }
        keys.sort_unstable();
        keys.dedup();
        let w_text = match (sig, text) {
            (Some(_), Some(_)) => q.text_weight.clamp(0.0, 1.0),
            (None, Some(_)) => 1.0,
            _ => 0.0,
        };
        // Score every candidate, then build (and clone) only the ones returned.
        let mut scored: Vec<(usize, f32, Option<f32>, Option<f32>)> = keys
            .into_iter()
            .filter_map(|k| {
                let incident = inner.incidents.get(k as usize)?;
                let s_score = sig.map(|s| s.cosine(&incident.signature));
                let t_score = text.and_then(|t| inner.texts.get(k).map(|v| schema::cosine(t, &v)));
                let score = (1.0 - w_text) * s_score.unwrap_or(0.0) + w_text * t_score.unwrap_or(0.0);
                Some((k as usize, score, s_score, t_score))
            })
            .collect();
        scored.sort_by(|a, b| {
            b.1.total_cmp(&a.1).then_with(|| inner.incidents[a.0].id.cmp(&inner.incidents[b.0].id))
        });
        scored.truncate(q.top_k);
        let matches = scored
            .into_iter()
            .map(|(k, score, s_score, t_score)| {
                let incident = &inner.incidents[k];
                let mut matched_on: Vec<String> = sig
                    .map(|s| {
                        s.shared_with(&incident.signature).into_iter().map(|f| f.name().to_string()).collect()
                    })
                    .unwrap_or_default();
                if t_score.is_some_and(|t| t >= 0.2) {
                    matched_on.push("description".into());
                }
                Match {
                    incident: incident.clone(),
                    score,
                    signature_score: s_score,
                    text_score: t_score,
                    matched_on,
                }
            })
            .collect();
        Ok(matches)
    }

    /// The incident with `id`.
    pub fn get(&self, id: &str) -> Result<Incident, Error> {
        self.refresh()?;
        let inner = self.inner.read().map_err(|_| poisoned())?;
        inner.incidents.iter().find(|i| i.id == id).cloned().ok_or_else(|| Error::NotFound { id: id.into() })
    }

    /// Incidents passing `filter`, seeds first then recorded in order, as one page; with the total.
    pub fn list(
        &self,
        filter: &Filter,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Incident>, usize), Error> {
        self.refresh()?;
        let inner = self.inner.read().map_err(|_| poisoned())?;
        let all: Vec<&Incident> = inner.incidents.iter().filter(|i| filter.accepts(i)).collect();
        let page = all.iter().skip(offset).take(limit).map(|i| (*i).clone()).collect();
        Ok((page, all.len()))
    }

    /// Stores a new incident durably and indexes it; returns it with its id once it is on disk.
    pub async fn record(&self, new: NewIncident, now_ms: u64) -> Result<Incident, Error> {
        new.validate()?;
        if self.dir.is_none() {
            return Err(Error::ReadOnly);
        }
        let probe = Incident {
            id: String::new(),
            title: new.title.trim().to_string(),
            services: new.services,
            time_range: new.time_range,
            signature: new.signature,
            description: new.description,
            root_cause: new.root_cause,
            resolution: new.resolution,
            tags: new.tags.into_iter().map(|t| t.trim().to_lowercase()).collect(),
            source: Source::Recorded,
            created_at_ms: now_ms,
        };
        // Embed before taking the lock: a remote embedder may take a while, or fail.
        let vector = self.embedder.embed(&probe.search_text()).await?;
        let mut inner = self.inner.write().map_err(|_| poisoned())?;
        let recorded_before = inner.incidents.len() - inner.seeded;
        let log = inner.log.as_mut().ok_or(Error::ReadOnly)?;
        let appended = log.append(|others| {
            let mut i = probe;
            i.id = format!("inc-{}", recorded_before + others.len() + 1);
            Ok(i)
        })?;
        // Records that other processes appended first are indexed too; only ours is embedded
        // here, theirs on the next rebuild-free path below.
        let mine = appended.last().cloned().expect("append returns the new record");
        for i in appended {
            let v = if i.id == mine.id { vector.clone() } else { self.embedder_sync(&i)? };
            add(&mut inner, i, &v)?;
        }
        self.save_indexes(&inner)?;
        Ok(mine)
    }

    /// Sizes and health.
    pub fn stats(&self) -> Stats {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        Stats {
            seeded: inner.seeded,
            recorded: inner.incidents.len() - inner.seeded,
            schema_version: SCHEMA_VERSION,
            embedder: self.embedder.id(),
            corrupt_records: inner.log.as_ref().map_or(0, |l| l.health().corrupt_records),
            data_dir: self.dir.clone(),
            index_bytes: inner.signatures.memory_bytes() + inner.texts.memory_bytes(),
        }
    }

    /// Health of the log (corrupt records, torn tail).
    pub fn log_health(&self) -> LogHealth {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.log.as_ref().map(|l| l.health()).unwrap_or_default()
    }

    /// Picks up incidents other processes recorded since we last looked.
    fn refresh(&self) -> Result<(), Error> {
        // The common case, nothing new, costs one fstat under the shared lock.
        let stale = self.inner.read().map_err(|_| poisoned())?.log.as_ref().is_some_and(|l| l.has_new());
        if !stale {
            return Ok(());
        }
        let mut inner = self.inner.write().map_err(|_| poisoned())?;
        let Some(log) = inner.log.as_mut() else { return Ok(()) };
        let new = log.read_new()?;
        if new.is_empty() {
            return Ok(());
        }
        for i in new {
            let v = self.embedder_sync(&i)?;
            add(&mut inner, i, &v)?;
        }
        Ok(())
    }

    /// Embeds without awaiting: only the built-in embedder can; a remote one defers to the
    /// next restart's rebuild (the incident is indexed by signature meanwhile).
    fn embedder_sync(&self, i: &Incident) -> Result<Vec<f32>, Error> {
        match &self.embedder {
            Embedder::Hashed(h) => Ok(h.embed(&i.search_text())),
            Embedder::Remote(_) => Ok(Vec::new()),
        }
    }

    fn save_indexes(&self, inner: &Inner) -> Result<(), Error> {
        let (Some(dir), Some(log)) = (&self.dir, &inner.log) else { return Ok(()) };
        let generation = log.consumed();
        let sig_name = format!("signatures-{generation}.usearch");
        let text_name = format!("text-{generation}.usearch");
        // Fresh names per generation, so the meta file's rename is the single commit point.
        for (name, index) in [(&sig_name, &inner.signatures), (&text_name, &inner.texts)] {
            let tmp = crate::log::tmp_path(&dir.join(name));
            index.save(&tmp)?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, dir.join(name)).map_err(|e| Error::io(&tmp, e))?;
        }
        let meta = IndexMeta {
            schema_version: SCHEMA_VERSION,
            embedder: self.embedder.id(),
            seeds: seeds::fingerprint(),
            log_bytes: generation,
            count: inner.incidents.len(),
            signatures: sig_name.clone(),
            text: text_name.clone(),
        };
        write_atomic(&dir.join(META), &serde_json::to_vec_pretty(&meta).expect("meta serialises"))?;
        // Older generations are garbage now; failing to delete them costs only disk.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".usearch") && name != sig_name && name != text_name {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

fn poisoned() -> Error {
    Error::Index("case base state is poisoned by an earlier panic; restart bpfsight".into())
}

async fn incidents_text_dims(embedder: &Embedder) -> Result<usize, Error> {
    Ok(embedder.embed("dimension probe").await?.len())
}

async fn build(
    seeded: usize,
    incidents: Vec<Incident>,
    log: Option<IncidentLog>,
    embedder: &Embedder,
) -> Result<Inner, Error> {
    let text_dims = incidents_text_dims(embedder).await?;
    let mut inner = Inner {
        incidents: Vec::with_capacity(incidents.len()),
        signatures: VectorIndex::new(schema::dimensions())?,
        texts: VectorIndex::new(text_dims)?,
        text_dims,
        log,
        seeded,
    };
    for i in incidents {
        let v = embedder.embed(&i.search_text()).await?;
        add(&mut inner, i, &v)?;
    }
    Ok(inner)
}

fn add(inner: &mut Inner, incident: Incident, text: &[f32]) -> Result<(), Error> {
    let key = inner.incidents.len() as u64;
    // A zero vector has no direction; index a tiny constant so the key exists in both indexes.
    let sig = if incident.signature.is_zero() {
        vec![1e-6; schema::dimensions()]
    } else {
        incident.signature.as_slice().to_vec()
    };
    inner.signatures.add(key, &sig)?;
    let text = if text.len() == inner.text_dims && text.iter().any(|x| *x != 0.0) {
        text.to_vec()
    } else {
        vec![1e-6; inner.text_dims]
    };
    inner.texts.add(key, &text)?;
    inner.incidents.push(incident);
    Ok(())
}
