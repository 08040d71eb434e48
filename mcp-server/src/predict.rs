//! The live predictor: once a second, every active service's (and the host's) activity in
//! the collector becomes a feature vector of [`Schema::host`]; the predictor's engine judges
//! it, trains its LSTM on a low-priority thread when due, saves the model in the data
//! directory, and answers `predict_anomaly`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bpfsight_collector::Store;
use bpfsight_collector::host::HostCounters;
use bpfsight_collector::tcp::TcpCounters;
use bpfsight_predictor::engine::{
    Engine, EngineConfig, EngineError, FeatureForecast, HOST, Judgement, ModelStatus,
};
use bpfsight_predictor::{LstmModel, Schema};
use serde::Serialize;

/// Services judged per step besides the host (the busiest).
pub const MAX_SERVICES: usize = 31;

/// One step's feature rows over the seconds `(from, to]`: the host (every service together)
/// first, then the busiest services, at most [`MAX_SERVICES`]. Scopes the engine already
/// tracks (`tracked`) count double when ranking: among services about equally busy, the set
/// judged stays put instead of changing every second, which would throw away each newcomer's
/// history (and churn memory) for nothing.
pub fn step_rows(store: &Store, from: u64, to: u64, tracked: &[String]) -> Vec<(String, Vec<f32>)> {
    let secs = to.saturating_sub(from).clamp(1, 60) as f64;
    let mut host_h = HostCounters::default();
    let mut host_t = TcpCounters::default();
    // (rank, service, features), the weakest replaced when a busier one comes.
    let mut top: Vec<(u64, String, Vec<f32>)> = Vec::with_capacity(MAX_SERVICES);
    store.for_each_activity(from, to, |id, h, t| {
        host_h.merge(h);
        host_t += *t;
        // A process named `host` (the DNS tool, say) must not be mixed into the host scope.
        if id.as_str() == HOST {
            return;
        }
        let mut rank = h.oncpu_ns + t.errors() * 1_000_000;
        if tracked.iter().any(|s| s == id.as_str()) {
            rank = rank.saturating_mul(2).max(1);
        }
        if top.len() < MAX_SERVICES {
            top.push((rank, id.to_string(), features(h, t, secs)));
        } else if let Some(weakest) = top.iter_mut().min_by_key(|(r, _, _)| *r)
            && rank > weakest.0
        {
            *weakest = (rank, id.to_string(), features(h, t, secs));
        }
    });
    top.sort_by_key(|(r, _, _)| std::cmp::Reverse(*r));
    let mut rows = Vec::with_capacity(top.len() + 1);
    rows.push((HOST.to_string(), features(&host_h, &host_t, secs)));
    rows.extend(top.into_iter().map(|(_, name, f)| (name, f)));
    rows
}

/// The feature vector of `h` + `tcp` over `secs` seconds, in [`Schema::host`] order.
pub fn features(h: &HostCounters, tcp: &TcpCounters, secs: f64) -> Vec<f32> {
    let secs = secs.max(1.0);
    let errors: u64 = h
        .syscall_errors
        .iter()
        .filter(|(nr, errno, _)| !bpfsight_collector::names::is_benign(*nr, *errno))
        .map(|(_, _, n)| n)
        .sum::<u64>()
        + h.syscall_errors_other;
    vec![
        h.runq.percentile_ms(99.0).unwrap_or(0.0) as f32,
        (h.page_allocs as f64 / secs) as f32,
        (tcp.retransmits as f64 / secs) as f32,
        h.io_lat.percentile_ms(99.0).unwrap_or(0.0) as f32,
        ((h.vol_switches + h.invol_switches) as f64 / secs) as f32,
        (errors as f64 / secs) as f32,
        (tcp.failed_connects as f64 / secs) as f32,
        (100.0 * h.oncpu_ns as f64 / (secs * 1e9)) as f32,
    ]
}

/// One scope's answer to `predict_anomaly`.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ScopePrediction {
    /// The service, or `host`.
    pub service: String,
    /// The judgement over the window.
    #[serde(flatten)]
    pub judgement: Judgement,
}

