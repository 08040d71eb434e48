//! Answers about whole-host signals: latency outliers, resource usage, discrete events.

use serde::Serialize;

use crate::host::{Histogram, HostCounters, IoTotals, dev_name};
use crate::names;
use crate::query::{QueryError, ServiceConnections, SyscallErrors, top_syscall_errors};
use crate::service::ServiceId;
use crate::store::{Event, EventKind, Store};
use crate::window::Window;

/// Which latency [`Store::high_latency`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyKind {
    /// Run-queue delay: runnable but waiting for a CPU.
    Runqueue,
    /// Block IO, from the request's start (queued, as iostat's await) to its completion.
    Io,
    /// The timed syscalls (connect, accept, fsync, ...), per syscall.
    Syscall,
    /// TCP handshake of successful connects (SYN sent to ESTABLISHED).
    Connect,
}

impl LatencyKind {
    /// Accepted names.
    pub const NAMES: &'static str = "runqueue, io, syscall, connect";

    /// The wire name (`runqueue`).
    pub fn as_str(self) -> &'static str {
        match self {
            LatencyKind::Runqueue => "runqueue",
            LatencyKind::Io => "io",
            LatencyKind::Syscall => "syscall",
            LatencyKind::Connect => "connect",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<LatencyKind, QueryError> {
        match s {
            "runqueue" => Ok(LatencyKind::Runqueue),
            "io" => Ok(LatencyKind::Io),
            "syscall" => Ok(LatencyKind::Syscall),
            "connect" => Ok(LatencyKind::Connect),
            _ => Err(QueryError::Invalid {
                name: "kind",
                message: format!("{s:?} is not a latency kind; use one of {}", Self::NAMES),
            }),
        }
    }
}

/// Arguments of [`Store::high_latency`].
#[derive(Clone, Debug)]
pub struct LatencyQuery {
    /// Lowest latency listed, milliseconds.
    pub threshold_ms: f64,
    /// Which latency.
    pub kind: LatencyKind,
    /// Percentile compared with the threshold, in (0, 100].
    pub percentile: f64,
    /// Look-back window.
    pub window: Window,
    /// Most rows returned.
    pub limit: usize,
}

/// One service (and syscall, for `kind = syscall`) over the threshold.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyRow {
    /// Service name.
    pub service: ServiceId,
    /// The syscall, for `kind = syscall`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// The requested percentile, milliseconds.
    pub value_ms: f64,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Mean, milliseconds (exact, from the sum of samples).
    pub mean_ms: f64,
    /// Upper bound of the slowest sample's log2 bucket, milliseconds.
    pub max_ms: f64,
    /// Samples in the window.
    pub samples: u64,
}

/// Answer of [`Store::high_latency`].
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    /// What was measured.
    pub kind: LatencyKind,
    /// Percentile compared with the threshold.
    pub percentile: f64,
    /// Threshold, milliseconds.
    pub threshold_ms: f64,
    /// Window length, seconds.
    pub window_s: u64,
    /// Seconds of the window the collector watched, which rates are per (see
    /// [`Store::observed_secs`]).
    pub observed_s: u64,
    /// Resolution the window was answered at, seconds.
    pub resolution_s: u64,
    /// How percentiles are computed.
    pub method: &'static str,
    /// Rows over the threshold, worst first.
    pub services: Vec<LatencyRow>,
    /// Rows over the threshold (before the limit).
    pub total: usize,
    /// Whether `services` was cut to the limit.
    pub truncated: bool,
    /// Where the data came from.
    pub source: &'static str,
    /// Signals this kernel cannot give, so reported as zero here (the `bpfsight://health`
    /// resource says why); omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

/// How percentiles are derived (also the tool description's wording).
pub const PERCENTILE_METHOD: &str = "percentiles come from in-kernel log2 histograms (buckets of \
    [2^(i-1), 2^i) microseconds), interpolated linearly inside the bucket: within a factor of two \
    of the true value; mean is exact";

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn row(service: &ServiceId, syscall: Option<String>, h: &Histogram, p: f64) -> Option<LatencyRow> {
    Some(LatencyRow {
        service: service.clone(),
        syscall,
        value_ms: round3(h.percentile_ms(p)?),
        p50_ms: round3(h.percentile_ms(50.0)?),
        p99_ms: round3(h.percentile_ms(99.0)?),
        mean_ms: round3(h.mean_ms()?),
        max_ms: round3(h.max_ms()?),
        samples: h.count,
    })
}

