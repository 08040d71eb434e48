//! Live symptom signatures: the collector's window of one service (or the host), translated
//! into the case base's metric schema.
//!
//! Until per-service baselines exist (the predictor's job), deviations are absolute severities
//! on the schema's scale (0 normal, 1 noticeable, 3 severe, 5 extreme), from rates that are
//! abnormal on any host: retransmits as a share of sends, failed connects as a share of
//! attempts, resets and new connections per unit of time, run-queue / IO / handshake p99s
//! (weighed down below five samples), failed syscalls by errno class, OOM kills and failed exits. Features the collector does not
//! measure yet are listed as such, so a reader knows a 0 there means "unknown", not "normal".

use std::collections::BTreeMap;

use bpfsight_casebase::{Feature, Signature};
use bpfsight_collector::Store;
use bpfsight_collector::Window;
use bpfsight_collector::query::{ConnectionQuery, MAX_LIMIT, QueryError};
use serde::Serialize;

/// The features this build measures live (from eBPF; with `--source procfs` the host-level
/// ones read 0).
pub const MEASURED: &[Feature] = &[
    Feature::Retransmits,
    Feature::FailedConnects,
    Feature::ResetsReceived,
    Feature::ResetsSent,
    Feature::ConnectionChurn,
    Feature::ConnectLatency,
    Feature::RunqueueDelay,
    Feature::CpuUsage,
    Feature::IoLatency,
    Feature::IoThroughput,
    Feature::SyscallErrorsNetwork,
    Feature::SyscallErrorsMissing,
    Feature::SyscallErrorsDenied,
    Feature::SyscallErrorsIo,
    Feature::SyscallErrorsResource,
    Feature::MemoryGrowth,
    Feature::OomKills,
    Feature::ProcessRestarts,
    Feature::ContextSwitches,
];

/// Errnos of failed network syscalls: ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH,
/// ECONNRESET, EPIPE, ECONNABORTED.
const NETWORK_ERRNOS: &[u32] = &[111, 110, 113, 101, 104, 32, 103];
/// Errnos of paths that do not exist: ENOENT, ENOTDIR.
const MISSING_ERRNOS: &[u32] = &[2, 20];
/// Errnos of refusals by permissions or policy: EACCES, EPERM.
const DENIED_ERRNOS: &[u32] = &[13, 1];
/// Errnos of failing storage: EIO, ENXIO, EROFS (a filesystem turns itself read-only after
/// errors far more often than anyone writes to a read-only mount by mistake).
const IO_ERRNOS: &[u32] = &[5, 6, 30];
/// Errnos of exhausted resources: EMFILE, ENFILE, ENOMEM, ENOSPC, EADDRNOTAVAIL, EDQUOT.
const RESOURCE_ERRNOS: &[u32] = &[24, 23, 12, 28, 99, 122];

/// The severity from which a symptom is noticeable (the schema's 1): below it everywhere, a
/// signature has no shape worth matching (cosine similarity ignores magnitude, so a run-queue
/// p99 a hair over its lower bound would match "CPU steal" at 0.9).
pub const NOTICEABLE: f32 = 1.0;

/// What a live signature was made of, for the caller to check.
#[derive(Clone, Debug, Serialize)]
pub struct SignatureSummary {
    /// The service, or `host` for every service together.
    pub scope: String,
    /// Window length, seconds.
    pub window_s: u64,
    /// Seconds of the window the collector watched (fewer than `window_s` just after it
    /// started): rates are per observed second.
    pub observed_s: u64,
    /// Deviation per measured feature (0 normal .. 5 extreme).
    pub measured: BTreeMap<&'static str, f32>,
    /// Features not measured by this build (0 in the signature means unknown).
    pub unmeasured: Vec<&'static str>,
    /// The kernel counts behind the deviations.
    pub counts: Counts,
}

/// Kernel counts over the window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Connections opened (active + passive).
    pub opened: u64,
    /// Connects initiated.
    pub connect_attempts: u64,
    /// Failed connects.
    pub failed_connects: u64,
    /// Resets received.
    pub resets_received: u64,
    /// Resets sent.
    pub resets_sent: u64,
    /// Retransmitted segments.
    pub retransmits: u64,
    /// sendmsg calls that sent data.
    pub sends: u64,
    /// Run-queue delay p99, ms.
    pub runqueue_p99_ms: Option<f64>,
    /// Block IO latency p99, ms.
    pub io_p99_ms: Option<f64>,
    /// Block IO bytes read and written per second watched.
    pub io_bytes_per_s: f64,
    /// TCP handshake p99, ms.
    pub connect_p99_ms: Option<f64>,
    /// On-CPU time as a share of one CPU, percent.
    pub cpu_pct: f64,
    /// Failed syscalls by class (benign ones excluded).
    pub syscall_errors: SyscallErrorClasses,
    /// OOM kills.
    pub oom_kills: u64,
    /// Failed exits.
    pub failed_exits: u64,
}

