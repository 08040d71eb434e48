//! The evaluation harness: both detectors on every series of a NAB-format data set, scored
//! the honest way.
//!
//! Protocol, per series, unsupervised and causal: the first 15 % of the points (at most 750,
//! NAB's probationary period) fit the normaliser and the first LSTM; after it, the LSTM is
//! retrained every `retrain_every` points on the newest `train_span` points, and both
//! detectors judge each point with a threshold calibrated only on the scores before it. The
//! labels are read only to score. Metrics, per category and overall, over the points after
//! the probationary period:
//!
//! - point-wise precision, recall and F1 (a point inside a labelled window is positive; no
//!   point-adjust),
//! - event-wise recall: windows with at least one alarm in them,
//! - false alarms per day: alarm onsets (an alarm after a non-alarm) outside every window,
//!   per day of time outside windows,
//! - the NAB score under the standard profile (TP 1.0, FP 0.11, FN 1.0), normalised so that
//!   no detection scores 0 and a detection at the start of every window 100. NAB itself picks
//!   each detector's best threshold over the whole corpus; these detectors make their own
//!   decisions, so their scores are what a user would get.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::baseline::RobustZ;
use crate::calibrate::{CalibrationConfig, Calibrator};
use crate::error::PredictError;
use crate::lstm::{ModelConfig, Windows};
use crate::model::LstmModel;
use crate::norm::Scaler;
use crate::schema::Schema;
use crate::score::step_score;

/// Knobs of an evaluation run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalConfig {
    /// The forecaster.
    pub model: ModelConfig,
    /// Points between two LSTM retrains after the first.
    pub retrain_every: usize,
    /// Newest points each retrain learns from.
    pub train_span: usize,
    /// Window of the baseline's rolling median / MAD.
    pub baseline_window: usize,
    /// Threshold calibration of both detectors.
    pub calibration: CalibrationConfig,
    /// Worker threads (series run in parallel).
    pub threads: usize,
    /// Skip the LSTM (baseline only), for a quick look.
    pub baseline_only: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            model: ModelConfig::default(),
            retrain_every: 2000,
            train_span: 1500,
            baseline_window: 64,
            calibration: CalibrationConfig::default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            baseline_only: false,
        }
    }
}

/// One labelled series.
#[derive(Clone, Debug)]
pub struct Series {
    /// `category/name.csv`.
    pub key: String,
    /// Unix seconds per point.
    pub time: Vec<i64>,
    /// Values.
    pub values: Vec<f32>,
    /// Labelled windows as inclusive point index ranges.
    pub windows: Vec<(usize, usize)>,
}

impl Series {
    /// `category` of `category/name.csv`.
    pub fn category(&self) -> &str {
        self.key.split('/').next().unwrap_or("")
    }

    /// NAB's probationary period: 15 % of the points, at most 750.
    pub fn probation(&self) -> usize {
        ((self.values.len() as f64 * 0.15).floor() as usize).min(750)
    }
}

/// Reads every `*.csv` under `data` (as `category/name.csv`) with its windows from `labels`
/// (NAB's `combined_windows.json`). Series without an entry in `labels` are skipped.
pub fn load(data: &Path, labels: &Path) -> Result<Vec<Series>, PredictError> {
    let text = std::fs::read_to_string(labels).map_err(PredictError::io(labels))?;
    let windows: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(&text).map_err(|e| {
        PredictError::Format { path: labels.into(), reason: format!("not NAB windows JSON: {e}") }
    })?;
    let mut out = Vec::new();
    for (key, wins) in &windows {
        let path = data.join(key);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PredictError::Io { path, source: e }),
        };
        let (time, values) = parse_csv(&path, &text)?;
        let mut idx = Vec::new();
        for (a, b) in wins {
            let (a, b) =
                (parse_time(a).ok_or_else(|| bad(labels, a))?, parse_time(b).ok_or_else(|| bad(labels, b))?);
            let lo = time.partition_point(|&t| t < a);
            let hi = time.partition_point(|&t| t <= b);
            if hi > lo {
                idx.push((lo, hi - 1));
            }
        }
        out.push(Series { key: key.clone(), time, values, windows: idx });
    }
    if out.is_empty() {
        return Err(PredictError::Format {
            path: data.into(),
            reason: format!("no series of {} found under it", labels.display()),
        });
    }
    Ok(out)
}

