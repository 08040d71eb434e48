//! What bpfsight costs and how fast it answers, on this machine, in one run (needs root):
//!
//! 1. mean in-kernel cost per event of every program, next to a trivial counting program on
//!    the same hook measured in the same run (`kernel.bpf_stats_enabled` on), over
//!    `BENCH_COST_ROUNDS` rounds (default 3; medians, with each round's ratio);
//! 2. loopback request/response throughput with the collector attached vs detached;
//! 3. MCP tool-call latency over stdio against the real binary;
//! 4. a syscall-heavy load (failing opens on every core) with the collector attached vs
//!    detached, how many syscall events per second the programs absorb, and what one
//!    syscall costs attached vs detached (a `getppid` loop);
//! 5. the real binary's resident memory while 1,000 live processes wake up, switch and fail
//!    syscalls: each its own service (the worst case), then as 50 services;
//! 6. the collector's poll rate while the anomaly model trains beside it on busy cores.
//!
//! Run: `cargo bench -p bpfsight --bench overhead` (prints a report; not a test);
//! `BENCH_ONLY=costs,throughput,tools,syscalls,rss,training` runs a subset.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bpfsight_collector::loader::{ProgramSet, enable_bpf_stats};
use bpfsight_collector::{Collector, CollectorConfig};

const RPC_SECS: f64 = 2.0;
const ROUNDS: usize = 9;
const TOOL_CALLS: usize = 3000;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / `cargo test --benches` probing.
    }
    if let Ok(name) = std::env::var("BPFSIGHT_BENCH_CHILD") {
        bench_child(&name);
        return;
    }
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("the overhead benchmark loads eBPF programs: run it as root");
        std::process::exit(1);
    }
    println!(
        "bpfsight overhead benchmark ({} cores)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // BENCH_ONLY=costs,throughput,tools,syscalls,rss runs a subset.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|x| x == s);
    if want("costs") {
        program_costs();
    }
    if want("throughput") {
        throughput();
    }
    if want("tools") {
        tool_latency();
    }
    if want("syscalls") {
        syscall_load();
        per_syscall_cost();
    }
    if want("rss") {
        // The worst case (every process its own service, busy every second), then a more
        // usual host: the same 1,000 processes as 50 services of 20. BENCH_RSS_SECS=720 follows
        // the worst case past the history cap and the first LSTM training (at 10 minutes).
        let until = std::env::var("BENCH_RSS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
        rss_under_processes(1000, 1000, until);
        rss_under_processes(1000, 50, 60);
    }
    if want("training") {
        training_vs_collector();
    }
}

/// The collector's one-second poll while all cores but one are busy, without and then with an LSTM
/// training at nice 19 beside it (the default first training: 20 scopes x 10 minutes).
fn training_vs_collector() {
    use bpfsight_predictor::{LstmModel, Schema, engine::EngineConfig};
    let collector = Collector::start(CollectorConfig::default()).expect("start collector");
    let store = collector.store().clone();
    let stop = Arc::new(AtomicBool::new(false));
    // All cores but one busy: the trainer and the collector share the last one.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cores.saturating_sub(1).max(1))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    // Polls seen and the longest gap between two, over `secs` or until `done`.
    let watch = |secs: f64, done: &AtomicBool| {
        let start = Instant::now();
        let (mut polls, mut last, mut last_at, mut worst) = (0u32, 0u64, Instant::now(), 0f64);
        while start.elapsed().as_secs_f64() < secs && !done.load(Ordering::Relaxed) {
            let p = store.read().map(|s| s.health().last_poll).unwrap_or(0);
            if p != last {
                if last != 0 {
                    polls += 1;
                    worst = worst.max(last_at.elapsed().as_secs_f64());
                }
                last = p;
                last_at = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (polls, start.elapsed().as_secs_f64(), worst)
    };
    let never = AtomicBool::new(false);
    let (p0, t0, w0) = watch(15.0, &never);
    let schema = Schema::host();
    let cfg = EngineConfig::default();
    let series: Vec<Vec<Vec<f32>>> = (0..20)
        .map(|k| {
            (0..cfg.first_training_after)
                .map(|i| (0..8).map(|j| (((i * 7 + j * 13 + k) % 17) as f32 / 8.0) - 1.0).collect())
                .collect()
        })
        .collect();
    let trained = Arc::new(AtomicBool::new(false));
    let flag = trained.clone();
    let trainer = std::thread::spawn(move || {
        // SAFETY: setpriority on the calling thread, as bpfsight's trainer does.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        let refs: Vec<&[Vec<f32>]> = series.iter().map(|s| s.as_slice()).collect();
        let t = Instant::now();
        let m = LstmModel::train(&schema, &refs, &cfg.model, 0).expect("train");
        flag.store(true, Ordering::Relaxed);
        (m.meta().windows, t.elapsed().as_secs_f64())
    });
    let (p1, t1, w1) = watch(600.0, &trained);
    let (windows, secs) = trainer.join().expect("trainer");
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        let _ = h.join();
    }
    println!(
        "collector poll with {} of {cores} cores busy, without / with an LSTM training at nice 19 ({windows} windows, {secs:.1} s):",
        cores.saturating_sub(1).max(1)
    );
    println!("  without: {:.2} polls/s, longest gap {:.2} s", p0 as f64 / t0, w0);
    println!("  with:    {:.2} polls/s, longest gap {:.2} s", p1 as f64 / t1, w1);
}

/// One of the 1,000 processes: its own name, wakes every 250 ms, fails an open.
fn bench_child(name: &str) {
    let _ = std::fs::write("/proc/self/comm", name);
    let secs = std::env::var("BPFSIGHT_BENCH_CHILD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
        let _ = std::fs::File::open("/nonexistent-bpfsight-bench");
    }
}

/// Failing opens on every core for `secs`: opens per second.
fn open_storm(secs: f64) -> f64 {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::File::open("/nonexistent-bpfsight-bench/x");
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        let _ = h.join();
    }
    done.load(Ordering::Relaxed) as f64 / secs
}

fn syscall_load() {
    const SECS: f64 = 2.0;
    let (mut off, mut on, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let mut absorbed = Vec::new();
    let mut drops = 0;
    for _ in 0..5 {
        off.push(open_storm(SECS));
        {
            let base = CollectorConfig { programs: ProgramSet::BaselineOnly, ..Default::default() };
            let _c = Collector::start(base).expect("start baseline collector");
            std::thread::sleep(Duration::from_millis(300));
            floor.push(open_storm(SECS));
        }
        let c = Collector::start(CollectorConfig::default()).expect("start collector");
        std::thread::sleep(Duration::from_millis(300));
        on.push(open_storm(SECS));
        std::thread::sleep(Duration::from_millis(1100)); // a poll, so health counters are current
        let h = c.store().read().unwrap().health().clone();
        drops += h.host_stats_full + h.proc_stats_full + h.start_map_full + h.proc_ringbuf_drops;
        drop(c);
    }
    // Events absorbed, counted by bpf_stats in rounds of their own: its clock reads around
    // every program run would otherwise slow the attached rounds but not the others.
    for _ in 0..3 {
        let _stats = enable_bpf_stats().expect("enable BPF statistics");
        let c = Collector::start(CollectorConfig::default()).expect("start collector");
        let runs = |c: &Collector| {
            c.program_stats().iter().find(|s| s.name == "sys_exit").map_or(0, |s| s.run_count)
        };
        std::thread::sleep(Duration::from_millis(1400)); // a poll, so program stats are current
        let before = runs(&c);
        let t = Instant::now();
        open_storm(SECS);
        std::thread::sleep(Duration::from_millis(1100));
        absorbed.push((runs(&c) - before) as f64 / t.elapsed().as_secs_f64());
    }
    let (off_m, on_m, floor_m) = (median(off.clone()), median(on.clone()), median(floor.clone()));
    println!(
        "4. Syscall-heavy load: failing open() on every core, 5 interleaved rounds of {SECS} s (medians)"
    );
    println!("   detached:                {off_m:>10.0} opens/s (rounds: {})", fmt_list(&off));
    println!("   bpfsight attached:       {on_m:>10.0} opens/s (rounds: {})", fmt_list(&on));
    println!("   trivial programs only:   {floor_m:>10.0} opens/s (rounds: {})", fmt_list(&floor));
    println!(
        "   trivial-programs floor: {:+.2} %; ratio attached/detached: {:.4} (cost {:+.2} %); sys_exit events absorbed: {:.0}/s (median); kernel-side drops: {drops}\n",
        100.0 * (1.0 - floor_m / off_m),
        on_m / off_m,
        100.0 * (1.0 - on_m / off_m),
        median(absorbed)
    );
}

/// Resident memory of `bpfsight serve` at 10 s, 30 s and every minute up to `until` seconds
/// while `n` processes in `services` services each wake 4 times a second and fail a syscall.
fn rss_under_processes(n: usize, services: usize, until: u64) {
    let checkpoints: Vec<u64> = [10, 30].into_iter().chain((60..=until.max(60)).step_by(60)).collect();
    let me = std::env::current_exe().expect("own path");
    let mut children: Vec<_> = (0..n)
        .filter_map(|i| {
            Command::new(&me)
                .env("BPFSIGHT_BENCH_CHILD", format!("svc-{}", i % services))
                .env("BPFSIGHT_BENCH_CHILD_SECS", (until + 60).to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .ok()
        })
        .collect();
    // BENCH_RSS_ARGS adds `serve` flags, e.g. "--retrain-every 10m" to see a retrain (due
    // hourly by default) within the run.
    let extra = std::env::var("BENCH_RSS_ARGS").unwrap_or_default();
    let mut server = Command::new(env!("CARGO_BIN_EXE_bpfsight"))
        .arg("serve")
        .args(extra.split_whitespace())
        .env("BPFSIGHT_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn bpfsight serve");
    let status = |pid: u32, key: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    println!(
        "5. Resident memory of `bpfsight serve` with {} live processes in {services} services, each busy every second",
        children.len()
    );
    let start = Instant::now();
    for at in checkpoints {
        std::thread::sleep((start + Duration::from_secs(at)).saturating_duration_since(Instant::now()));
        println!(
            "   after {at:>2} s: VmRSS {:.1} MiB, peak (VmHWM) {:.1} MiB",
            status(server.id(), "VmRSS:") as f64 / 1024.0,
            status(server.id(), "VmHWM:") as f64 / 1024.0
        );
    }
    drop(server.stdin.take());
    let _ = server.kill();
    let _ = server.wait();
    for c in &mut children {
        let _ = c.kill();
    }
    for c in &mut children {
        let _ = c.wait();
    }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
    fn getppid() -> i32;
}

/// Nanoseconds per `getppid()` (a syscall that does almost nothing), best of 5 rounds of
/// 1,000,000 calls on one thread.
fn getppid_ns() -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..1_000_000 {
                // SAFETY: no arguments, no memory; a real syscall (glibc does not cache it).
                std::hint::black_box(unsafe { getppid() });
            }
            t.elapsed().as_nanos() as f64 / 1e6
        })
        .fold(f64::INFINITY, f64::min)
}

