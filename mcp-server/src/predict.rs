//! The live predictor: once a second, every active service's (and the host's) activity in
//! the collector becomes a feature vector of [`Schema::host`]; the predictor's engine judges
//! it, trains its LSTM on a low-priority thread when due, saves the model in the data
//! directory, and answers `predict_anomaly`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bpfsight_collector::Store;
use bpfsight_collector::host::HostCounters;
use bpfsight_collector::store::Activity;
use bpfsight_collector::tcp::TcpCounters;
use bpfsight_predictor::engine::{
    Engine, EngineConfig, EngineError, FeatureForecast, HOST, Judgement, ModelStatus,
};
use bpfsight_predictor::{LstmModel, Schema};
use serde::Serialize;

/// Services judged per step besides the host (the busiest).
pub const MAX_SERVICES: usize = 31;

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
                let (now, acts) = match store.read() {
                    Ok(s) if s.now() > last => (s.now(), s.activity(last, s.now())),
                    _ => continue,
                };
                let secs = now.saturating_sub(last).clamp(1, 60);
                last = now;
                me.step(now, secs, acts);
            }
        })
    }

    /// Judges one step made of `acts` over `secs` seconds ending at `now`.
    pub fn step(self: &Arc<Self>, now: u64, secs: u64, mut acts: Vec<Activity>) {
        let mut host_h = HostCounters::default();
        let mut host_t = TcpCounters::default();
        for a in &acts {
            host_h.merge(&a.host);
            host_t += a.tcp;
        }
        let s = secs as f64;
        let mut rows = vec![(HOST.to_string(), features(&host_h, &host_t, s))];
        acts.sort_by_key(|a| std::cmp::Reverse(a.host.oncpu_ns + a.tcp.errors() * 1_000_000));
        // A process named `host` (the DNS tool, say) must not be mixed into the host scope.
        rows.extend(
            acts.iter()
                .filter(|a| a.service.as_str() != HOST)
                .take(MAX_SERVICES)
                .map(|a| (a.service.to_string(), features(&a.host, &a.tcp, s))),
        );
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
