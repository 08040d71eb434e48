//! The statistical detector: a rolling robust z-score per feature. It needs no training, so
//! it answers from the first minute, and it is the yardstick the LSTM is reported against.

use serde::{Deserialize, Serialize};

use crate::norm::robust_stats;

/// Rolling median / MAD over the last `window` steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobustZ {
    /// Steps of history the median and spread are taken over.
    pub window: usize,
}

impl RobustZ {
    /// Expected value (median) and spread per feature over the last `window` rows of
    /// `history` (normalised rows, oldest first). `None` with fewer than 8 rows.
    pub fn expect<R: AsRef<[f32]>>(&self, history: &[R]) -> Option<(Vec<f32>, Vec<f32>)> {
        let n = history.len().min(self.window);
        if n < 8 {
            return None;
        }
        let recent = &history[history.len() - n..];
        let features = recent[0].as_ref().len();
        let mut center = Vec::with_capacity(features);
        let mut spread = Vec::with_capacity(features);
        let mut col = Vec::with_capacity(n);
        for j in 0..features {
            col.clear();
            col.extend(recent.iter().map(|r| r.as_ref()[j]));
            let (m, s) = robust_stats(&mut col);
            center.push(m);
            spread.push(s);
        }
        Some((center, spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::step_score;

    #[test]
    fn spike_scores_high_and_normal_low() {
        let hist: Vec<Vec<f32>> = (0..100).map(|i| vec![(i % 7) as f32 * 0.1]).collect();
        let (c, s) = RobustZ { window: 60 }.expect(&hist).unwrap();
        assert!(step_score(&[0.3], &c, &s).score < 1.5);
        assert!(step_score(&[5.0], &c, &s).score > 10.0);
        assert!(RobustZ { window: 60 }.expect(&hist[..5]).is_none());
    }
}