/// What every syscall on the machine pays while bpfsight is attached: the syscall hooks force
/// the kernel's slow syscall path, and `sys_exit` runs a program on every call. Much steadier
/// than the throughput rounds, because one thread on an otherwise idle machine does nothing
/// else.
fn per_syscall_cost() {
    let (mut off, mut on, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        off.push(getppid_ns());
        let c = Collector::start(CollectorConfig::default()).expect("start collector");
        std::thread::sleep(Duration::from_millis(500));
        on.push(getppid_ns());
        drop(c);
        let base = CollectorConfig { programs: ProgramSet::BaselineOnly, ..Default::default() };
        let c = Collector::start(base).expect("start baseline collector");
        std::thread::sleep(Duration::from_millis(500));
        floor.push(getppid_ns());
        drop(c);
    }
    let (off_m, on_m, floor_m) = (median(off.clone()), median(on.clone()), median(floor.clone()));
    println!("   one syscall (getppid, best of 5 x 1M calls, 3 interleaved rounds, medians):");
    println!(
        "   detached {off_m:.0} ns ({}), attached {on_m:.0} ns ({}), trivial programs only {floor_m:.0} ns ({})",
        fmt_list(&off),
        fmt_list(&on),
        fmt_list(&floor),
    );
    println!(
        "   per syscall: +{:.0} ns attached, +{:.0} ns with trivial programs on the same hooks",
        on_m - off_m,
        floor_m - off_m
    );
    println!();
}