/// Latency summary for [`ResourceUsage`].
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Mean, milliseconds.
    pub mean_ms: f64,
    /// Samples.
    pub samples: u64,
}

impl LatencySummary {
    fn of(h: &Histogram) -> Option<LatencySummary> {
        Some(LatencySummary {
            p50_ms: round3(h.percentile_ms(50.0)?),
            p99_ms: round3(h.percentile_ms(99.0)?),
            mean_ms: round3(h.mean_ms()?),
            samples: h.count,
        })
    }
}

/// CPU use of a service.
#[derive(Clone, Debug, Serialize)]
pub struct CpuUsage {
    /// Time on CPU as a share of one CPU over the window, percent (200 = two CPUs busy).
    pub cpu_pct: f64,
    /// Time on CPU, seconds.
    pub oncpu_s: f64,
    /// Run-queue delay (runnable, waiting for a CPU).
    pub runqueue: Option<LatencySummary>,
    /// Voluntary context switches per second (blocked on IO, locks, sleep).
    pub voluntary_switches_per_s: f64,
    /// Involuntary context switches per second (preempted): high values mean CPU contention.
    pub involuntary_switches_per_s: f64,
}

/// Memory use of a service.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryUsage {
    /// Resident memory now, bytes, summed over its live processes (from /proc).
    pub rss_bytes: Option<u64>,
    /// Pages allocated per second in its context (4 KiB each on this machine).
    pub page_allocs_per_s: f64,
    /// Processes the OOM killer chose.
    pub oom_kills: u64,
}

/// Block IO of a service on one device.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceIo {
    /// `major:minor` (`other` sums devices beyond the per-slot cap).
    pub device: String,
    /// Totals.
    #[serde(flatten)]
    pub totals: IoTotals,
}

/// Block IO of a service.
#[derive(Clone, Debug, Serialize)]
pub struct IoUsage {
    /// Bytes read per second.
    pub read_bytes_per_s: f64,
    /// Bytes written per second.
    pub write_bytes_per_s: f64,
    /// Totals over the window.
    #[serde(flatten)]
    pub totals: IoTotals,
    /// Request latency, from the request's start (queued, as iostat's await) to completion.
    pub latency: Option<LatencySummary>,
    /// Per device.
    pub devices: Vec<DeviceIo>,
    /// Timed syscalls that wait on the disk (fsync, fdatasync, sync_file_range).
    pub sync_syscalls: Vec<SyscallLatency>,
}

/// Latency of one timed syscall.
#[derive(Clone, Debug, Serialize)]
pub struct SyscallLatency {
    /// Syscall name.
    pub syscall: String,
    /// Latency.
    #[serde(flatten)]
    pub latency: LatencySummary,
}

/// Network use of a service.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkUsage {
    /// TCP connection statistics (as `get_connection_stats`).
    #[serde(flatten)]
    pub tcp: ServiceConnections,
    /// TCP handshake time of successful connects.
    pub connect_latency: Option<LatencySummary>,
}

/// Process life of a service.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessLife {
    /// Live processes now.
    pub running: usize,
    /// Execs in the window.
    pub execs: u64,
    /// Processes that exited in the window.
    pub exits: u64,
    /// Of which failed: a non-zero status or a crash signal (SIGSEGV, SIGABRT, ...).
    pub failed_exits: u64,
    /// Of which were stopped by SIGKILL, SIGTERM, SIGINT or SIGHUP.
    pub killed: u64,
}

/// Which resource [`Store::resource_usage`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// CPU time, run-queue delay, context switches.
    Cpu,
    /// RSS, page allocations, OOM kills.
    Memory,
    /// Block IO.
    Io,
    /// TCP.
    Network,
    /// Everything.
    All,
}

impl Resource {
    /// Accepted names.
    pub const NAMES: &'static str = "cpu, memory, io, network, all";

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Resource, QueryError> {
        match s {
            "cpu" => Ok(Resource::Cpu),
            "memory" => Ok(Resource::Memory),
            "io" => Ok(Resource::Io),
            "network" => Ok(Resource::Network),
            "all" => Ok(Resource::All),
            _ => Err(QueryError::Invalid {
                name: "resource",
                message: format!("{s:?} is not a resource; use one of {}", Self::NAMES),
            }),
        }
    }

    fn wants(self, r: Resource) -> bool {
        self == Resource::All || self == r
    }
}

