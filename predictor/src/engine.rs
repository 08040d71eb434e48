//! The online predictor a server drives: one feature vector per scope (the host and each
//! service) per step, a baseline judgement from the first minute, an LSTM trained in the
//! background once enough history exists and retrained on the newest history periodically.
//!
//! The engine itself never trains: [`Engine::training_job`] hands out a snapshot when one is
//! due and [`Engine::install`] takes the result, so the caller decides where the CPU time goes
//! (bpfsight runs it on a low-priority thread) and queries never wait for it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::baseline::RobustZ;
use crate::calibrate::{CalibrationConfig, Calibrator};
use crate::error::PredictError;
use crate::lstm::{ModelConfig, Windows};
use crate::model::{LstmModel, ModelMeta};
use crate::norm::Scaler;
use crate::rows::Rows;
use crate::schema::Schema;
use crate::score::{Contributor, StepScore, contributors, step_score};

/// The scope name of the whole host.
pub const HOST: &str = "host";

/// Settings of the online engine; steps are seconds in bpfsight.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The forecaster.
    pub model: ModelConfig,
    /// Host steps before the first training.
    pub first_training_after: usize,
    /// Steps between retrains.
    pub retrain_every: usize,
    /// Training windows at most (newest first).
    pub max_training_windows: usize,
    /// Steps of history kept per scope.
    pub history: usize,
    /// Judged steps kept per scope (the longest `window` a query can ask for).
    pub judged: usize,
    /// Scopes kept (least recently seen evicted first).
    pub max_scopes: usize,
    /// Steps of the baseline's rolling window.
    pub baseline_window: usize,
    /// Threshold calibration.
    pub calibration: CalibrationConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            model: ModelConfig { window: 30, hidden: 24, epochs: 8, batch: 64, lr: 5e-3, seed: 7 },
            first_training_after: 600,
            retrain_every: 3600,
            max_training_windows: 12_000,
            history: 1200,
            judged: 300,
            max_scopes: 32,
            baseline_window: 120,
            calibration: CalibrationConfig::default(),
        }
    }
}

/// Where the LSTM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Gathering history before the first training.
    Collecting,
    /// The first training runs.
    Training,
    /// A model answers (and may be retraining in the background).
    Trained,
    /// The last training failed; the baseline answers.
    Failed,
}

impl ModelState {
    /// The wire name (`collecting`).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Collecting => "collecting",
            ModelState::Training => "training",
            ModelState::Trained => "trained",
            ModelState::Failed => "failed",
        }
    }
}

/// The model's state as a tool reports it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ModelStatus {
    /// Where the LSTM is.
    pub state: ModelState,
    /// Steps (seconds) of host history seen since start.
    pub samples: u64,
    /// Steps still to collect before the first training, when collecting.
    pub samples_until_training: Option<u64>,
    /// When the current model finished training, Unix seconds.
    pub trained_at: Option<u64>,
    /// Its mean squared one-step error on held-out windows (normalised units).
    pub val_error: Option<f64>,
    /// The same for a "no change" forecast, for comparison.
    pub val_error_persistence: Option<f64>,
    /// Windows it trained on.
    pub training_windows: Option<usize>,
    /// Seconds its training took.
    pub train_seconds: Option<f64>,
    /// Whether it was loaded from disk rather than trained in this run.
    pub loaded: bool,
    /// Whether a (re)training runs now.
    pub training: bool,
    /// Why the last training failed.
    pub last_error: Option<String>,
}

/// A snapshot to train on, from [`Engine::training_job`].
#[derive(Debug)]
pub struct TrainingJob {
    /// The schema.
    pub schema: Schema,
    /// The settings.
    pub config: ModelConfig,
    /// Normalised history per scope.
    pub series: Vec<Vec<Vec<f32>>>,
    /// The scope of each series.
    pub scopes: Vec<String>,
    /// The engine's clock when the snapshot was taken.
    pub now: u64,
}