/// The result of `predict_anomaly`.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// The service asked about, or `host`.
    pub service: String,
    /// Which detector answered: `robust-z` (cold start) or `lstm`.
    pub detector: &'static str,
    /// Whether a step in the window passed its calibrated threshold.
    pub is_anomaly: bool,
    /// The highest step score in the window.
    pub score: f64,
    /// The calibrated threshold of that step (`null` during the first minute).
    pub threshold: Option<f64>,
    /// When that step was, Unix seconds.
    pub at: u64,
    /// The features behind the score.
    pub contributors: Vec<bpfsight_predictor::score::Contributor>,
    /// Where each feature is heading, one value per second.
    pub forecast: Vec<FeatureForecast>,
    /// Without a service: the services scoring highest relative to their thresholds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ScopePrediction>>,
    /// The LSTM's state.
    pub model: ModelStatus,
    /// Seconds judged.
    pub window_s: u64,
    /// Seconds forecast.
    pub horizon_s: u64,
    /// How the score is made.
    pub method: &'static str,
}

/// What the score means, for readers of the result.
pub const METHOD: &str = "Per second and per feature, the error of the detector's expectation (LSTM one-step forecast, \
or rolling median for robust-z) in robust standard deviations (z); score = sqrt(sum z^2); threshold = \
peaks-over-threshold (generalised Pareto) fit on this scope's recent scores at risk 1e-3, at least 4.";

/// The predictor shared by the sampling loop and the tool.
pub struct Predictor {
    engine: Mutex<Engine>,
    model_dir: Option<PathBuf>,
}

