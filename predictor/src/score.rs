//! From a forecast (or a baseline's expectation) to a score and the features behind it.

use serde::{Deserialize, Serialize};

use crate::norm::Scaler;
use crate::schema::Schema;

/// Smallest error scale, in normalised units: a feature the model predicted perfectly in
/// validation must not turn the next rounding error into a 1000-sigma event.
pub const MIN_ERROR_SCALE: f32 = 0.05;

/// One feature's part in a score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Contributor {
    /// Feature name (schema order is the model's; this list is by share, largest first).
    pub feature: String,
    /// Observed value, raw units.
    pub value: f64,
    /// What the detector expected, raw units.
    pub expected: f64,
    /// Signed error in robust standard deviations.
    pub z: f64,
    /// Share of the squared error, 0..=1.
    pub share: f64,
}

/// The score of one step: the L2 norm of the per-feature z-scores, and those z-scores.
#[derive(Clone, Debug)]
pub struct StepScore {
    /// `sqrt(sum z^2)`.
    pub score: f32,
    /// Per feature, schema order.
    pub z: Vec<f32>,
}

/// Scores `actual` against `expected` (both normalised) with per-feature error `scale`.
pub fn step_score(actual: &[f32], expected: &[f32], scale: &[f32]) -> StepScore {
    let z: Vec<f32> =
        actual.iter().zip(expected).zip(scale).map(|((a, e), s)| (a - e) / s.max(MIN_ERROR_SCALE)).collect();
    let score = z.iter().map(|v| v * v).sum::<f32>().sqrt();
    StepScore { score, z }
}

/// The features of `s`, largest share first, at most `limit`, zero-share ones left out.
pub fn contributors(
    schema: &Schema,
    scaler: &Scaler,
    s: &StepScore,
    actual_raw: &[f32],
    expected_norm: &[f32],
    limit: usize,
) -> Vec<Contributor> {
    let total: f32 = s.z.iter().map(|v| v * v).sum();
    let mut out: Vec<Contributor> =
        s.z.iter()
            .enumerate()
            .filter(|(_, z)| **z != 0.0)
            .map(|(j, &z)| Contributor {
                feature: schema.features[j].name.clone(),
                value: actual_raw[j] as f64,
                expected: scaler.denormalize(j, expected_norm[j]) as f64,
                z: z as f64,
                share: if total > 0.0 { (z * z / total) as f64 } else { 0.0 },
            })
            .collect();
    out.sort_by(|a, b| b.share.total_cmp(&a.share));
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_rank_the_off_feature_first() {
        let schema = Schema::host();
        let scaler = Scaler::fit(&schema, &vec![vec![0.0; 8]; 10]);
        let expected = vec![0.0; 8];
        let mut actual = vec![0.0; 8];
        actual[2] = 4.0;
        actual[5] = 1.0;
        let s = step_score(&actual, &expected, &[1.0; 8]);
        assert!((s.score - 17f32.sqrt()).abs() < 1e-5);
        let c = contributors(&schema, &scaler, &s, &[0.0; 8], &expected, 8);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].feature, "retransmits_per_s");
        assert!((c[0].share - 16.0 / 17.0).abs() < 1e-6);
    }
}