impl TrainingJob {
    /// Trains (CPU heavy: run it off the async runtime), then scores the newest
    /// [`CALIBRATION_SEED`] steps of each scope with the new model so its thresholds exist
    /// from the first second it answers.
    pub fn run(&self) -> Result<Trained, PredictError> {
        let refs: Vec<&[Vec<f32>]> = self.series.iter().map(|s| s.as_slice()).collect();
        let model = LstmModel::train(&self.schema, &refs, &self.config, self.now)?;
        let (w, f) = (model.window(), self.schema.len());
        let mut seeds = HashMap::new();
        for (name, rows) in self.scopes.iter().zip(&self.series) {
            let from = rows.len().saturating_sub(CALIBRATION_SEED + w);
            let win = Windows::from_rows(&rows[from..], w);
            if win.n == 0 {
                continue;
            }
            let pred = model.forecast_next(&win);
            let scale = &model.meta().error_scale;
            let scores: Vec<f32> = (0..win.n)
                .map(|i| step_score(&win.targets[i * f..(i + 1) * f], &pred[i * f..(i + 1) * f], scale).score)
                .collect();
            seeds.insert(name.clone(), scores);
        }
        Ok(Trained { model, seeds })
    }
}

/// Steps of each scope scored by a new model to calibrate its thresholds at once.
pub const CALIBRATION_SEED: usize = 300;

/// A trained model and the scores that seed its calibration, per scope.
#[derive(Debug)]
pub struct Trained {
    /// The model.
    pub model: LstmModel,
    /// Its scores on each scope's recent history.
    pub seeds: HashMap<String, Vec<f32>>,
}

#[derive(Clone, Debug)]
struct Judged {
    t: u64,
    baseline: Option<(StepScore, Vec<f32>)>,
    baseline_threshold: Option<f64>,
    lstm: Option<(StepScore, Vec<f32>)>,
    lstm_threshold: Option<f64>,
    raw: Vec<f32>,
}

struct Scope {
    raw: Rows,
    norm: Rows,
    scaler: Option<Scaler>,
    baseline_cal: Calibrator,
    lstm_cal: Calibrator,
    judged: VecDeque<Judged>,
    last_t: u64,
}

/// A detector's judgement of a scope over a window of steps.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Judgement {
    /// `robust-z` (cold start, or no model yet) or `lstm`.
    pub detector: &'static str,
    /// Whether a step in the window passed its threshold.
    pub is_anomaly: bool,
    /// The highest step score in the window (L2 norm of per-feature robust z).
    pub score: f64,
    /// The calibrated threshold at that step; `null` while calibrating (first minute).
    pub threshold: Option<f64>,
    /// When that step was, Unix seconds.
    pub at: u64,
    /// The features behind that step's score, largest share first.
    pub contributors: Vec<Contributor>,
}

/// Where one feature is heading.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct FeatureForecast {
    /// Feature name.
    pub feature: String,
    /// Unit of `values`.
    pub unit: String,
    /// One value per future step (second), raw units.
    pub values: Vec<f64>,
    /// The operational threshold checked, raw units.
    pub threshold: Option<f64>,
    /// Seconds from now at which the forecast first reaches `threshold`.
    pub crosses_at: Option<u64>,
}

/// Why a prediction could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The scope has no history yet.
    #[error(
        "no feature history for {0:?} yet: the predictor samples every active service once a second; known: {1}"
    )]
    UnknownScope(String, String),
}

/// The online predictor.
pub struct Engine {
    schema: Schema,
    cfg: EngineConfig,
    scopes: HashMap<String, Scope>,
    model: Option<Arc<LstmModel>>,
    loaded: bool,
    training: bool,
    last_error: Option<String>,
    samples: u64,
    trained_at_sample: u64,
}

impl Engine {
    /// An engine for `schema`, starting from `model` if one was loaded from disk.
    pub fn new(schema: Schema, cfg: EngineConfig, model: Option<LstmModel>) -> Engine {
        let loaded = model.is_some();
        Engine {
            schema,
            cfg,
            scopes: HashMap::new(),
            model: model.map(Arc::new),
            loaded,
            training: false,
            last_error: None,
            samples: 0,
            trained_at_sample: 0,
        }
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Scopes with history, host first then by name.
    pub fn scopes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.scopes.keys().filter(|k| *k != HOST).cloned().collect();
        v.sort();
        if self.scopes.contains_key(HOST) {
            v.insert(0, HOST.to_string());
        }
        v
    }