/// Echo server on loopback; returns its port. Each connection gets a thread.
fn echo_server(stop: Arc<AtomicBool>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let _ = c.set_nodelay(true);
                let mut buf = [0u8; 4096];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// Round trips per second of 64-byte request/response over `clients` connections.
/// One round of loopback request/response: round trips per second, and the CPU time this
/// process used per round trip (client and server threads, the kernel's TCP work done on
/// their behalf, the BPF programs that ran in their context, and an in-process collector).
struct RpcRound {
    rate: f64,
    cpu_ns_per_rt: f64,
}

/// User plus system CPU time of this process, all threads.
fn process_cpu_ns() -> f64 {
    // SAFETY: `getrusage` fills the struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn rpc_round(port: u16, clients: usize, secs: f64) -> RpcRound {
    let count = Arc::new(AtomicU64::new(0));
    let cpu0 = process_cpu_ns();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                c.set_nodelay(true).unwrap();
                let req = [7u8; 64];
                let mut resp = [0u8; 64];
                let mut n = 0u64;
                while Instant::now() < deadline {
                    c.write_all(&req).unwrap();
                    c.read_exact(&mut resp).unwrap();
                    n += 1;
                }
                let _ = c.shutdown(Shutdown::Both);
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let cpu = process_cpu_ns() - cpu0;
    let n = count.load(Ordering::Relaxed) as f64;
    RpcRound { rate: n / secs, cpu_ns_per_rt: cpu / n.max(1.0) }
}

fn rpc_rate(port: u16, clients: usize, secs: f64) -> f64 {
    rpc_round(port, clients, secs).rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Makes every hook fire: connects, accepts, closes, refused connects (resets both ways),
/// sends, and retransmits when nftables is there to drop packets.
fn exercise_hooks(port: u16) -> bool {
    for _ in 0..2000 {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(c);
    }
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    for _ in 0..2000 {
        let _ = TcpStream::connect(("127.0.0.1", closed_port));
    }
    rpc_rate(port, 2, 1.0);
    // Block IO and process life: fsyncs, failing opens, short-lived processes.
    let path = std::env::temp_dir().join("bpfsight-bench-fsync");
    if let Ok(mut f) = std::fs::File::create(&path) {
        for _ in 0..200 {
            let _ = f.write_all(&[7u8; 4096]);
            let _ = f.sync_all();
        }
        let _ = std::fs::remove_file(&path);
    }
    for i in 0..20_000 {
        let _ = std::fs::File::open(format!("/nonexistent-bpfsight-bench/{i}"));
    }
    for _ in 0..100 {
        let _ = Command::new("false").status();
    }
    // Retransmits: drop 10 % of packets to the echo port for a moment.
    let table = "bpfsight_bench";
    let rules = format!(
        "table inet {table} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
         tcp dport {port} numgen random mod 100 < 10 drop\n  }}\n}}\n"
    );
    let ok = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin.take().unwrap().write_all(rules.as_bytes())?;
            ch.wait()
        })
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        rpc_rate(port, 4, 3.0);
        let _ = Command::new("nft").args(["delete", "table", "inet", table]).status();
    }
    ok
}

