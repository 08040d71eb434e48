//! Thresholds calibrated on recent scores: peaks over threshold (Siffer et al., "Anomaly
//! Detection in Streams with Extreme Value Theory", KDD 2017).
//!
//! The scores above a high empirical quantile are fitted with a generalised Pareto
//! distribution (method of moments); the threshold is the score exceeded with probability
//! `risk` under that fit. A quiet service gets a tight threshold, a noisy one a loose one, and
//! nobody picks a constant.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::norm::quantile;

/// Calibration settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationConfig {
    /// Recent scores kept.
    pub capacity: usize,
    /// Scores needed before a threshold exists.
    pub min_scores: usize,
    /// Quantile whose exceedances are fitted.
    pub tail_quantile: f64,
    /// Probability of a normal score passing the threshold.
    pub risk: f64,
    /// Lowest threshold, in the score's units (robust z): a near-constant history must not
    /// make ordinary jitter an anomaly.
    pub floor: f64,
    /// Scores between two refits.
    pub refit_every: usize,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        CalibrationConfig {
            capacity: 4096,
            min_scores: 30,
            tail_quantile: 0.98,
            risk: 1e-3,
            floor: 4.0,
            refit_every: 32,
        }
    }
}

/// A stream of scores and the threshold fitted on them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Calibrator {
    cfg: CalibrationConfig,
    scores: VecDeque<f32>,
    threshold: Option<f64>,
    since_fit: usize,
}

impl Calibrator {
    /// An empty calibrator.
    pub fn new(cfg: CalibrationConfig) -> Self {
        Calibrator { cfg, scores: VecDeque::new(), threshold: None, since_fit: 0 }
    }

    /// Adds a score seen on live data. Call [`Calibrator::threshold`] before pushing the
    /// score being judged: a score never calibrates its own threshold.
    pub fn push(&mut self, score: f32) {
        if !score.is_finite() {
            return;
        }
        if self.scores.len() == self.cfg.capacity {
            self.scores.pop_front();
        }
        self.scores.push_back(score);
        self.since_fit += 1;
        if self.scores.len() >= self.cfg.min_scores
            && (self.threshold.is_none() || self.since_fit >= self.cfg.refit_every)
        {
            self.threshold = Some(self.fit());
            self.since_fit = 0;
        }
    }

    /// The current threshold, once [`CalibrationConfig::min_scores`] scores were seen.
    pub fn threshold(&self) -> Option<f64> {
        self.threshold
    }

    /// Scores held.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether no score was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    fn fit(&self) -> f64 {
        let mut v: Vec<f32> = self.scores.iter().copied().collect();
        let n = v.len() as f64;
        let t = quantile(&mut v, self.cfg.tail_quantile) as f64;
        let excess: Vec<f64> = v.iter().map(|&s| s as f64 - t).filter(|&e| e > 0.0).collect();
        let k = excess.len() as f64;
        let max = v.last().copied().unwrap_or(0.0) as f64;
        let z = if k < 3.0 {
            // Too few exceedances to fit a tail: the largest score seen, with a margin.
            max * 1.2
        } else {
            let mean = excess.iter().sum::<f64>() / k;
            let var = excess.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (k - 1.0);
            let r = self.cfg.risk * n / k;
            if var <= f64::EPSILON || mean <= 0.0 {
                t + mean
            } else {
                // Method-of-moments GPD fit, shape clamped to where the moments exist.
                let gamma = (0.5 * (1.0 - mean * mean / var)).clamp(-0.5, 0.45);
                let sigma = 0.5 * mean * (mean * mean / var + 1.0);
                if gamma.abs() < 1e-6 {
                    t - sigma * r.ln()
                } else {
                    t + sigma / gamma * (r.powf(-gamma) - 1.0)
                }
            }
        };
        z.max(self.cfg.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64)
    }

    #[test]
    fn threshold_follows_the_noise_and_respects_risk() {
        // |N(0,1)| scores vs |N(0,5)| scores: the threshold scales, and about `risk` of fresh
        // normal scores pass it.
        let mut seed = 1;
        let mut normal = || {
            let (u1, u2) = (lcg(&mut seed).max(1e-12), lcg(&mut seed));
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()).abs() as f32
        };
        let mut quiet = Calibrator::new(CalibrationConfig { floor: 0.0, ..Default::default() });
        let mut noisy = Calibrator::new(CalibrationConfig { floor: 0.0, ..Default::default() });
        assert_eq!(quiet.threshold(), None);
        for _ in 0..4096 {
            quiet.push(normal());
            noisy.push(5.0 * normal());
        }
        let (tq, tn) = (quiet.threshold().unwrap(), noisy.threshold().unwrap());
        assert!((2.8..4.5).contains(&tq), "quiet threshold {tq}");
        assert!((tn / tq - 5.0).abs() < 1.0, "noisy {tn} vs quiet {tq}");
        let passed = (0..100_000).filter(|_| normal() as f64 > tq).count();
        assert!(passed < 400, "{passed} of 100000 normal scores passed {tq}");
    }

    #[test]
    fn floor_and_warm_up() {
        let mut c = Calibrator::new(CalibrationConfig::default());
        for _ in 0..29 {
            c.push(0.0);
        }
        assert_eq!(c.threshold(), None);
        c.push(0.0);
        assert_eq!(c.threshold(), Some(4.0));
        c.push(f32::NAN);
        assert_eq!(c.len(), 30);
    }
}