fn bad(path: &Path, what: &str) -> PredictError {
    PredictError::Format { path: path.into(), reason: format!("bad timestamp {what:?}") }
}

fn parse_csv(path: &Path, text: &str) -> Result<(Vec<i64>, Vec<f32>), PredictError> {
    let (mut time, mut values) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row =
            line.split_once(',').and_then(|(t, v)| Some((parse_time(t)?, v.trim().parse::<f32>().ok()?)));
        let Some((t, v)) = row else {
            return Err(PredictError::Format {
                path: path.into(),
                reason: format!("line {}: want timestamp,value", n + 1),
            });
        };
        time.push(t);
        values.push(v);
    }
    Ok((time, values))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC) as Unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, clock) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let clock = clock.split('.').next()?;
    let mut c = clock.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (c.next()?.ok()?, c.next()?.ok()?, c.next().unwrap_or(Ok(0)).ok()?);
    let valid = (0..=9999).contains(&y)
        && (1..=12).contains(&m)
        && (1..=31).contains(&day)
        && (0..24).contains(&hh)
        && (0..60).contains(&mm)
        && (0..=60).contains(&ss);
    if !valid {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Alarms of both detectors on one series.
#[derive(Clone, Debug)]
pub struct SeriesRun {
    /// The series key.
    pub key: String,
    /// Baseline alarms per point.
    pub baseline: Vec<bool>,
    /// LSTM alarms per point (empty if skipped).
    pub lstm: Vec<bool>,
    /// LSTM validation MSE of each training, normalised units.
    pub val_errors: Vec<f64>,
    /// LSTM trainings.
    pub trainings: usize,
    /// Windows the LSTM trained on, over all trainings.
    pub windows_trained: usize,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// Seconds spent forecasting.
    pub infer_seconds: f64,
}

/// Runs both detectors over `s`.
pub fn run_series(s: &Series, cfg: &EvalConfig) -> Result<SeriesRun, PredictError> {
    let schema = Schema::univariate();
    let n = s.values.len();
    let p = s.probation().max(cfg.model.window + 16).min(n);
    let raw: Vec<Vec<f32>> = s.values.iter().map(|&v| vec![v]).collect();
    let scaler = Scaler::fit(&schema, &raw[..p]);
    let rows: Vec<Vec<f32>> = raw.iter().map(|r| scaler.normalize(r)).collect();

    // Baseline: rolling robust z, threshold calibrated on its own past scores.
    let rz = RobustZ { window: cfg.baseline_window };
    let mut cal = Calibrator::new(cfg.calibration.clone());
    let mut baseline = vec![false; n];
    for t in 1..n {
        let Some((c, spread)) = rz.expect(&rows[t.saturating_sub(rz.window)..t]) else { continue };
        let sc = step_score(&rows[t], &c, &spread).score;
        baseline[t] = t >= p && cal.threshold().is_some_and(|th| sc as f64 > th);
        cal.push(sc);
    }

    let mut run = SeriesRun {
        key: s.key.clone(),
        baseline,
        lstm: Vec::new(),
        val_errors: Vec::new(),
        trainings: 0,
        windows_trained: 0,
        train_seconds: 0.0,
        infer_seconds: 0.0,
    };
    if cfg.baseline_only {
        return Ok(run);
    }

    // LSTM: trained on the probationary period, then retrained on the newest points; each
    // segment is forecast with the model trained before it.
    let w = cfg.model.window;
    let mut lstm = vec![false; n];
    let mut cal = Calibrator::new(cfg.calibration.clone());
    let mut seg_start = p;
    let mut rows = rows;
    // Scores of the training period's own windows warm the calibrator up (in-sample, so
    // optimistic; the threshold loosens as real scores arrive).
    let mut first = true;
    while seg_start < n {
        let from = seg_start.saturating_sub(if first { p } else { cfg.train_span });
        if !first {
            // The normaliser follows the data the model is retrained on.
            let scaler = Scaler::fit(&schema, &raw[from..seg_start]);
            rows = raw.iter().map(|r| scaler.normalize(r)).collect();
        }
        let started = std::time::Instant::now();
        let model = LstmModel::train(&schema, &[&rows[from..seg_start]], &cfg.model, 0)?;
        run.train_seconds += started.elapsed().as_secs_f64();
        run.trainings += 1;
        run.windows_trained += model.meta().windows;
        run.val_errors.push(model.meta().val_error);
        let seg_end = (seg_start + cfg.retrain_every).min(n);
        let score_from = if first { w } else { seg_start };
        let win = Windows::from_rows(&rows[score_from - w..seg_end], w);
        let started = std::time::Instant::now();
        let pred = model.forecast_next(&win);
        run.infer_seconds += started.elapsed().as_secs_f64();
        let scale = &model.meta().error_scale;
        for (i, t) in (score_from..seg_end).enumerate() {
            let sc = step_score(&rows[t], &pred[i..i + 1], scale).score;
            lstm[t] = t >= p && cal.threshold().is_some_and(|th| sc as f64 > th);
            cal.push(sc);
        }
        seg_start = seg_end;
        first = false;
    }
    run.lstm = lstm;
    Ok(run)
}

/// Counts behind the metrics, summable over series.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Series.
    pub series: usize,
    /// Alarmed points inside windows.
    pub tp: u64,
    /// Alarmed points outside windows.
    pub fp: u64,
    /// Quiet points inside windows.
    pub fn_: u64,
    /// Windows after the probationary period.
    pub windows: u64,
    /// Of which had an alarm.
    pub windows_caught: u64,
    /// Alarm onsets outside windows.
    pub false_alarms: u64,
    /// Time outside windows after the probationary period, days.
    pub normal_days: f64,
    /// Raw NAB score (standard profile).
    pub nab_raw: f64,
    /// Raw NAB score of a detector that never fires.
    pub nab_null: f64,
    /// Raw NAB score of a detector that fires at the start of every window.
    pub nab_perfect: f64,
}

