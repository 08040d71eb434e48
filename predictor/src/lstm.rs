//! The forecaster: an LSTM over a window of normalised feature vectors, a linear head that
//! predicts the next vector, trained with Adam on mean squared error.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, LstmConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

/// Shape and training knobs of the forecaster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Steps of history the forecaster reads.
    pub window: usize,
    /// LSTM hidden units.
    pub hidden: usize,
    /// Passes over the training windows.
    pub epochs: usize,
    /// Windows per gradient step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed of the weight initialisation and of the batch order.
    pub seed: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { window: 32, hidden: 24, epochs: 12, batch: 64, lr: 5e-3, seed: 7 }
    }
}

/// LSTM + linear head: `[batch, window, features] -> [batch, features]`.
#[derive(Module, Debug)]
pub struct Forecaster {
    lstm: burn::nn::Lstm,
    head: Linear,
}

impl Forecaster {
    /// A freshly initialised forecaster for `features` inputs.
    pub fn new(features: usize, cfg: &ModelConfig, device: &Device) -> Self {
        Forecaster {
            lstm: LstmConfig::new(features, cfg.hidden, true).init(device),
            head: LinearConfig::new(cfg.hidden, features).init(device),
        }
    }

    /// The next step after each window. The head predicts the change from the window's last
    /// step, which is what a persistence forecast gets wrong, so an untrained model starts
    /// from "no change" rather than from noise.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, w, f] = x.dims();
        let last = x.clone().slice([0..b, w - 1..w, 0..f]).reshape([b, f]);
        let (_, state) = self.lstm.forward(x, None);
        last + self.head.forward(state.hidden)
    }
}

impl Forecaster {
    /// `horizon` steps after each window, each prediction fed back as the next input while
    /// the LSTM's state carries over (one cell step per future step, not a window re-run).
    /// Returns `horizon` tensors of `[batch, features]`.
    pub fn rollout(&self, x: Tensor<3>, horizon: usize, clip: f32) -> Vec<Tensor<2>> {
        let [b, w, f] = x.dims();
        let mut last = x.clone().slice([0..b, w - 1..w, 0..f]).reshape([b, f]);
        let (_, mut state) = self.lstm.forward(x, None);
        let mut out = Vec::with_capacity(horizon);
        for _ in 0..horizon {
            let next = (last + self.head.forward(state.hidden.clone())).clamp(-clip, clip);
            out.push(next.clone());
            let (_, st) = self.lstm.forward(next.clone().reshape([b, 1, f]), Some(state));
            state = st;
            last = next;
        }
        out
    }
}

/// `n` windows of `window x features` and their next-step targets, flattened row-major.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    /// `n * window * features` inputs.
    pub inputs: Vec<f32>,
    /// `n * features` targets.
    pub targets: Vec<f32>,
    /// Window count.
    pub n: usize,
}

impl Windows {
    /// Every window of `window` consecutive rows of `rows` (each `features` long) that has a
    /// next row, that next row being its target.
    pub fn from_rows(rows: &[Vec<f32>], window: usize) -> Windows {
        let mut w = Windows::default();
        if rows.len() <= window {
            return w;
        }
        for end in window..rows.len() {
            for r in &rows[end - window..end] {
                w.inputs.extend_from_slice(r);
            }
            w.targets.extend_from_slice(&rows[end]);
            w.n += 1;
        }
        w
    }

    /// Appends another set of windows of the same shape.
    pub fn extend(&mut self, other: &Windows) {
        self.inputs.extend_from_slice(&other.inputs);
        self.targets.extend_from_slice(&other.targets);
        self.n += other.n;
    }
}

/// The windows of several series, read from their rows rather than copied out. Neighbouring
/// windows share all but one row, so copying multiplies the rows' memory by the window
/// length: the live budget of 12,000 windows of 30 steps x 8 features was 11.5 MB copied.
#[derive(Clone, Debug)]
pub struct SeriesWindows<'a> {
    series: &'a [&'a [Vec<f32>]],
    window: usize,
    /// (series, end row) of each window: its inputs are rows `end - window..end` of that
    /// series, its target row `end`.
    at: Vec<(u32, u32)>,
}