    /// Adds the step at `t` for every scope in `rows` (`(scope, raw feature vector)`; the
    /// host as [`HOST`]) and judges it.
    pub fn push(&mut self, t: u64, rows: Vec<(String, Vec<f32>)>) {
        let f = self.schema.len();
        let mut lstm_inputs = Windows::default();
        let mut lstm_scopes = Vec::new();
        let window = self.model.as_ref().map(|m| m.window());
        for (name, raw) in rows {
            if raw.len() != f {
                continue;
            }
            if !self.scopes.contains_key(&name) && self.scopes.len() >= self.cfg.max_scopes {
                let victim = self.scopes.iter().filter(|(k, _)| *k != HOST).min_by_key(|(_, s)| s.last_t);
                if let Some(v) = victim.map(|(k, _)| k.clone()) {
                    self.scopes.remove(&v);
                }
            }
            let cfg = &self.cfg;
            let schema = &self.schema;
            let sc = self.scopes.entry(name.clone()).or_insert_with(|| Scope {
                raw: Rows::new(f, cfg.history),
                norm: Rows::new(f, cfg.history),
                scaler: None,
                baseline_cal: Calibrator::new(cfg.calibration.clone()),
                lstm_cal: Calibrator::new(cfg.calibration.clone()),
                // Exactly the steps kept: grown by doubling it would hold 512 slots for 300.
                judged: VecDeque::with_capacity(cfg.judged),
                last_t: t,
            });
            if !sc.raw.is_empty() && t <= sc.last_t {
                // A repeated or late step would double-count a second.
                continue;
            }
            // Idle seconds of a service arrive as gaps: they are zeros, not missing data.
            let gap = t.saturating_sub(sc.last_t).saturating_sub(1).min(cfg.history as u64);
            if gap > 0 {
                let idle = vec![0.0; f];
                for _ in 0..gap {
                    sc.append(&idle);
                }
            }
            sc.last_t = t;
            sc.append(&raw);
            if name == HOST {
                self.samples += 1;
            }
            let refit = match &sc.scaler {
                None => sc.raw.len() >= 30,
                Some(_) => sc.raw.len() == 300,
            };
            if refit {
                sc.refit(schema);
            }
            let Some(scaler) = &sc.scaler else { continue };
            let norm = scaler.normalize(&raw);
            sc.norm.last_mut().expect("just appended").copy_from_slice(&norm);
            let hist: Vec<&[f32]> = sc.norm.iter().rev().skip(1).take(cfg.baseline_window).rev().collect();
            let baseline = RobustZ { window: cfg.baseline_window }.expect(&hist).map(|(c, s)| {
                let score = step_score(&norm, &c, &s);
                (score, c)
            });
            let baseline_threshold = sc.baseline_cal.threshold();
            if let Some((s, _)) = &baseline {
                sc.baseline_cal.push(s.score);
            }
            // Room first, so that the deque never holds more than its capacity.
            while sc.judged.len() >= cfg.judged.max(1) {
                sc.judged.pop_front();
            }
            sc.judged.push_back(Judged {
                t,
                baseline,
                baseline_threshold,
                lstm: None,
                lstm_threshold: None,
                raw,
            });
            if let Some(w) = window
                && sc.norm.len() > w
            {
                for r in sc.norm.iter().skip(sc.norm.len() - 1 - w).take(w) {
                    lstm_inputs.inputs.extend_from_slice(r);
                }
                lstm_inputs.targets.extend_from_slice(&norm);
                lstm_inputs.n += 1;
                lstm_scopes.push(name);
            }
        }
        if let Some(model) = &self.model
            && lstm_inputs.n > 0
        {
            let pred = model.forecast_next(&lstm_inputs);
            let scale = model.meta().error_scale.clone();
            for (i, name) in lstm_scopes.iter().enumerate() {
                let sc = self.scopes.get_mut(name).expect("pushed above");
                let expected = pred[i * f..(i + 1) * f].to_vec();
                let s = step_score(&lstm_inputs.targets[i * f..(i + 1) * f], &expected, &scale);
                let j = sc.judged.back_mut().expect("judged above");
                j.lstm_threshold = sc.lstm_cal.threshold();
                sc.lstm_cal.push(s.score);
                j.lstm = Some((s, expected));
            }
        }
    }