/// Rounds of [`exercise_hooks`] in section 1 (`BENCH_COST_ROUNDS`, default 3): a row's ratio is
/// the median of the rounds' ratios, printed with their range, since one round's figure
/// swings by 20-50 % on these VMs.
fn cost_rounds() -> usize {
    std::env::var("BENCH_COST_ROUNDS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(3)
}

fn program_costs() {
    let stop = Arc::new(AtomicBool::new(false));
    let port = echo_server(stop.clone());
    let _stats = enable_bpf_stats().expect("enable BPF statistics");
    let collector =
        Collector::start(CollectorConfig { programs: ProgramSet::AllWithBaseline, ..Default::default() })
            .expect("start collector");
    // (runs, ns) per program and round, from the growth of the cumulative statistics.
    let cumulative = |c: &Collector| -> HashMap<String, (u64, u128)> {
        c.program_stats()
            .into_iter()
            .map(|s| (s.name.to_string(), (s.run_count, s.run_time.as_nanos())))
            .collect()
    };
    let rounds = cost_rounds();
    let mut per_round: Vec<HashMap<String, (u64, u128)>> = Vec::new();
    let mut retrans = false;
    let mut before = cumulative(&collector);
    for _ in 0..rounds {
        retrans |= exercise_hooks(port);
        std::thread::sleep(Duration::from_millis(1500));
        let after = cumulative(&collector);
        let delta = after
            .iter()
            .map(|(k, &(n, t))| {
                let (n0, t0) = before.get(k).copied().unwrap_or_default();
                (k.clone(), (n - n0, t - t0))
            })
            .collect();
        per_round.push(delta);
        before = after;
    }
    drop(collector);
    println!(
        "1. In-kernel cost per event (bpf_stats run_time_ns / run_cnt), same run, same hooks; {rounds} rounds, medians"
    );
    println!(
        "   {:<22} {:<7} {:>9} {:>10} {:>12} {:>8}  ratio per round",
        "program", "hook", "runs", "mean ns", "baseline ns", "ratio"
    );
    let mean_in = |round: &HashMap<String, (u64, u128)>, name: &str| {
        round.get(name).filter(|(n, _)| *n > 0).map(|&(n, t)| t as f64 / n as f64)
    };
    let median = |mut v: Vec<f64>| {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let all =
        bpfsight_collector::common::programs::TCP.iter().chain(bpfsight_collector::common::programs::HOST);
    let mut seen = std::collections::HashSet::new();
    // A program attached to several hooks (the timed syscalls' entries) is one row.
    for p in all.filter(|p| seen.insert(p.name)) {
        let base = format!("baseline_{}", p.name);
        let runs: u64 = per_round.iter().filter_map(|r| r.get(p.name)).map(|r| r.0).sum();
        let ns = median(per_round.iter().filter_map(|r| mean_in(r, p.name)).collect());
        let base_ns = median(per_round.iter().filter_map(|r| mean_in(r, &base)).collect());
        let ratios: Vec<f64> =
            per_round.iter().filter_map(|r| Some(mean_in(r, p.name)? / mean_in(r, &base)?)).collect();
        let each = ratios.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
        let kind = match p.hook {
            bpfsight_collector::common::programs::Hook::Tracepoint(..) => "tp",
            bpfsight_collector::common::programs::Hook::BtfTracepoint(..) => "tp_btf",
            bpfsight_collector::common::programs::Hook::RawTracepoint(..) => "raw_tp",
        };
        println!(
            "   {:<22} {:<7} {:>9} {:>10.0} {:>12.0} {:>7.2}x  {each}",
            p.name,
            kind,
            runs,
            ns,
            base_ns,
            median(ratios.clone())
        );
    }
    // The parts of a program's work, one by one, on the TCP state hook.
    let base = "baseline_inet_sock_set_state";
    let ratio = |name: &str| {
        median(per_round.iter().filter_map(|r| Some(mean_in(r, name)? / mean_in(r, base)?)).collect())
    };
    let clock_ns = median(
        per_round
            .iter()
            .filter_map(|r| Some(mean_in(r, "probe_copy_owner_clock")? - mean_in(r, "probe_copy_owner")?))
            .collect(),
    );
    println!(
        "   cost probes on inet_sock_set_state, next to its trivial program: copy the transition's fields {:.2}x, \
         and who runs {:.2}x, and one clock read {:.2}x (a clock read: {clock_ns:.0} ns)",
        ratio("probe_copy"),
        ratio("probe_copy_owner"),
        ratio("probe_copy_owner_clock"),
    );
    let floor = "baseline_tp_sock_send_length";
    let floor_ns = median(per_round.iter().filter_map(|r| mean_in(r, floor)).collect());
    let floor_runs: u64 = per_round.iter().filter_map(|r| r.get(floor)).map(|r| r.0).sum();
    if floor_runs > 0 {
        println!(
            "   (classic-tracepoint floor on sock_send_length: {floor_ns:.0} ns over {floor_runs} runs)"
        );
    }
    if !retrans {
        println!("   (nft not available: tcp_retransmit_skb was not exercised)");
    }
    println!();
}

/// The configurations section 2 compares with bpfsight detached: all programs, fewer signal
/// groups (`--without`), and trivial programs on the same hooks as each (the floor: what any
/// program on those hooks costs).
fn throughput_configs() -> Vec<(&'static str, CollectorConfig)> {
    use bpfsight_collector::plan::SignalGroup as G;
    let cfg = |programs, without: &[G]| CollectorConfig {
        programs,
        without: without.to_vec(),
        ..Default::default()
    };
    let not_tcp: Vec<G> = G::ALL.into_iter().filter(|g| !matches!(g, G::Tcp | G::TcpSends)).collect();
    vec![
        ("all programs", cfg(ProgramSet::All, &[])),
        ("  trivial programs, same hooks", cfg(ProgramSet::BaselineOnly, &[])),
        ("--without syscalls", cfg(ProgramSet::All, &[G::Syscalls])),
        ("  trivial programs, same hooks", cfg(ProgramSet::BaselineOnly, &[G::Syscalls])),
        ("TCP only", cfg(ProgramSet::All, &not_tcp)),
        ("  trivial programs, same hooks", cfg(ProgramSet::BaselineOnly, &not_tcp)),
    ]
}

fn throughput() {
    let stop = Arc::new(AtomicBool::new(false));
    let port = echo_server(stop.clone());
    let clients = 2;
    rpc_rate(port, clients, 1.0); // warm up
    let configs = throughput_configs();
    // Each configuration's round is compared with the detached round just before it: the VM's
    // speed drifts by more than the effects measured here, and a pair shares the drift.
    let mut off = Vec::new();
    let mut on: Vec<Vec<(RpcRound, RpcRound)>> = configs.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, (_, cfg)) in configs.iter().enumerate() {
            let base = rpc_round(port, clients, RPC_SECS);
            let c = Collector::start(cfg.clone()).expect("start collector");
            let r = rpc_round(port, clients, RPC_SECS);
            drop(c);
            off.push(base.rate);
            on[i].push((base, r));
        }
    }
    // A low-noise view of the same cost: the CPU time the programs themselves used during an
    // attached round, per round trip (bpf_stats adds its own timing to every run, so this errs
    // high: it is an upper bound of the programs' own cost).
    let program_time = |cfg: &CollectorConfig| {
        let _stats = enable_bpf_stats().expect("enable BPF statistics");
        let c = Collector::start(cfg.clone()).expect("start collector");
        std::thread::sleep(Duration::from_millis(1100));
        let before = c.program_stats();
        let round = rpc_round(port, clients, RPC_SECS);
        let rts = round.rate * RPC_SECS;
        std::thread::sleep(Duration::from_millis(1100));
        let after = c.program_stats();
        // Per program: runs and nanoseconds per round trip, busiest first.
        let mut per_rt: Vec<(String, f64, f64)> = after
            .iter()
            .filter_map(|a| {
                let b = before.iter().find(|b| b.name == a.name)?;
                let runs = a.run_count.saturating_sub(b.run_count) as f64;
                let ns = a.run_time.saturating_sub(b.run_time).as_nanos() as f64;
                // Programs that run on most round trips, not the setup's connects.
                (runs / rts >= 0.05).then(|| (a.name.clone(), runs / rts, ns / rts))
            })
            .collect();
        per_rt.sort_by(|x, y| y.2.total_cmp(&x.2));
        let ns: f64 = per_rt.iter().map(|p| p.2).sum();
        (ns, round.cpu_ns_per_rt, per_rt)
    };
    println!(
        "2. Loopback 64-byte request/response, {clients} clients, {ROUNDS} rounds of {RPC_SECS} s per configuration, \
         each next to a detached round (medians of the pairs)"
    );
    println!(
        "   detached: {:.0} round trips/s (median of {} rounds, {:.0}-{:.0})",
        median(off.clone()),
        off.len(),
        off.iter().copied().fold(f64::INFINITY, f64::min),
        off.iter().copied().fold(0.0, f64::max)
    );
    println!("   {:<32} {:>12} {:>14}  throughput cost per round", "attached", "throughput", "CPU per trip");
    for ((name, _), pairs) in configs.iter().zip(&on) {
        let cost: Vec<f64> = pairs.iter().map(|(b, r)| 100.0 * (1.0 - r.rate / b.rate)).collect();
        let cpu: Vec<f64> =
            pairs.iter().map(|(b, r)| 100.0 * (r.cpu_ns_per_rt / b.cpu_ns_per_rt - 1.0)).collect();
        let each = cost.iter().map(|x| format!("{x:+.1}")).collect::<Vec<_>>().join(" ");
        println!("   {name:<32} {:>+10.2} % {:>+12.2} %  {each}", median(cost.clone()), median(cpu.clone()));
    }
    println!(
        "   (cost: the share of round trips lost, and the extra CPU time per round trip of this process, all threads)"
    );
    println!(
        "   In-kernel time of the programs per round trip (bpf_stats on, an upper bound), of the CPU time per round trip:"
    );
    for (name, cfg) in configs.iter().filter(|(_, c)| c.programs == ProgramSet::All) {
        let (ns, cpu, per_rt) = program_time(cfg);
        let busiest: Vec<String> = per_rt
            .iter()
            .take(4)
            .map(|(n, runs, ns)| format!("{n} {runs:.1} x {:.0} ns", ns / runs))
            .collect();
        println!(
            "   {name:<22} {ns:>5.0} ns of {cpu:>6.0} ns = {:.2} %  ({})",
            100.0 * ns / cpu,
            busiest.join(", ")
        );
    }
    println!();
    stop.store(true, Ordering::Relaxed);
}