/// Metrics derived from a [`Tally`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metrics {
    /// Point-wise precision.
    pub precision: f64,
    /// Point-wise recall.
    pub recall: f64,
    /// Point-wise F1.
    pub f1: f64,
    /// Windows caught / windows.
    pub event_recall: f64,
    /// Alarm onsets outside windows per day of normal time.
    pub false_alarms_per_day: f64,
    /// NAB standard-profile score, 0 = never fires, 100 = perfect.
    pub nab_score: f64,
    /// The counts.
    pub tally: Tally,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.series += o.series;
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.windows += o.windows;
        self.windows_caught += o.windows_caught;
        self.false_alarms += o.false_alarms;
        self.normal_days += o.normal_days;
        self.nab_raw += o.nab_raw;
        self.nab_null += o.nab_null;
        self.nab_perfect += o.nab_perfect;
    }

    /// The metrics.
    pub fn metrics(&self) -> Metrics {
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let precision = div(self.tp as f64, (self.tp + self.fp) as f64);
        let recall = div(self.tp as f64, (self.tp + self.fn_) as f64);
        let f1 = div(2.0 * precision * recall, precision + recall);
        let span = self.nab_perfect - self.nab_null;
        Metrics {
            precision,
            recall,
            f1,
            event_recall: div(self.windows_caught as f64, self.windows as f64),
            false_alarms_per_day: div(self.false_alarms as f64, self.normal_days),
            nab_score: if span > 0.0 { 100.0 * (self.nab_raw - self.nab_null) / span } else { 0.0 },
            tally: self.clone(),
        }
    }
}

fn scaled_sigmoid(x: f64) -> f64 {
    if x > 3.0 { -1.0 } else { 2.0 / (1.0 + (5.0 * x).exp()) - 1.0 }
}