    /// A snapshot to train on, if a training is due and none runs; marks one as running.
    pub fn training_job(&mut self, now: u64) -> Option<TrainingJob> {
        if self.training {
            return None;
        }
        let due = match &self.model {
            None => self.samples >= self.cfg.first_training_after as u64,
            Some(_) if self.loaded && self.trained_at_sample == 0 => {
                self.samples >= self.cfg.first_training_after as u64
            }
            Some(_) => self.samples >= self.trained_at_sample + self.cfg.retrain_every as u64,
        };
        if !due {
            return None;
        }
        // Normalise every scope with its current scaler refitted on its whole history, and
        // keep the newest windows within the budget, the host first.
        let schema = self.schema.clone();
        let mut names = self.scopes();
        names.retain(|n| self.scopes[n].raw.len() > self.cfg.model.window + 8);
        let mut budget = self.cfg.max_training_windows;
        let mut series = Vec::new();
        let mut scopes = Vec::new();
        for name in names {
            let sc = self.scopes.get_mut(&name).expect("listed");
            sc.refit(&schema);
            let take = sc.norm.len().min(budget + self.cfg.model.window);
            if take <= self.cfg.model.window {
                break;
            }
            budget -= take - self.cfg.model.window;
            series.push(sc.norm.tail(take).map(<[f32]>::to_vec).collect());
            scopes.push(name);
        }
        self.training = true;
        self.trained_at_sample = self.samples;
        Some(TrainingJob { schema, config: self.cfg.model.clone(), series, scopes, now })
    }

    /// Takes the result of a [`TrainingJob`].
    pub fn install(&mut self, result: Result<Trained, PredictError>) {
        self.training = false;
        match result {
            Ok(Trained { model, mut seeds }) => {
                self.model = Some(Arc::new(model));
                self.loaded = false;
                self.last_error = None;
                // A new model's errors are on a new scale: recalibrate on its own scores.
                for (name, sc) in self.scopes.iter_mut() {
                    sc.lstm_cal = Calibrator::new(self.cfg.calibration.clone());
                    for s in seeds.remove(name).unwrap_or_default() {
                        sc.lstm_cal.push(s);
                    }
                }
            }
            Err(e) => self.last_error = Some(e.to_string()),
        }
    }

    /// The current model, for saving.
    pub fn model(&self) -> Option<Arc<LstmModel>> {
        self.model.clone()
    }

    /// The model's state.
    pub fn status(&self) -> ModelStatus {
        let meta: Option<&ModelMeta> = self.model.as_ref().map(|m| m.meta());
        let state = match (&self.model, self.training, &self.last_error) {
            (Some(_), _, _) => ModelState::Trained,
            (None, true, _) => ModelState::Training,
            (None, false, Some(_)) => ModelState::Failed,
            (None, false, None) => ModelState::Collecting,
        };
        ModelStatus {
            state,
            samples: self.samples,
            samples_until_training: (state == ModelState::Collecting)
                .then(|| (self.cfg.first_training_after as u64).saturating_sub(self.samples)),
            trained_at: meta.map(|m| m.trained_at),
            val_error: meta.map(|m| m.val_error),
            val_error_persistence: meta.map(|m| m.val_error_persistence),
            training_windows: meta.map(|m| m.windows),
            train_seconds: meta.map(|m| m.train_seconds),
            loaded: self.loaded,
            training: self.training,
            last_error: self.last_error.clone(),
        }
    }

