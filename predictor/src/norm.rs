//! Robust normalisation: each column centred on its median and scaled by its spread, fitted
//! on a training window, so one spike in the training data does not squash everything else.

use serde::{Deserialize, Serialize};

use crate::schema::Schema;

/// Normalised values are clipped to this many scale units: a 1000-sigma burst would
/// otherwise saturate the LSTM's gates for the rest of the window.
pub const CLIP: f32 = 20.0;

/// Per-column centre and scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Median of each (transformed) column.
    pub center: Vec<f32>,
    /// Spread of each (transformed) column: IQR / 1.349, else MAD * 1.4826, else a floor.
    pub scale: Vec<f32>,
    /// Whether the column is log1p-transformed first.
    pub log: Vec<bool>,
}

/// The `q` quantile (0..=1) of `v` by linear interpolation; `v` is sorted in place.
pub fn quantile(v: &mut [f32], q: f64) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = (pos - lo as f64) as f32;
    v[lo] + (v[hi] - v[lo]) * frac
}

/// Median and robust spread (IQR / 1.349, else 1.4826 MAD) of `v`; `v` is reordered.
pub fn robust_stats(v: &mut [f32]) -> (f32, f32) {
    let med = quantile(v, 0.5);
    let iqr = quantile(v, 0.75) - quantile(v, 0.25);
    if iqr > 0.0 {
        return (med, iqr / 1.349);
    }
    let mut dev: Vec<f32> = v.iter().map(|x| (x - med).abs()).collect();
    (med, 1.4826 * quantile(&mut dev, 0.5))
}

impl Scaler {
    /// Fits on `rows` (each a raw feature vector in `schema` order).
    pub fn fit<R: AsRef<[f32]>>(schema: &Schema, rows: &[R]) -> Scaler {
        let log: Vec<bool> = schema.features.iter().map(|f| f.log).collect();
        let mut center = Vec::with_capacity(log.len());
        let mut scale = Vec::with_capacity(log.len());
        for (j, &lg) in log.iter().enumerate() {
            let mut col: Vec<f32> = rows.iter().map(|r| transform(r.as_ref()[j], lg)).collect();
            let (med, spread) = robust_stats(&mut col);
            // A column that never moved in training (an idle counter, a flat line) still
            // needs a unit: one e-fold for log columns, 1 % of the level otherwise.
            let floor = if lg { 0.5 } else { (med.abs() * 0.01).max(1e-3) };
            center.push(med);
            scale.push(spread.max(floor));
        }
        Scaler { center, scale, log }
    }

    /// `raw` in normalised units, clipped to ±[`CLIP`].
    pub fn normalize(&self, raw: &[f32]) -> Vec<f32> {
        raw.iter()
            .enumerate()
            .map(|(j, &x)| ((transform(x, self.log[j]) - self.center[j]) / self.scale[j]).clamp(-CLIP, CLIP))
            .collect()
    }

    /// Feature `j`'s normalised value `z` back in raw units.
    pub fn denormalize(&self, j: usize, z: f32) -> f32 {
        let t = z * self.scale[j] + self.center[j];
        if self.log[j] { t.exp_m1().max(0.0) } else { t }
    }
}

fn transform(x: f32, log: bool) -> f32 {
    let x = if x.is_finite() { x } else { 0.0 };
    if log { x.max(0.0).ln_1p() } else { x }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlier_does_not_move_the_fit() {
        let schema = Schema::univariate();
        let mut rows: Vec<Vec<f32>> = (0..100).map(|i| vec![10.0 + (i % 5) as f32]).collect();
        let clean = Scaler::fit(&schema, &rows);
        rows[50] = vec![1e9];
        let dirty = Scaler::fit(&schema, &rows);
        assert_eq!(clean.center, dirty.center);
        assert!((clean.scale[0] - dirty.scale[0]).abs() < 1e-6);
        assert_eq!(dirty.normalize(&[1e9])[0], CLIP);
    }

    #[test]
    fn round_trip_and_floors() {
        let schema = Schema::host();
        let rows = vec![vec![0.0; schema.len()]; 50];
        let s = Scaler::fit(&schema, &rows);
        assert!(s.scale.iter().all(|&x| x == 0.5), "idle log columns get one e-fold: {:?}", s.scale);
        let z = s.normalize(&[20.0; 8]);
        assert!((s.denormalize(0, z[0]) - 20.0).abs() < 1e-3);
        let flat = Scaler::fit(&Schema::univariate(), &vec![vec![200.0]; 10]);
        assert_eq!(flat.scale[0], 2.0);
    }

    #[test]
    fn quantiles() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0, 5.0];
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut v, 0.25), 2.0);
        assert_eq!(quantile(&mut v, 1.0), 5.0);
    }
}
