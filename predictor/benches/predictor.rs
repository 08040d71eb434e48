//! What the predictor costs on this machine, in one run: inference latency per window (one
//! scope, and one step of every scope batched), the forecast rollout, training throughput
//! and the time of a first training at the default settings, the model's size, and the
//! online engine's memory with every scope full.
//!
//! Run: `cargo bench -p bpfsight-predictor --bench predictor` (prints a report; not a test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bpfsight_predictor::engine::{Engine, EngineConfig, HOST};
use bpfsight_predictor::lstm::Windows;
use bpfsight_predictor::norm::Scaler;
use bpfsight_predictor::{LstmModel, Schema};

/// Counts live heap bytes, to measure the engine's memory.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

/// A host-like 8-feature series: daily-ish seasonality, noise, sparse bursts.
fn rows(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed.max(1);
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f32 / (1u64 << 53) as f32
    };
    (0..n)
        .map(|i| {
            let season = 1.0 + 0.5 * (i as f32 / 60.0).sin();
            (0..8)
                .map(|j| {
                    let base = [2.0, 5000.0, 0.0, 1.0, 20000.0, 3.0, 0.0, 40.0][j];
                    let burst = if rnd() < 0.02 { 5.0 } else { 1.0 };
                    (base * season * (0.8 + 0.4 * rnd()) * burst).max(0.0)
                })
                .collect()
        })
        .collect()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let schema = Schema::host();
    let cfg = EngineConfig::default();
    let w = cfg.model.window;
    println!(
        "predictor benchmark: {} features, window {w}, hidden {}, epochs {}",
        schema.len(),
        cfg.model.hidden,
        cfg.model.epochs
    );

    // Training at the default first-training point: 10 minutes of 20 scopes.
    let scopes = 20;
    let series: Vec<Vec<Vec<f32>>> = (0..scopes)
        .map(|k| {
            let raw = rows(cfg.first_training_after, k as u64 + 1);
            let sc = Scaler::fit(&schema, &raw);
            raw.iter().map(|r| sc.normalize(r)).collect()
        })
        .collect();
    let refs: Vec<&[Vec<f32>]> = series.iter().map(|s| s.as_slice()).collect();
    let t = Instant::now();
    let model = LstmModel::train(&schema, &refs, &cfg.model, 0).expect("enough data");
    let secs = t.elapsed().as_secs_f64();
    let m = model.meta();
    println!(
        "training: {} windows x {} epochs in {secs:.1} s = {:.0} windows/s (one thread); val MSE {:.3} vs persistence {:.3}",
        m.windows,
        cfg.model.epochs,
        (m.windows * cfg.model.epochs) as f64 / secs,
        m.val_error,
        m.val_error_persistence
    );
    println!(
        "time to first trained model at defaults: {} s of history + {secs:.1} s of training (at nice 19 in bpfsight)",
        cfg.first_training_after
    );

    // Inference: one window, and one step of 32 scopes batched.
    let one = Windows::from_rows(&series[0][..w + 1], w);
    let mut lat = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        std::hint::black_box(model.forecast_next(&one));
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("inference, one window: p50 {:.3} ms, p99 {:.3} ms", pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let mut batch = Windows::default();
    for s in series.iter().cycle().take(cfg.max_scopes) {
        batch.extend(&Windows::from_rows(&s[..w + 1], w));
    }
    let mut lat = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        std::hint::black_box(model.forecast_next(&batch));
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "inference, one step of {} scopes batched: p50 {:.3} ms, p99 {:.3} ms",
        batch.n,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        std::hint::black_box(model.rollout(&series[0][..w], 60));
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "forecast rollout, 60 steps: p50 {:.3} ms, p99 {:.3} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );

    let dir = std::env::temp_dir().join(format!("bpfsight-bench-model-{}", std::process::id()));
    model.save(&dir).expect("save");
    let size = std::fs::metadata(dir.join("forecaster.bpk")).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    let params =
        4 * cfg.model.hidden * (schema.len() + cfg.model.hidden + 2) + (cfg.model.hidden + 1) * schema.len();
    println!("model: {params} parameters, {:.1} KiB on disk (burnpack)", size as f64 / 1024.0);

    // The online engine with every scope's history and judgements full.
    let before = LIVE.load(Ordering::Relaxed);
    let mut engine = Engine::new(schema.clone(), cfg.clone(), Some(model));
    let names: Vec<String> =
        (0..cfg.max_scopes).map(|i| if i == 0 { HOST.into() } else { format!("svc{i}") }).collect();
    let data: Vec<Vec<Vec<f32>>> = (0..cfg.max_scopes).map(|i| rows(cfg.history, 100 + i as u64)).collect();
    let mut step = Vec::new();
    for t in 0..cfg.history {
        let r: Vec<(String, Vec<f32>)> =
            names.iter().zip(&data).map(|(n, d)| (n.clone(), d[t].clone())).collect();
        let started = Instant::now();
        engine.push(t as u64, r);
        step.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "engine: {} scopes x {} s history: {:.1} MiB heap; one step (judge all scopes, LSTM batched): p50 {:.2} ms, p99 {:.2} ms",
        cfg.max_scopes,
        cfg.history,
        bytes as f64 / (1 << 20) as f64,
        pct(&mut step, 0.5),
        pct(&mut step, 0.99)
    );
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        std::hint::black_box(engine.judge(HOST, 30).unwrap());
        std::hint::black_box(engine.forecast(HOST, 60).unwrap());
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "predict_anomaly's work (judge 30 s + forecast 60 s): p50 {:.3} ms, p99 {:.3} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
}