/// Answer of [`Store::resource_usage`].
#[derive(Clone, Debug, Serialize)]
pub struct ResourceUsage {
    /// Service name.
    pub service: ServiceId,
    /// Window length, seconds.
    pub window_s: u64,
    /// Seconds of the window the collector watched, which rates are per (see
    /// [`Store::observed_secs`]).
    pub observed_s: u64,
    /// Resolution the window was answered at, seconds.
    pub resolution_s: u64,
    /// CPU, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuUsage>,
    /// Memory, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryUsage>,
    /// Block IO, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io: Option<IoUsage>,
    /// Network, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkUsage>,
    /// Process starts and exits.
    pub processes: ProcessLife,
    /// Failed syscalls of every kind, most frequent first (at most 5), whatever `resource`
    /// asked for: an `openat` ENOENT is no network error, and an EIO matters to `io` too.
    pub syscall_errors: Vec<SyscallErrors>,
    /// Where the data came from.
    pub source: &'static str,
    /// Signals this kernel cannot give, so reported as zero here (the `bpfsight://health`
    /// resource says why); omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

/// Arguments of [`Store::events`].
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// Only this service.
    pub service: Option<String>,
    /// Only these kinds (all when empty).
    pub kinds: Vec<EventKind>,
    /// Look-back window.
    pub window: Window,
    /// Most events returned.
    pub limit: usize,
    /// Only events older than this `seq` (the previous page's `next_cursor`).
    pub cursor: Option<u64>,
}

/// Answer of [`Store::events`].
#[derive(Clone, Debug, Serialize)]
pub struct EventPage {
    /// Matching events, newest first.
    pub events: Vec<Event>,
    /// Matching events in the window (all pages).
    pub total: usize,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    pub next_cursor: Option<u64>,
    /// Events aged out of the bounded log since start (older history is incomplete if > 0).
    pub evicted: u64,
    /// Window length, seconds.
    pub window_s: u64,
    /// Seconds of the window the collector watched, which rates are per (see
    /// [`Store::observed_secs`]).
    pub observed_s: u64,
    /// Where the data came from.
    pub source: &'static str,
    /// Signals this kernel cannot give, so reported as zero here (the `bpfsight://health`
    /// resource says why); omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

impl Store {
    fn host_of(&self, id: &ServiceId, secs: u64) -> HostCounters {
        self.services.get(id).map(|s| s.host_window(self.now, secs)).unwrap_or_default()
    }

    /// Services whose latency of `kind` at `percentile` is at least `threshold_ms`.
    pub fn high_latency(&self, q: &LatencyQuery) -> Result<LatencyReport, QueryError> {
        if !q.threshold_ms.is_finite() || q.threshold_ms < 0.0 {
            return Err(QueryError::Invalid {
                name: "threshold_ms",
                message: format!("{} is out of range; use milliseconds >= 0", q.threshold_ms),
            });
        }
        if !(q.percentile.is_finite() && q.percentile > 0.0 && q.percentile <= 100.0) {
            return Err(QueryError::Invalid {
                name: "percentile",
                message: format!(
                    "{} is out of range; use a number in (0, 100], e.g. 50, 95, 99, 99.9",
                    q.percentile
                ),
            });
        }
        let secs = q.window.secs();
        let mut rows = Vec::new();
        for (id, st) in &self.services {
            let h = st.host_window(self.now, secs);
            let mut consider = |syscall: Option<String>, hist: &Histogram| {
                if let Some(r) = row(id, syscall, hist, q.percentile)
                    && r.value_ms >= q.threshold_ms
                {
                    rows.push(r);
                }
            };
            match q.kind {
                LatencyKind::Runqueue => consider(None, &h.runq),
                LatencyKind::Io => consider(None, &h.io_lat),
                LatencyKind::Connect => consider(None, &h.connect),
                LatencyKind::Syscall => {
                    for (nr, hist) in &h.syscall_lat {
                        consider(Some(names::syscall_name(*nr)), hist);
                    }
                }
            }
        }
        rows.sort_by(|a, b| {
            b.value_ms.total_cmp(&a.value_ms).then(b.samples.cmp(&a.samples)).then(a.service.cmp(&b.service))
        });
        let total = rows.len();
        rows.truncate(q.limit);
        Ok(LatencyReport {
            kind: q.kind,
            percentile: q.percentile,
            threshold_ms: q.threshold_ms,
            window_s: secs,
            observed_s: self.observed_secs(secs),
            resolution_s: q.window.resolution_secs(),
            method: PERCENTILE_METHOD,
            truncated: total > rows.len(),
            services: rows,
            total,
            source: self.health.source,
            unavailable: self.health.unavailable_signals(),
        })
    }