/// Counts of `alarms` on `s`.
pub fn tally(s: &Series, alarms: &[bool]) -> Tally {
    let n = s.values.len();
    let p = s.probation();
    let mut in_window = vec![None; n];
    for (k, &(a, b)) in s.windows.iter().enumerate() {
        for slot in in_window.iter_mut().take(b + 1).skip(a) {
            *slot = Some(k);
        }
    }
    let mut t = Tally { series: 1, ..Default::default() };
    let (tp_w, fp_w, fn_w) = (1.0, 0.11, 1.0);
    let mut caught = vec![false; s.windows.len()];
    let mut prev_alarm = false;
    let mut prev_window: Option<usize> = None;
    for (i, &window) in in_window.iter().enumerate() {
        let alarm = alarms.get(i).copied().unwrap_or(false) && i >= p;
        match window {
            Some(k) => {
                prev_window = Some(k);
                if i >= p {
                    if alarm { t.tp += 1 } else { t.fn_ += 1 }
                }
                if alarm && !caught[k] {
                    caught[k] = true;
                    let (a, b) = s.windows[k];
                    let width = (b - a + 1) as f64;
                    let pos = -((b - i + 1) as f64) / width;
                    t.nab_raw += tp_w * scaled_sigmoid(pos);
                }
            }
            None => {
                if i >= p {
                    if alarm {
                        t.fp += 1;
                        if !prev_alarm {
                            t.false_alarms += 1;
                        }
                        // NAB charges every false detection, less so just after a window.
                        let unweighted = match prev_window {
                            None => -1.0,
                            Some(k) => {
                                let (a, b) = s.windows[k];
                                let width = (b - a + 1) as f64;
                                scaled_sigmoid((i - b) as f64 / (width - 1.0).max(1.0))
                            }
                        };
                        t.nab_raw += fp_w * unweighted;
                    }
                    if i + 1 < n {
                        t.normal_days += (s.time[i + 1] - s.time[i]).max(0) as f64 / 86_400.0;
                    }
                }
            }
        }
        prev_alarm = alarm;
    }
    for (k, &(_, b)) in s.windows.iter().enumerate() {
        // NAB counts every window; a window that ended inside the probationary period cannot
        // be caught by anyone, so it is left out here as in the point-wise counts.
        if b < p {
            continue;
        }
        t.windows += 1;
        t.nab_null -= fn_w;
        t.nab_perfect += tp_w * scaled_sigmoid(-1.0);
        if caught[k] {
            t.windows_caught += 1;
        } else {
            t.nab_raw -= fn_w;
        }
    }
    t
}

/// One detector's metrics per category and overall.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetectorReport {
    /// `robust-z` or `lstm`.
    pub detector: String,
    /// Per category, by name.
    pub categories: BTreeMap<String, Metrics>,
    /// Over every series.
    pub overall: Metrics,
}

/// Everything an evaluation run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Where the data came from.
    pub data: PathBuf,
    /// Series evaluated.
    pub series: usize,
    /// Points evaluated.
    pub points: usize,
    /// The settings.
    pub config: EvalConfig,
    /// Baseline first, then the LSTM (unless skipped).
    pub detectors: Vec<DetectorReport>,
    /// LSTM trainings over all series.
    pub trainings: usize,
    /// Training windows over all trainings.
    pub windows_trained: usize,
    /// Seconds spent training, summed over threads.
    pub train_seconds: f64,
    /// Seconds spent forecasting, summed over threads.
    pub infer_seconds: f64,
    /// Median LSTM validation MSE (normalised units).
    pub median_val_error: f64,
    /// Wall time of the run, seconds.
    pub wall_seconds: f64,
}