    /// The judgement of `scope` over its last `window` steps: the LSTM's once it has scored
    /// there with a calibrated threshold, else the baseline's.
    pub fn judge(&self, scope: &str, window: usize) -> Result<Judgement, EngineError> {
        if scope == HOST && !self.scopes.contains_key(HOST) {
            // The host always exists; it just has no step yet in the first second.
            return Ok(Judgement {
                detector: "robust-z",
                is_anomaly: false,
                score: 0.0,
                threshold: None,
                at: 0,
                contributors: Vec::new(),
            });
        }
        let sc = self.scope(scope)?;
        let recent: Vec<&Judged> = sc.judged.iter().rev().take(window.max(1)).collect();
        let use_lstm = recent.iter().any(|j| j.lstm.is_some() && j.lstm_threshold.is_some());
        let best = recent
            .iter()
            .filter_map(|j| pick(j, use_lstm).map(|p| (j, p)))
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0));
        let detector = if use_lstm { "lstm" } else { "robust-z" };
        let Some((j, (_, th, s, exp))) = best else {
            return Ok(Judgement {
                detector,
                is_anomaly: false,
                score: 0.0,
                threshold: None,
                at: sc.last_t,
                contributors: Vec::new(),
            });
        };
        let scaler = sc.scaler.as_ref().expect("judged steps have a scaler");
        Ok(Judgement {
            detector,
            is_anomaly: th.is_some_and(|th| s.score as f64 > th),
            score: s.score as f64,
            threshold: th,
            at: j.t,
            contributors: contributors(&self.schema, scaler, s, &j.raw, exp, 8),
        })
    }

    /// Where each feature of `scope` is heading over the next `horizon` steps: the LSTM's
    /// rollout once trained, else the least-squares trend of the last minute.
    pub fn forecast(&self, scope: &str, horizon: usize) -> Result<Vec<FeatureForecast>, EngineError> {
        if scope == HOST && !self.scopes.contains_key(HOST) {
            return Ok(Vec::new());
        }
        let sc = self.scope(scope)?;
        let f = self.schema.len();
        let Some(scaler) = &sc.scaler else { return Ok(Vec::new()) };
        let mut values = vec![Vec::with_capacity(horizon); f];
        match &self.model {
            Some(m) if sc.norm.len() >= m.window() => {
                let hist: Vec<&[f32]> = sc.norm.tail(m.window()).collect();
                let out = m.rollout(&hist, horizon);
                for h in 0..horizon {
                    for (j, v) in values.iter_mut().enumerate() {
                        v.push(scaler.denormalize(j, out[h * f + j]) as f64);
                    }
                }
            }
            _ => {
                let n = sc.raw.len().min(60);
                let recent: Vec<&[f32]> = sc.raw.tail(n).collect();
                for (j, v) in values.iter_mut().enumerate() {
                    let ys: Vec<f64> = recent.iter().map(|r| r[j] as f64).collect();
                    let (a, b) = trend(&ys);
                    for h in 1..=horizon {
                        v.push((a + b * (n - 1 + h) as f64).max(0.0));
                    }
                }
            }
        }
        Ok(self
            .schema
            .features
            .iter()
            .zip(values)
            .map(|(spec, values)| {
                let crosses_at =
                    spec.alert.and_then(|th| values.iter().position(|v| *v >= th).map(|i| i as u64 + 1));
                FeatureForecast {
                    feature: spec.name.clone(),
                    unit: spec.unit.clone(),
                    values: values.iter().map(|v| (v * 1000.0).round() / 1000.0).collect(),
                    threshold: spec.alert,
                    crosses_at,
                }
            })
            .collect())
    }

    fn scope(&self, scope: &str) -> Result<&Scope, EngineError> {
        self.scopes.get(scope).ok_or_else(|| {
            let mut known = self.scopes();
            let more = known.len().saturating_sub(20);
            known.truncate(20);
            let mut list = known.join(", ");
            if more > 0 {
                list.push_str(&format!(" and {more} more"));
            }
            if list.is_empty() {
                // Just started (or restarted: history from before a restart is not sampled).
                list = "none yet, the first sample comes within a second of start".into();
            }
            EngineError::UnknownScope(scope.to_string(), list)
        })
    }
}

