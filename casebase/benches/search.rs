//! Case-base search benchmark: p50/p99 latency and recall@10 of the usearch HNSW index against
//! exact search, index build time and memory, at 10 k, 100 k and 1 M synthetic signatures.
//! Also the latency of a full `CaseBase::search` (fusion, filters) on the seed library.
//!
//! `cargo bench -p bpfsight-casebase --bench search` (set `BENCH_SIZES=10000,100000` to skip 1 M).

use std::time::Instant;

use bpfsight_casebase::index::VectorIndex;
use bpfsight_casebase::schema::{self, Feature};
use bpfsight_casebase::{CaseBase, Embedder, Filter, Query, Signature};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A synthetic signature shaped like real ones: two to five elevated features, the rest near 0.
fn synthetic(rng: &mut StdRng) -> Vec<f32> {
    let dims = schema::dimensions();
    let mut v: Vec<f32> = (0..dims).map(|_| rng.random_range(-0.3..0.3)).collect();
    for _ in 0..rng.random_range(2..=5) {
        v[rng.random_range(0..dims)] = rng.random_range(-5.0..5.0);
    }
    v
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    println!("signature index: {} dimensions, cosine, f32, HNSW (usearch)", schema::dimensions());
    println!(
        "{:>9} {:>9} {:>10} {:>9} {:>9} {:>10} {:>10}",
        "vectors", "build_s", "memory_MB", "p50_us", "p99_us", "recall@10", "exact_p50"
    );
    for n in sizes {
        let mut rng = StdRng::seed_from_u64(n as u64);
        let data: Vec<Vec<f32>> = (0..n).map(|_| synthetic(&mut rng)).collect();
        let index = VectorIndex::new(schema::dimensions()).unwrap();
        index.reserve(n).unwrap();
        let t = Instant::now();
        let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
        std::thread::scope(|s| {
            for part in 0..threads {
                let (index, data) = (&index, &data);
                s.spawn(move || {
                    for k in (part..n).step_by(threads) {
                        index.add(k as u64, &data[k]).unwrap();
                    }
                });
            }
        });
        let build = t.elapsed().as_secs_f64();
        let queries: Vec<Vec<f32>> = (0..1000).map(|_| synthetic(&mut rng)).collect();
        let mut lat = Vec::with_capacity(queries.len());
        let mut hits = 0usize;
        let mut exact_lat = Vec::new();
        for (i, q) in queries.iter().enumerate() {
            let t = Instant::now();
            let got = index.search(q, 10, |_| true).unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            if i < 200 {
                let t = Instant::now();
                let truth = index.exact_search(q, 10).unwrap();
                exact_lat.push(t.elapsed().as_secs_f64() * 1e6);
                hits += truth.iter().filter(|(k, _)| got.iter().any(|(g, _)| g == k)).count();
            }
        }
        lat.sort_by(f64::total_cmp);
        exact_lat.sort_by(f64::total_cmp);
        println!(
            "{:>9} {:>9.2} {:>10.1} {:>9.1} {:>9.1} {:>10.4} {:>10.1}",
            n,
            build,
            index.memory_bytes() as f64 / 1e6,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            hits as f64 / 2000.0,
            percentile(&exact_lat, 0.5)
        );
    }

    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let cb = rt.block_on(CaseBase::in_memory(Embedder::default())).unwrap();
    let sig = Signature::default().with(Feature::Retransmits, 3.0).with(Feature::FailedConnects, 1.0);
    let t = Instant::now();
    let text = rt.block_on(cb.embedder().embed("throughput dropped, retransmissions to one rack")).unwrap();
    let embed_us = t.elapsed().as_secs_f64() * 1e6;
    let q = Query {
        signature: Some(&sig),
        text: Some(&text),
        top_k: 5,
        filter: Filter::default(),
        text_weight: 0.5,
    };
    let mut lat: Vec<f64> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            cb.search(&q).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "seed library ({} patterns): fused search p50 {:.1} us, p99 {:.1} us; embedding a description {:.1} us",
        cb.stats().seeded,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        embed_us
    );
}