impl Predictor {
    /// A predictor saving its model in `model_dir` (and starting from the one there, if it
    /// was trained on this build's schema; one of another schema is set aside with a warning).
    pub fn new(model_dir: Option<PathBuf>, cfg: EngineConfig) -> Arc<Predictor> {
        let schema = Schema::host();
        let model = match model_dir.as_deref().map(|d| LstmModel::load(d, &schema)) {
            Some(Ok(Some(m))) => {
                tracing::info!(trained_at = m.meta().trained_at, "loaded the anomaly model");
                Some(m)
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "not using the saved anomaly model; a new one will be trained");
                None
            }
            _ => None,
        };
        Arc::new(Predictor { engine: Mutex::new(Engine::new(schema, cfg, model)), model_dir })
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        // A panic while holding the lock leaves a consistent engine (pushes are atomic
        // enough for a detector); keep answering.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Samples `store` once a second until the process ends.
    pub fn spawn(self: &Arc<Self>, store: Arc<RwLock<Store>>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut last = store.read().map(|s| s.now()).unwrap_or(0);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let tracked = me.engine().scopes();
                let (now, rows) = match store.read() {
                    Ok(s) if s.now() > last => (s.now(), step_rows(&s, last, s.now(), &tracked)),
                    _ => continue,
                };
                last = now;
                me.step(now, rows);
            }
        })
    }

    /// Judges one step: `rows` from [`step_rows`], ending at `now`.
    pub fn step(self: &Arc<Self>, now: u64, rows: Vec<(String, Vec<f32>)>) {
        let job = {
            let mut e = self.engine();
            e.push(now, rows);
            e.training_job(now)
        };
        if let Some(job) = job {
            let me = self.clone();
            let spawned = std::thread::Builder::new().name("bpfsight-train".into()).spawn(move || {
                // Training is the one CPU-heavy thing bpfsight does: it yields to everything.
                // SAFETY: setpriority on the calling thread (who = 0 is this thread on Linux).
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                let started = std::time::Instant::now();
                let result = job.run();
                match &result {
                    Ok(t) => {
                        let m = &t.model;
                        tracing::info!(
                            windows = m.meta().windows,
                            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
                            val_error = m.meta().val_error,
                            persistence = m.meta().val_error_persistence,
                            "trained the anomaly model"
                        );
                        if let Some(dir) = &me.model_dir
                            && let Err(e) = m.save(dir)
                        {
                            tracing::warn!(error = %e, "cannot save the anomaly model");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "anomaly model training failed"),
                }
                me.engine().install(result);
            });
            if let Err(e) = spawned {
                self.engine().install(Err(bpfsight_predictor::PredictError::Io {
                    path: "training thread".into(),
                    source: e,
                }));
            }
        }
    }

    /// The judgement of `service` (None: the host, plus the top services) over the last
    /// `window` seconds and its forecast over the next `horizon`.
    pub fn predict(
        &self,
        service: Option<&str>,
        horizon: u64,
        window: u64,
    ) -> Result<Prediction, EngineError> {
        let e = self.engine();
        let scope = service.unwrap_or(HOST);
        let j = e.judge(scope, window as usize)?;
        let forecast = e.forecast(scope, horizon as usize)?;
        let services = if service.is_none() {
            let mut v: Vec<ScopePrediction> = e
                .scopes()
                .into_iter()
                .filter(|s| s != HOST)
                .filter_map(|s| {
                    e.judge(&s, window as usize).ok().map(|j| ScopePrediction { service: s, judgement: j })
                })
                .collect();
            // Calibrated scopes by how far past their threshold they are, then the rest.
            let rank =
                |p: &ScopePrediction| p.judgement.threshold.map_or(-1.0, |t| p.judgement.score / t.max(1e-9));
            v.sort_by(|a, b| rank(b).total_cmp(&rank(a)));
            v.truncate(5);
            Some(v)
        } else {
            None
        };
        Ok(Prediction {
            service: scope.to_string(),
            detector: j.detector,
            is_anomaly: j.is_anomaly,
            score: j.score,
            threshold: j.threshold,
            at: j.at,
            contributors: j.contributors,
            forecast,
            services,
            model: e.status(),
            window_s: window,
            horizon_s: horizon,
            method: METHOD,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfsight_collector::service::{IdentitySource, ServiceId};

    /// A store where services `svc-0..n` each used `cpu_ms(i)` of CPU at second 10.
    fn store(n: usize, cpu_ms: impl Fn(usize) -> u64) -> Store {
        let mut s = Store::new(0);
        for i in 0..n {
            let h = HostCounters { oncpu_ns: cpu_ms(i) * 1_000_000, vol_switches: 1, ..Default::default() };
            s.record_host(
                10,
                &ServiceId::new(&format!("svc-{i}")),
                IdentitySource::ProcessName,
                &[i as u32 + 1],
                &h,
            );
        }
        let h = HostCounters { oncpu_ns: 999_000_000, ..Default::default() };
        s.record_host(10, &ServiceId::new("host"), IdentitySource::ProcessName, &[9999], &h);
        s
    }

    #[test]
    fn step_rows_are_the_host_then_the_busiest_services() {
        let s = store(100, |i| i as u64 + 1);
        let rows = step_rows(&s, 9, 10, &[]);
        assert_eq!(rows.len(), 1 + MAX_SERVICES);
        assert_eq!(rows[0].0, HOST);
        // svc-99 used the most CPU; a process named `host` is counted in the host row only.
        assert_eq!(rows[1].0, "svc-99");
        assert!(rows.iter().skip(1).all(|(n, _)| n != HOST));
        let cpu = Schema::host().len() - 1;
        let all_ms: u64 = (1..=100).sum::<u64>() + 999;
        assert!((rows[0].1[cpu] as f64 - all_ms as f64 / 10.0).abs() < 0.01, "{:?}", rows[0].1);
    }

    #[test]
    fn tracked_scopes_keep_their_place_among_equals() {
        // 100 equally busy services: whichever are tracked stay, whatever the map order.
        let s = store(100, |_| 5);
        let tracked: Vec<String> = (60..60 + MAX_SERVICES).map(|i| format!("svc-{i}")).collect();
        let rows = step_rows(&s, 9, 10, &tracked);
        let mut got: Vec<String> = rows.into_iter().skip(1).map(|(n, _)| n).collect();
        got.sort();
        let mut want = tracked.clone();
        want.sort();
        assert_eq!(got, want);
        // A service twice as busy still gets in.
        let s = store(100, |i| if i == 3 { 11 } else { 5 });
        let rows = step_rows(&s, 9, 10, &tracked);
        assert!(rows.iter().any(|(n, _)| n == "svc-3"));
    }
}