/// A step's score, threshold and expectation under one detector, with how far past its
/// threshold it is (the rank among steps).
fn pick(j: &Judged, use_lstm: bool) -> Option<(f64, Option<f64>, &StepScore, &Vec<f32>)> {
    let (s, exp, th) = if use_lstm {
        let (s, e) = j.lstm.as_ref()?;
        (s, e, j.lstm_threshold)
    } else {
        let (s, e) = j.baseline.as_ref()?;
        (s, e, j.baseline_threshold)
    };
    let rank = match th {
        Some(th) if th > 0.0 => s.score as f64 / th,
        _ => s.score as f64 * 1e-6,
    };
    Some((rank, th, s, exp))
}

impl Scope {
    fn append(&mut self, raw: &[f32]) {
        let norm = self.scaler.as_ref().map_or_else(|| vec![0.0; raw.len()], |s| s.normalize(raw));
        self.raw.push(raw);
        self.norm.push(&norm);
    }

    fn refit(&mut self, schema: &Schema) {
        let rows: Vec<&[f32]> = self.raw.iter().collect();
        let scaler = Scaler::fit(schema, &rows);
        self.norm = self.raw.map(|r| scaler.normalize(r));
        self.scaler = Some(scaler);
    }
}

/// Intercept and slope of the least-squares line through `ys` at x = 0, 1, ...
fn trend(ys: &[f64]) -> (f64, f64) {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return (ys.first().copied().unwrap_or(0.0), 0.0);
    }
    let mx = (n - 1.0) / 2.0;
    let my = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        sxy += (i as f64 - mx) * (y - my);
        sxx += (i as f64 - mx).powi(2);
    }
    let b = sxy / sxx;
    (my - b * mx, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(x: f32) -> Vec<f32> {
        let mut r = vec![0.0; 8];
        r[0] = x;
        r[4] = 1000.0 + x;
        r
    }

    #[test]
    fn baseline_answers_first_then_flags_a_spike() {
        let mut e = Engine::new(Schema::host(), EngineConfig::default(), None);
        for t in 0..200u64 {
            e.push(t, vec![(HOST.into(), row(1.0 + (t % 3) as f32 * 0.1))]);
        }
        let j = e.judge(HOST, 10).unwrap();
        assert_eq!(j.detector, "robust-z");
        assert!(!j.is_anomaly, "{j:?}");
        assert!(j.threshold.is_some());
        let mut spike = row(1.0);
        spike[2] = 500.0;
        e.push(200, vec![(HOST.into(), spike)]);
        let j = e.judge(HOST, 10).unwrap();
        assert!(j.is_anomaly, "{j:?}");
        assert_eq!(j.contributors[0].feature, "retransmits_per_s");
        assert_eq!(j.contributors[0].value, 500.0);
        assert!(e.judge("nope", 10).is_err());
        assert_eq!(e.status().state, ModelState::Collecting);
        let fc = e.forecast(HOST, 5).unwrap();
        assert_eq!(fc.len(), 8);
        assert_eq!(fc[0].values.len(), 5);
    }

    #[test]
    fn gaps_are_zeros_and_trend_extrapolates() {
        let (a, b) = trend(&[1.0, 2.0, 3.0]);
        assert!((a - 1.0).abs() < 1e-9 && (b - 1.0).abs() < 1e-9);
        let mut e = Engine::new(Schema::host(), EngineConfig::default(), None);
        e.push(10, vec![("svc".into(), row(1.0))]);
        e.push(15, vec![("svc".into(), row(1.0))]);
        assert_eq!(e.scopes["svc"].raw.len(), 6);
        e.push(15, vec![("svc".into(), row(1.0)), (HOST.into(), row(1.0)), (HOST.into(), row(1.0))]);
        assert_eq!(e.scopes["svc"].raw.len(), 6, "a repeated second is ignored");
        assert_eq!(e.scopes[HOST].raw.len(), 1);
        assert_eq!(e.status().samples, 1);
    }
}
