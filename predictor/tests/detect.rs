//! The LSTM end to end on synthetic data: it learns a seasonal series, flags an injected
//! spike and level shift with a calibrated threshold, and survives a save / load.

use bpfsight_predictor::calibrate::{CalibrationConfig, Calibrator};
use bpfsight_predictor::lstm::{ModelConfig, Windows};
use bpfsight_predictor::norm::Scaler;
use bpfsight_predictor::score::step_score;
use bpfsight_predictor::{LstmModel, PredictError, Schema};

fn series(n: usize) -> Vec<Vec<f32>> {
    let mut seed = 42u64;
    (0..n)
        .map(|i| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let noise = ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
            vec![10.0 + 3.0 * (i as f32 * 2.0 * std::f32::consts::PI / 24.0).sin() + noise]
        })
        .collect()
}

fn cfg() -> ModelConfig {
    ModelConfig { window: 24, hidden: 16, epochs: 10, batch: 32, lr: 1e-2, seed: 3 }
}

/// Scores of `rows[from..]` with `model`, each against a threshold calibrated on the scores
/// before it; returns (scores, alarms).
fn judge(model: &LstmModel, rows: &[Vec<f32>], from: usize) -> (Vec<f32>, Vec<bool>) {
    let w = model.window();
    let win = Windows::from_rows(&rows[from - w..], w);
    let pred = model.forecast_next(&win);
    let mut cal = Calibrator::new(CalibrationConfig::default());
    let (mut scores, mut alarms) = (Vec::new(), Vec::new());
    for (i, r) in rows[from..].iter().enumerate() {
        let s = step_score(r, &pred[i..i + 1], &model.meta().error_scale).score;
        alarms.push(cal.threshold().is_some_and(|t| s as f64 > t));
        cal.push(s);
        scores.push(s);
    }
    (scores, alarms)
}

#[test]
fn learns_the_season_and_flags_spike_and_shift() {
    let schema = Schema::univariate();
    let mut raw = series(1400);
    raw[1100][0] += 8.0; // spike
    for r in &mut raw[1250..] {
        r[0] += 6.0; // level shift
    }
    let scaler = Scaler::fit(&schema, &raw[..600]);
    let rows: Vec<Vec<f32>> = raw.iter().map(|r| scaler.normalize(r)).collect();
    let model = LstmModel::train(&schema, &[&rows[..600]], &cfg(), 0).unwrap();
    let m = model.meta();
    assert!(
        m.val_error < m.val_error_persistence,
        "the LSTM must beat 'no change' on a seasonal series: {} vs {}",
        m.val_error,
        m.val_error_persistence
    );
    let (scores, alarms) = judge(&model, &rows, 600);
    let at = |t: usize| t - 600;
    assert!(alarms[at(1100)], "spike missed: score {} ", scores[at(1100)]);
    assert!(
        alarms[at(1250)..at(1256)].iter().any(|a| *a),
        "level shift missed: {:?}",
        &scores[at(1250)..at(1256)]
    );
    let false_alarms = alarms[..at(1100)].iter().filter(|a| **a).count();
    assert!(false_alarms <= 3, "{false_alarms} false alarms on 500 normal points");
}

#[test]
fn save_load_round_trip_scores_identically_and_checks_the_schema() {
    let schema = Schema::univariate();
    let raw = series(500);
    let scaler = Scaler::fit(&schema, &raw[..300]);
    let rows: Vec<Vec<f32>> = raw.iter().map(|r| scaler.normalize(r)).collect();
    let cfg = ModelConfig { epochs: 2, ..cfg() };
    let model = LstmModel::train(&schema, &[&rows[..300]], &cfg, 1_700_000_000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    assert!(dir.path().join("forecaster.bpk").exists());
    let loaded = LstmModel::load(dir.path(), &schema).unwrap().expect("a model was saved");
    assert_eq!(loaded.meta(), model.meta());
    let (a, _) = judge(&model, &rows, 300);
    let (b, _) = judge(&loaded, &rows, 300);
    assert_eq!(a, b, "a loaded model must score exactly as the saved one");
    assert_eq!(model.rollout(&rows[..300], 5), loaded.rollout(&rows[..300], 5));

    // Another schema is refused, with both schemas named.
    let err = LstmModel::load(dir.path(), &Schema::host()).unwrap_err();
    assert!(matches!(err, PredictError::SchemaMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("univariate@v1") && msg.contains("host@v1"), "{msg}");
    // No model is not an error; too little data is.
    assert!(LstmModel::load(&dir.path().join("none"), &schema).unwrap().is_none());
    let err = LstmModel::train(&schema, &[&rows[..40]], &cfg, 0).unwrap_err();
    assert!(matches!(err, PredictError::NotEnoughData { .. }), "{err}");
}
