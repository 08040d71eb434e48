//! A trained forecaster with everything needed to score with it: its schema, the error scale
//! per feature measured on held-out data, and how it was trained. Saved as a burnpack of the
//! weights plus a JSON sidecar, loaded back with the schema checked.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use crate::error::PredictError;
use crate::lstm::{self, Forecaster, ModelConfig, SeriesWindows, Windows};
use crate::norm::robust_stats;
use crate::schema::Schema;
use crate::score::MIN_ERROR_SCALE;

/// Weights file inside a model directory.
pub const WEIGHTS_FILE: &str = "forecaster.bpk";
/// Metadata file inside a model directory.
pub const META_FILE: &str = "forecaster.json";

/// Fewest training windows worth a model.
pub const MIN_WINDOWS: usize = 64;

/// How a model was trained, saved beside its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// The features, in input order.
    pub schema: Schema,
    /// Shape and training settings.
    pub config: ModelConfig,
    /// Robust spread of the forecast error per feature on held-out windows, normalised units.
    pub error_scale: Vec<f32>,
    /// Mean squared forecast error on held-out windows, normalised units.
    pub val_error: f64,
    /// Mean squared error of "no change" on the same windows, for comparison.
    pub val_error_persistence: f64,
    /// Final epoch's training loss.
    pub train_loss: f64,
    /// Training windows.
    pub windows: usize,
    /// When training finished, Unix seconds.
    pub trained_at: u64,
    /// Wall time of the training, seconds.
    pub train_seconds: f64,
}

/// A trained forecaster, ready to score on the CPU.
#[derive(Debug)]
pub struct LstmModel {
    model: Forecaster,
    meta: ModelMeta,
    device: Device,
}

impl LstmModel {
    /// Trains on the windows of every series in `series` (normalised rows, oldest first). The
    /// newest fifth of each series' windows is held out to measure the error scale.
    pub fn train(
        schema: &Schema,
        series: &[&[Vec<f32>]],
        cfg: &ModelConfig,
        now: u64,
    ) -> Result<LstmModel, PredictError> {
        let started = std::time::Instant::now();
        let f = schema.len();
        // The newest fifth of each series' windows is held out, copied (it is scored whole);
        // the rest is read from the rows batch by batch.
        let mut train = SeriesWindows::new(series, cfg.window);
        let mut val = Windows::default();
        for (s, rows) in series.iter().enumerate() {
            let n = rows.len().saturating_sub(cfg.window);
            let cut = n - n / 5;
            train.add(s, 0, cut);
            val.extend(&Windows::from_rows(&rows[cut..], cfg.window));
        }
        if train.len() < MIN_WINDOWS {
            return Err(PredictError::NotEnoughData { windows: train.len(), needed: MIN_WINDOWS });
        }
        let device = Device::flex().autodiff();
        device.seed(cfg.seed);
        let fresh = Forecaster::new(f, cfg, &device);
        let (trained, train_loss) = lstm::train(fresh, &train, f, cfg, &device);
        let model = trained.valid();
        let device = Device::flex();
        let eval = if val.n > 0 {
            val
        } else {
            let mut all = Windows::default();
            for rows in series {
                all.extend(&Windows::from_rows(rows, cfg.window));
            }
            all
        };
        let pred = lstm::predict(&model, &eval, f, cfg.window, &device);
        let mut error_scale = Vec::with_capacity(f);
        let (mut mse, mut persist) = (0.0f64, 0.0f64);
        for j in 0..f {
            let mut err: Vec<f32> = (0..eval.n).map(|i| eval.targets[i * f + j] - pred[i * f + j]).collect();
            mse += err.iter().map(|e| (*e as f64).powi(2)).sum::<f64>();
            persist += (0..eval.n)
                .map(|i| {
                    (eval.targets[i * f + j] - eval.inputs[(i * cfg.window + cfg.window - 1) * f + j]) as f64
                })
                .map(|e| e * e)
                .sum::<f64>();
            let (_, s) = robust_stats(&mut err);
            error_scale.push(s.max(MIN_ERROR_SCALE));
        }
        let denom = (eval.n * f).max(1) as f64;
        let meta = ModelMeta {
            schema: schema.clone(),
            config: cfg.clone(),
            error_scale,
            val_error: mse / denom,
            val_error_persistence: persist / denom,
            train_loss,
            windows: train.len(),
            trained_at: now,
            train_seconds: started.elapsed().as_secs_f64(),
        };
        Ok(LstmModel { model, meta, device })
    }