/// Runs both detectors on every series in `series` and scores them.
pub fn evaluate(data: &Path, series: &[Series], cfg: &EvalConfig) -> Result<Report, PredictError> {
    let started = std::time::Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..cfg.threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(s) = series.get(i) else { break };
                    let r = run_series(s, cfg);
                    results.lock().expect("no panics hold it").push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("threads joined");
    results.sort_by_key(|(i, _)| *i);
    let runs: Vec<SeriesRun> = results.into_iter().map(|(_, r)| r).collect::<Result<_, _>>()?;
    let mut detectors = Vec::new();
    let names: &[&str] = if cfg.baseline_only { &["robust-z"] } else { &["robust-z", "lstm"] };
    for name in names {
        let mut cats: BTreeMap<String, Tally> = BTreeMap::new();
        let mut all = Tally::default();
        for (s, r) in series.iter().zip(&runs) {
            let alarms = if *name == "lstm" { &r.lstm } else { &r.baseline };
            let t = tally(s, alarms);
            cats.entry(s.category().to_string()).or_default().add(&t);
            all.add(&t);
        }
        detectors.push(DetectorReport {
            detector: name.to_string(),
            categories: cats.into_iter().map(|(k, v)| (k, v.metrics())).collect(),
            overall: all.metrics(),
        });
    }
    let mut vals: Vec<f32> = runs.iter().flat_map(|r| r.val_errors.iter().map(|v| *v as f32)).collect();
    Ok(Report {
        data: data.into(),
        series: series.len(),
        points: series.iter().map(|s| s.values.len()).sum(),
        config: cfg.clone(),
        detectors,
        trainings: runs.iter().map(|r| r.trainings).sum(),
        windows_trained: runs.iter().map(|r| r.windows_trained).sum(),
        train_seconds: runs.iter().map(|r| r.train_seconds).sum(),
        infer_seconds: runs.iter().map(|r| r.infer_seconds).sum(),
        median_val_error: crate::norm::quantile(&mut vals, 0.5) as f64,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

impl Report {
    /// The report as a plain-text table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} series, {} points from {} (unsupervised, causal; probationary 15% / max 750 points)\n",
            self.series,
            self.points,
            self.data.display()
        );
        let _ = writeln!(
            out,
            "{:<22} {:<9} {:>6} {:>6} {:>6} {:>10} {:>9} {:>7}",
            "category", "detector", "prec", "recall", "F1", "events", "FA/day", "NAB"
        );
        let mut cats: Vec<&String> = self.detectors[0].categories.keys().collect();
        cats.dedup();
        let row = |out: &mut String, cat: &str, d: &str, m: &Metrics| {
            let _ = writeln!(
                out,
                "{:<22} {:<9} {:>6.3} {:>6.3} {:>6.3} {:>10} {:>9.2} {:>7.1}",
                cat,
                d,
                m.precision,
                m.recall,
                m.f1,
                format!("{}/{}", m.tally.windows_caught, m.tally.windows),
                m.false_alarms_per_day,
                m.nab_score
            );
        };
        for cat in cats {
            for d in &self.detectors {
                if let Some(m) = d.categories.get(cat) {
                    row(&mut out, cat, &d.detector, m);
                }
            }
        }
        for d in &self.detectors {
            row(&mut out, "overall", &d.detector, &d.overall);
        }
        if self.trainings > 0 {
            let _ = writeln!(
                out,
                "\nLSTM: {} trainings on {} windows in {:.1} s ({:.0} windows/s incl. epochs x{}), forecasts in {:.1} s; median validation MSE {:.3}; wall {:.1} s",
                self.trainings,
                self.windows_trained,
                self.train_seconds,
                (self.windows_trained * self.config.model.epochs) as f64 / self.train_seconds.max(1e-9),
                self.config.model.epochs,
                self.infer_seconds,
                self.median_val_error,
                self.wall_seconds
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_time("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_time("2014-02-19 10:50:00.000000"), Some(1_392_807_000));
        assert_eq!(parse_time("2000-03-01 00:00:01"), Some(951_868_801));
        assert_eq!(parse_time("garbage"), None);
        assert_eq!(parse_time("99999999999999-01-01 00:00:00"), None);
        assert_eq!(parse_time("2014-13-01 00:00:00"), None);
    }

    fn series(n: usize, windows: Vec<(usize, usize)>) -> Series {
        Series {
            key: "cat/x.csv".into(),
            time: (0..n as i64).map(|i| i * 300).collect(),
            values: vec![0.0; n],
            windows,
        }
    }

    #[test]
    fn nab_score_bounds() {
        let s = series(1000, vec![(400, 449), (800, 849)]);
        let none = tally(&s, &[]).metrics();
        assert_eq!(none.nab_score, 0.0);
        assert_eq!(none.tally.windows, 2);
        let mut perfect = vec![false; 1000];
        perfect[400] = true;
        perfect[800] = true;
        let m = tally(&s, &perfect).metrics();
        assert!((m.nab_score - 100.0).abs() < 1e-9, "{}", m.nab_score);
        assert_eq!(m.event_recall, 1.0);
        assert_eq!(m.precision, 1.0);
        assert!((m.recall - 2.0 / 100.0).abs() < 1e-12);
        // A late detection earns less, a false alarm costs.
        let mut late = vec![false; 1000];
        late[440] = true;
        late[200] = true;
        late[201] = true;
        let m = tally(&s, &late).metrics();
        assert!(m.nab_score < 50.0 && m.nab_score > -50.0, "{}", m.nab_score);
        assert_eq!(m.tally.false_alarms, 1, "two adjacent false points are one onset");
        assert_eq!(m.tally.fp, 2);
        assert_eq!(m.tally.windows_caught, 1);
    }

    #[test]
    fn probation_is_not_scored() {
        let s = series(1000, vec![(10, 20), (500, 510)]);
        let mut a = vec![false; 1000];
        a[15] = true;
        let t = tally(&s, &a);
        assert_eq!(t.windows, 1, "window inside the probationary period left out");
        assert_eq!(t.tp + t.fp, 0);
    }
}