/// Failed syscalls by the class of their errno, as the signature's features group them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyscallErrorClasses {
    /// The errnos of `NETWORK_ERRNOS`.
    pub network: u64,
    /// The errnos of `MISSING_ERRNOS`.
    pub missing: u64,
    /// The errnos of `DENIED_ERRNOS`.
    pub denied: u64,
    /// The errnos of `IO_ERRNOS`.
    pub io: u64,
    /// The errnos of `RESOURCE_ERRNOS`.
    pub resource: u64,
}

/// How far a latency percentile over `samples` samples can be trusted as a symptom: a p99 of
/// one sample is that sample (one connect that waited out a dropped SYN), and read at full
/// weight it outweighs a retransmit rate measured over hundreds of segments. Full weight from
/// [`FULL_WEIGHT_SAMPLES`] samples on.
fn sample_weight(samples: u64) -> f32 {
    (samples as f32 / FULL_WEIGHT_SAMPLES as f32).min(1.0)
}

/// Samples from which a latency percentile counts fully (see [`sample_weight`]).
const FULL_WEIGHT_SAMPLES: u64 = 5;

/// `5 * log(x / low) / log(high / low)`, clipped to 0..=5: `low` is where a rate starts to be
/// noticeable, `high` where it is extreme.
fn severity(x: f64, low: f64, high: f64) -> f32 {
    if x <= low {
        return 0.0;
    }
    (5.0 * (x / low).ln() / (high / low).ln()).clamp(0.0, 5.0) as f32
}

/// The live signature of `service` (None: the host) over `window`.
pub fn live(
    store: &Store,
    service: Option<&str>,
    window: Window,
) -> Result<(Signature, SignatureSummary), QueryError> {
    let q = ConnectionQuery { service: service.map(str::to_string), window, limit: Some(MAX_LIMIT) };
    let report = store.connection_stats(&q)?;
    let mut c = Counts::default();
    for s in &report.services {
        c.opened += s.opened;
        c.connect_attempts += s.opened_active + s.failed_connects;
        c.failed_connects += s.failed_connects;
        c.resets_received += s.resets_received;
        c.resets_sent += s.resets_sent;
        c.retransmits += s.retransmits;
        c.sends += s.sends;
    }
    let h = store.host_counters(service, window)?;
    // Per second watched: a window reaching back before the start would dilute every rate.
    let secs = store.observed_secs(window.secs()) as f64;
    let minutes = (secs / 60.0).max(1.0 / 60.0);
    c.runqueue_p99_ms = h.runq.percentile_ms(99.0);
    c.io_p99_ms = h.io_lat.percentile_ms(99.0);
    c.connect_p99_ms = h.connect.percentile_ms(99.0);
    c.cpu_pct = 100.0 * h.oncpu_ns as f64 / (secs * 1e9);
    c.io_bytes_per_s = (h.io.read_bytes + h.io.write_bytes) as f64 / secs;
    for &(nr, errno, n) in &h.syscall_errors {
        // A timed futex wait that times out is ETIMEDOUT too, and not a network error.
        if bpfsight_collector::names::is_benign(nr, errno) {
            continue;
        }
        let e = &mut c.syscall_errors;
        for (class, count) in [
            (NETWORK_ERRNOS, &mut e.network),
            (MISSING_ERRNOS, &mut e.missing),
            (DENIED_ERRNOS, &mut e.denied),
            (IO_ERRNOS, &mut e.io),
            (RESOURCE_ERRNOS, &mut e.resource),
        ] {
            if class.contains(&errno) {
                *count += n;
            }
        }
    }
    c.oom_kills = h.oom_kills;
    c.failed_exits = h.failed_exits;
    let mut sig = Signature::default();
    // Two retransmits are noise; a share of sends from 0.1% (noticeable) to 20% (extreme).
    if c.retransmits >= 3 {
        sig.set(Feature::Retransmits, severity(c.retransmits as f64 / c.sends.max(1) as f64, 0.001, 0.2));
    }
    if c.failed_connects > 0 {
        let share = c.failed_connects as f64 / c.connect_attempts.max(1) as f64;
        sig.set(Feature::FailedConnects, severity(share, 0.005, 0.5).max(1.0));
    }
    sig.set(Feature::ResetsReceived, severity(c.resets_received as f64 / minutes, 0.5, 300.0));
    sig.set(Feature::ResetsSent, severity(c.resets_sent as f64 / minutes, 0.5, 300.0));
    sig.set(Feature::ConnectionChurn, severity(c.opened as f64 / minutes, 60.0, 60_000.0));
    // Latencies: from where users start to feel them to where requests time out.
    let latency = |p99: Option<f64>, low, high, samples| {
        severity(p99.unwrap_or(0.0), low, high) * sample_weight(samples)
    };
    sig.set(Feature::ConnectLatency, latency(c.connect_p99_ms, 10.0, 3_000.0, h.connect.count));
    sig.set(Feature::RunqueueDelay, latency(c.runqueue_p99_ms, 2.0, 500.0, h.runq.count));
    sig.set(Feature::IoLatency, latency(c.io_p99_ms, 20.0, 2_000.0, h.io_lat.count));
    sig.set(Feature::CpuUsage, severity(c.cpu_pct, 80.0, 800.0));
    // 10 MB/s sustained is more than most services ever move, 1 GB/s saturates a fast SSD.
    // (A drop in IO, which some patterns have, needs a baseline: it reads 0 here.)
    sig.set(Feature::IoThroughput, severity(c.io_bytes_per_s, 10e6, 1e9));
    sig.set(
        Feature::ContextSwitches,
        severity((h.vol_switches + h.invol_switches) as f64 / secs, 5_000.0, 500_000.0),
    );
    // 100 MB/s of fresh pages is noticeable, 10 GB/s extreme.
    sig.set(Feature::MemoryGrowth, severity(h.page_allocs as f64 / secs, 25_000.0, 2_500_000.0));
    let e = &c.syscall_errors;
    if e.network > 0 {
        sig.set(Feature::SyscallErrorsNetwork, severity(e.network as f64 / minutes, 0.5, 3_000.0).max(1.0));
    }
    // Programs probe for files that may not exist all the time (search paths, optional
    // configuration), so only a sustained rate of misses is a symptom; a refusal or an IO
    // error is one from the first few.
    sig.set(Feature::SyscallErrorsMissing, severity(e.missing as f64 / secs, 5.0, 5_000.0));
    if e.denied > 0 {
        sig.set(Feature::SyscallErrorsDenied, severity(e.denied as f64 / minutes, 0.5, 3_000.0));
    }
    if e.io > 0 {
        sig.set(Feature::SyscallErrorsIo, severity(e.io as f64 / minutes, 0.2, 600.0).max(1.0));
    }
    if e.resource > 0 {
        sig.set(Feature::SyscallErrorsResource, severity(e.resource as f64 / minutes, 0.2, 600.0).max(1.0));
    }
    if c.oom_kills > 0 {
        sig.set(Feature::OomKills, (3.0 + c.oom_kills as f32).min(5.0));
    }
    if c.failed_exits > 0 {
        sig.set(Feature::ProcessRestarts, severity(c.failed_exits as f64 / minutes, 0.1, 60.0).max(1.0));
    }
    let summary = SignatureSummary {
        scope: service.map_or_else(|| "host".to_string(), |s| s.to_string()),
        window_s: window.secs(),
        observed_s: secs as u64,
        measured: MEASURED.iter().map(|f| (f.name(), sig.get(*f))).collect(),
        unmeasured: Feature::ALL.iter().filter(|f| !MEASURED.contains(f)).map(|f| f.name()).collect(),
        counts: c,
    };
    Ok((sig, summary))
}