    /// How this model was trained.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// Steps of history a forecast reads.
    pub fn window(&self) -> usize {
        self.meta.config.window
    }

    /// The next step after each window of `windows` (`n * features`, normalised).
    pub fn forecast_next(&self, windows: &Windows) -> Vec<f32> {
        lstm::predict(&self.model, windows, self.meta.schema.len(), self.window(), &self.device)
    }

    /// `horizon` steps after `history` (its last [`LstmModel::window`] rows), each fed back
    /// as the next input; `horizon * features` values.
    pub fn rollout<R: AsRef<[f32]>>(&self, history: &[R], horizon: usize) -> Vec<f32> {
        let (w, f) = (self.window(), self.meta.schema.len());
        let flat: Vec<f32> =
            history[history.len().saturating_sub(w)..].iter().flat_map(|r| r.as_ref()).copied().collect();
        let steps = flat.len() / f.max(1);
        if steps == 0 || horizon == 0 {
            return Vec::new();
        }
        let x = Tensor::<3>::from_data(TensorData::new(flat, [1, steps, f]), &self.device);
        let mut out = Vec::with_capacity(horizon * f);
        for t in self.model.rollout(x, horizon, crate::norm::CLIP) {
            out.extend(t.into_data().try_into_vec::<f32>().expect("f32 tensor"));
        }
        out
    }

    /// Writes the weights and metadata into `dir` (created if missing), replacing any model
    /// there only once both files are complete.
    pub fn save(&self, dir: &Path) -> Result<(), PredictError> {
        std::fs::create_dir_all(dir).map_err(PredictError::io(dir))?;
        let tmp_weights = dir.join(format!("{WEIGHTS_FILE}.tmp"));
        let mut store = BurnpackStore::from_file(&tmp_weights).auto_extension(false).overwrite(true);
        self.model
            .save_into(&mut store)
            .map_err(|e| PredictError::Format { path: tmp_weights.clone(), reason: e.to_string() })?;
        let tmp_meta = dir.join(format!("{META_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(&self.meta).expect("meta serialises");
        std::fs::write(&tmp_meta, json).map_err(PredictError::io(&tmp_meta))?;
        std::fs::rename(&tmp_weights, dir.join(WEIGHTS_FILE))
            .map_err(PredictError::io(dir.join(WEIGHTS_FILE)))?;
        std::fs::rename(&tmp_meta, dir.join(META_FILE)).map_err(PredictError::io(dir.join(META_FILE)))?;
        Ok(())
    }

    /// The model saved in `dir`, `None` if there is none, an error if it is unreadable or was
    /// trained on a schema other than `expected`.
    pub fn load(dir: &Path, expected: &Schema) -> Result<Option<LstmModel>, PredictError> {
        let meta_path: PathBuf = dir.join(META_FILE);
        let bytes = match std::fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PredictError::Io { path: meta_path, source: e }),
        };
        let meta: ModelMeta = serde_json::from_slice(&bytes)
            .map_err(|e| PredictError::Format { path: meta_path.clone(), reason: e.to_string() })?;
        if meta.schema != *expected {
            return Err(PredictError::SchemaMismatch {
                path: meta_path,
                found: meta.schema.describe(),
                expected: expected.describe(),
            });
        }
        let device = Device::flex();
        let mut model = Forecaster::new(expected.len(), &meta.config, &device);
        let weights = dir.join(WEIGHTS_FILE);
        let mut store = BurnpackStore::from_file(&weights).auto_extension(false);
        model
            .load_from(&mut store)
            .map_err(|e| PredictError::Format { path: weights.clone(), reason: e.to_string() })?;
        Ok(Some(LstmModel { model, meta, device }))
    }
}