    /// What one service used over the window.
    pub fn resource_usage(
        &self,
        service: &str,
        resource: Resource,
        window: Window,
    ) -> Result<ResourceUsage, QueryError> {
        let id = self.known_service(service)?;
        let secs = window.secs();
        let observed = self.observed_secs(secs);
        let per_s = |n: u64| round3(n as f64 / observed as f64);
        let h = self.host_of(&id, secs);
        let cpu = resource.wants(Resource::Cpu).then(|| CpuUsage {
            cpu_pct: round3(100.0 * h.oncpu_ns as f64 / (observed as f64 * 1e9)),
            oncpu_s: round3(h.oncpu_ns as f64 / 1e9),
            runqueue: LatencySummary::of(&h.runq),
            voluntary_switches_per_s: per_s(h.vol_switches),
            involuntary_switches_per_s: per_s(h.invol_switches),
        });
        let memory = resource.wants(Resource::Memory).then(|| MemoryUsage {
            rss_bytes: self.rss.get(&id).copied(),
            page_allocs_per_s: per_s(h.page_allocs),
            oom_kills: h.oom_kills,
        });
        let io = resource.wants(Resource::Io).then(|| {
            let mut devices: Vec<DeviceIo> =
                h.io_devices.iter().map(|(d, t)| DeviceIo { device: dev_name(*d), totals: *t }).collect();
            devices.sort_by(|a, b| {
                (b.totals.read_bytes + b.totals.write_bytes)
                    .cmp(&(a.totals.read_bytes + a.totals.write_bytes))
            });
            let sync_syscalls = h
                .syscall_lat
                .iter()
                .filter(|(nr, _)| matches!(*nr, 74 | 75 | 277))
                .filter_map(|(nr, hist)| {
                    Some(SyscallLatency {
                        syscall: names::syscall_name(*nr),
                        latency: LatencySummary::of(hist)?,
                    })
                })
                .collect();
            IoUsage {
                read_bytes_per_s: per_s(h.io.read_bytes),
                write_bytes_per_s: per_s(h.io.write_bytes),
                totals: h.io,
                latency: LatencySummary::of(&h.io_lat),
                devices,
                sync_syscalls,
            }
        });
        let network = if resource.wants(Resource::Network) {
            let mut tcp = self
                .connection_stats(&crate::query::ConnectionQuery {
                    service: Some(id.to_string()),
                    window,
                    limit: Some(1),
                })?
                .services;
            tcp.pop().map(|tcp| NetworkUsage { tcp, connect_latency: LatencySummary::of(&h.connect) })
        } else {
            None
        };
        Ok(ResourceUsage {
            service: id.clone(),
            window_s: secs,
            observed_s: observed,
            resolution_s: window.resolution_secs(),
            cpu,
            memory,
            io,
            network,
            processes: ProcessLife {
                running: self.processes.get(&id).map_or(0, |p| p.len()),
                execs: h.execs,
                exits: h.exits,
                failed_exits: h.failed_exits,
                killed: h.killed,
            },
            syscall_errors: top_syscall_errors(&h, 5).0,
            source: self.health.source,
            unavailable: self.health.unavailable_signals(),
        })
    }

    /// Whole-host counters of one service, or summed over every service (`None`), over the
    /// window.
    pub fn host_counters(&self, service: Option<&str>, window: Window) -> Result<HostCounters, QueryError> {
        let secs = window.secs();
        match service {
            Some(name) => Ok(self.host_of(&self.known_service(name)?, secs)),
            None => {
                let mut out = HostCounters::default();
                for st in self.services.values() {
                    out.merge(&st.host_window(self.now, secs));
                }
                Ok(out)
            }
        }
    }