fn fmt_list(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ")
}

fn tool_latency() {
    let bin = env!("CARGO_BIN_EXE_bpfsight");
    let mut child = Command::new(bin)
        .arg("serve")
        .env("BPFSIGHT_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn bpfsight serve");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut rpc = |stdin: &mut std::process::ChildStdin, msg: String, expect_reply: bool| -> String {
        stdin.write_all(msg.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        line.clear();
        if expect_reply {
            stdout.read_line(&mut line).unwrap();
        }
        line.clone()
    };
    rpc(&mut stdin, r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#.into(), true);
    rpc(&mut stdin, r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.into(), false);
    // Some traffic so answers are not empty.
    let stop = Arc::new(AtomicBool::new(false));
    let port = echo_server(stop.clone());
    rpc_rate(port, 2, 1.5);
    std::thread::sleep(Duration::from_millis(1200));
    let calls = [
        ("list_services", r#"{"limit":50}"#),
        ("get_connection_stats", r#"{"window":"5m"}"#),
        ("get_service_errors", r#"{"window":"15m","threshold_pct":0}"#),
        ("get_high_latency_services", r#"{"threshold_ms":0,"window":"5m"}"#),
        ("get_resource_usage", r#"{"service":"[kernel]","window":"5m"}"#),
        ("get_events", r#"{"window":"15m"}"#),
    ];
    println!(
        "3. MCP tools/call latency over stdio (request written -> response read), {TOOL_CALLS} calls each"
    );
    for (tool, args) in calls {
        let mut lat = Vec::with_capacity(TOOL_CALLS);
        let mut bytes = 0;
        for i in 0..TOOL_CALLS {
            let msg = format!(
                r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#,
                i + 1
            );
            let t = Instant::now();
            let reply = rpc(&mut stdin, msg, true);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(reply.contains("structuredContent"), "bad reply: {reply}");
            bytes = reply.len();
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "   {:<22} p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  ({} bytes/reply)",
            tool,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat[lat.len() - 1],
            bytes
        );
    }
    drop(stdin);
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    println!();
}