impl<'a> SeriesWindows<'a> {
    /// No windows yet, over `series` (each oldest row first) with windows of `window` rows.
    pub fn new(series: &'a [&'a [Vec<f32>]], window: usize) -> Self {
        SeriesWindows { series, window, at: Vec::new() }
    }

    /// Adds windows `from..to` of series `s`, numbered as [`Windows::from_rows`] numbers them
    /// (window `i` ends before row `window + i`).
    pub fn add(&mut self, s: usize, from: usize, to: usize) {
        self.at.extend((from..to).map(|i| (s as u32, (self.window + i) as u32)));
    }

    /// Window count.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether there are no windows.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Appends window `i`'s inputs (`window x features`, row-major) to `xs` and its target
    /// row to `ys`.
    pub fn push(&self, i: usize, xs: &mut Vec<f32>, ys: &mut Vec<f32>) {
        let (s, end) = (self.at[i].0 as usize, self.at[i].1 as usize);
        let rows = self.series[s];
        for r in &rows[end - self.window..end] {
            xs.extend_from_slice(r);
        }
        ys.extend_from_slice(&rows[end]);
    }
}

/// Trains `model` on `train` and returns it with the final epoch's mean training loss.
pub fn train(
    mut model: Forecaster,
    train: &SeriesWindows,
    features: usize,
    cfg: &ModelConfig,
    device: &Device,
) -> (Forecaster, f64) {
    let mut optim = AdamConfig::new().init();
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = cfg.seed.max(1);
    let mut last_loss = f64::NAN;
    let (w, f) = (cfg.window, features);
    for _ in 0..cfg.epochs {
        // Fisher-Yates with xorshift: the order only needs to differ between epochs.
        for i in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        let (mut sum, mut batches) = (0.0, 0);
        for chunk in order.chunks(cfg.batch) {
            let b = chunk.len();
            let mut xs = Vec::with_capacity(b * w * f);
            let mut ys = Vec::with_capacity(b * f);
            for &i in chunk {
                train.push(i, &mut xs, &mut ys);
            }
            let x = Tensor::<3>::from_data(TensorData::new(xs, [b, w, f]), device);
            let y = Tensor::<2>::from_data(TensorData::new(ys, [b, f]), device);
            let loss = (model.forward(x) - y).powf_scalar(2.0).mean();
            sum += loss.clone().into_scalar::<f32>() as f64;
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.lr, model, grads);
        }
        last_loss = sum / batches.max(1) as f64;
    }
    (model, last_loss)
}

/// Next-step forecasts of `windows` (`n * features`), in batches of `batch`.
pub fn predict(
    model: &Forecaster,
    windows: &Windows,
    features: usize,
    window: usize,
    device: &Device,
) -> Vec<f32> {
    const BATCH: usize = 512;
    let mut out = Vec::with_capacity(windows.n * features);
    let (w, f) = (window, features);
    let mut start = 0;
    while start < windows.n {
        let b = BATCH.min(windows.n - start);
        let xs = windows.inputs[start * w * f..(start + b) * w * f].to_vec();
        let x = Tensor::<3>::from_data(TensorData::new(xs, [b, w, f]), device);
        out.extend(model.forward(x).into_data().try_into_vec::<f32>().expect("f32 tensor"));
        start += b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_pair_each_span_with_the_next_row() {
        let rows: Vec<Vec<f32>> = (0..6).map(|i| vec![i as f32, 10.0 * i as f32]).collect();
        let w = Windows::from_rows(&rows, 3);
        assert_eq!(w.n, 3);
        assert_eq!(&w.inputs[..6], &[0.0, 0.0, 1.0, 10.0, 2.0, 20.0]);
        assert_eq!(&w.targets[..2], &[3.0, 30.0]);
        assert_eq!(&w.targets[4..], &[5.0, 50.0]);
        assert_eq!(w.inputs.len(), 3 * 3 * 2);
        assert_eq!(Windows::from_rows(&rows[..3], 3).n, 0);
    }

    #[test]
    fn series_windows_read_what_copied_windows_hold() {
        let a: Vec<Vec<f32>> = (0..9).map(|i| vec![i as f32, -(i as f32)]).collect();
        let b: Vec<Vec<f32>> = (0..6).map(|i| vec![100.0 + i as f32, 0.5]).collect();
        let series: Vec<&[Vec<f32>]> = vec![&a, &b];
        let mut copied = Windows::from_rows(&a, 3);
        copied.extend(&Windows::from_rows(&b, 3));
        let mut lazy = SeriesWindows::new(&series, 3);
        lazy.add(0, 0, 6);
        lazy.add(1, 0, 3);
        assert_eq!(lazy.len(), copied.n);
        let (in_len, f) = (3 * 2, 2);
        for i in 0..copied.n {
            let (mut xs, mut ys) = (vec![], vec![]);
            lazy.push(i, &mut xs, &mut ys);
            assert_eq!(xs, &copied.inputs[i * in_len..(i + 1) * in_len], "window {i}");
            assert_eq!(ys, &copied.targets[i * f..(i + 1) * f], "window {i}");
        }
    }
}