    /// Discrete events, newest first, a page at a time.
    pub fn events(&self, q: &EventQuery) -> Result<EventPage, QueryError> {
        let service = q.service.as_deref().map(|s| self.known_service(s)).transpose()?;
        let from_ms = self.now.saturating_sub(q.window.secs()) * 1000;
        let matching = |e: &&Event| {
            e.time_ms >= from_ms
                && service.as_ref().is_none_or(|s| e.service == *s)
                && (q.kinds.is_empty() || q.kinds.contains(&e.kind))
        };
        let total = self.events.iter().filter(matching).count();
        let mut events: Vec<Event> = self
            .events
            .iter()
            .rev()
            .filter(|e| q.cursor.is_none_or(|c| e.seq < c))
            .filter(matching)
            .take(q.limit + 1)
            .cloned()
            .collect();
        let more = events.len() > q.limit;
        events.truncate(q.limit);
        Ok(EventPage {
            next_cursor: if more { events.last().map(|e| e.seq) } else { None },
            events,
            total,
            evicted: self.health.events_evicted,
            window_s: q.window.secs(),
            observed_s: self.observed_secs(q.window.secs()),
            source: self.health.source,
            unavailable: self.health.unavailable_signals(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::IdentitySource;
    use crate::store::EventDetail;
    use bpfsight_common::LatHist;

    fn hist(us: &[u64]) -> Histogram {
        let mut raw = LatHist::default();
        for u in us {
            raw.add(u * 1000);
        }
        Histogram::delta(&raw, &LatHist::default())
    }

    fn store() -> Store {
        let mut s = Store::new(990);
        let slow = HostCounters { runq: hist(&[20_000; 10]), oncpu_ns: 500_000_000, ..Default::default() };
        let fast = HostCounters { runq: hist(&[5; 10]), ..Default::default() };
        for t in 990..1000 {
            s.record_host(t, &ServiceId::new("victim"), IdentitySource::ProcessName, &[7], &slow);
            s.record_host(t, &ServiceId::new("calm"), IdentitySource::ProcessName, &[8], &fast);
        }
        for i in 0..25 {
            s.push_event(Event {
                seq: 0,
                time_ms: 995_000 + i,
                kind: if i % 2 == 0 { EventKind::FailedExit } else { EventKind::OomKill },
                service: ServiceId::new("victim"),
                pid: 7,
                detail: EventDetail::Oom { total_vm_kib: 1, anon_rss_kib: 1 },
            });
        }
        s.tick(999);
        s
    }

    #[test]
    fn high_latency_names_only_services_over_the_threshold() {
        let s = store();
        let q = LatencyQuery {
            threshold_ms: 10.0,
            kind: LatencyKind::Runqueue,
            percentile: 99.0,
            window: "1m".parse().unwrap(),
            limit: 10,
        };
        let r = s.high_latency(&q).unwrap();
        assert_eq!(r.total, 1);
        assert_eq!(r.services[0].service.as_str(), "victim");
        assert_eq!(r.services[0].samples, 100);
        assert!((16.384..=32.768).contains(&r.services[0].value_ms));
        let bad = s.high_latency(&LatencyQuery { percentile: 0.0, ..q.clone() }).unwrap_err().to_string();
        assert!(bad.contains("(0, 100]"), "{bad}");
        assert!(LatencyKind::parse("disk").unwrap_err().to_string().contains("runqueue, io"));
    }

    #[test]
    fn resource_usage_reports_cpu_share() {
        let s = store();
        let r = s.resource_usage("victim", Resource::Cpu, "10s".parse().unwrap()).unwrap();
        let cpu = r.cpu.unwrap();
        assert!((cpu.cpu_pct - 50.0).abs() < 1e-6, "{}", cpu.cpu_pct);
        assert!(r.io.is_none() && r.memory.is_none());
        assert!(s.resource_usage("nope", Resource::All, Window::DEFAULT).is_err());
        assert!(Resource::parse("gpu").unwrap_err().to_string().contains("cpu, memory, io, network, all"));
    }

    #[test]
    fn events_page_with_a_cursor() {
        let s = store();
        let mut q = EventQuery { window: "1m".parse().unwrap(), limit: 10, ..Default::default() };
        let p1 = s.events(&q).unwrap();
        assert_eq!((p1.events.len(), p1.total), (10, 25));
        q.cursor = p1.next_cursor;
        let p2 = s.events(&q).unwrap();
        q.cursor = p2.next_cursor;
        let p3 = s.events(&q).unwrap();
        assert_eq!(p3.events.len(), 5);
        assert!(p3.next_cursor.is_none());
        let seqs: Vec<u64> = [p1, p2, p3].iter().flat_map(|p| p.events.iter().map(|e| e.seq)).collect();
        assert_eq!(seqs, (1..=25).rev().collect::<Vec<_>>());
        q.cursor = None;
        q.kinds = vec![EventKind::OomKill];
        assert_eq!(s.events(&q).unwrap().total, 12);
    }
}