impl SignatureSummary {
    /// The strongest measured symptom and its severity.
    pub fn strongest(&self) -> Option<(&'static str, f32)> {
        self.measured.iter().map(|(k, v)| (*k, *v)).max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Whether any symptom reaches [`NOTICEABLE`].
    pub fn noticeable(&self) -> bool {
        self.strongest().is_some_and(|(_, v)| v >= NOTICEABLE)
    }
}

#[cfg(test)]
mod tests {
    use super::severity;

    #[test]
    fn a_signature_below_noticeable_everywhere_is_not_matched() {
        let summary = |values: &[(&'static str, f32)]| super::SignatureSummary {
            scope: "svc".into(),
            window_s: 60,
            observed_s: 60,
            measured: values.iter().copied().collect(),
            unmeasured: vec![],
            counts: Default::default(),
        };
        let faint = summary(&[("runqueue_delay", 0.19), ("cpu_usage", 0.0)]);
        assert_eq!(faint.strongest(), Some(("runqueue_delay", 0.19)));
        assert!(!faint.noticeable());
        assert!(summary(&[("runqueue_delay", 0.19), ("io_throughput", 2.0)]).noticeable());
        assert!(!summary(&[]).noticeable());
    }

    #[test]
    fn severity_scale() {
        assert_eq!(severity(0.0005, 0.001, 0.2), 0.0);
        assert_eq!(
            (super::sample_weight(1), super::sample_weight(5), super::sample_weight(900)),
            (0.2, 1.0, 1.0)
        );
        assert_eq!(severity(0.2, 0.001, 0.2), 5.0);
        assert_eq!(severity(9.0, 0.001, 0.2), 5.0);
        let mid = severity(0.014, 0.001, 0.2);
        assert!((2.0..3.0).contains(&mid), "{mid}");
    }
}
