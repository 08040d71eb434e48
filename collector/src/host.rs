//! Whole-host signals per service, user side: scheduler, block IO, syscalls, memory and process
//! life, as per-second deltas of the kernel's cumulative per-CPU counters.

use bpfsight_common::{HIST_BUCKETS, IoStats, LatHist, ProcStats};
use serde::{Deserialize, Serialize};

/// Most distinct (syscall, errno) pairs kept per time slot; the rest are summed into
/// [`HostCounters::syscall_errors_other`].
pub const MAX_SYSCALL_ERRORS_PER_SLOT: usize = 16;
/// Most devices kept per time slot (the rest are summed into device 0).
pub const MAX_DEVICES_PER_SLOT: usize = 4;

/// A log2 latency histogram: sparse (only non-empty buckets), mergeable, with percentiles.
/// Bucket `i > 0` holds latencies in `[2^(i-1), 2^i)` µs, bucket 0 those under 1 µs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Samples.
    pub count: u64,
    /// Sum of the samples, nanoseconds.
    pub sum_ns: u64,
    /// `(bucket, samples)`, sorted by bucket, no zero counts.
    buckets: Vec<(u8, u32)>,
}

impl Histogram {
    /// The difference between two cumulative kernel histograms (`cur - prev`), wrapping.
    pub fn delta(cur: &LatHist, prev: &LatHist) -> Histogram {
        let mut buckets = Vec::new();
        for i in 0..HIST_BUCKETS {
            let d = cur.buckets[i].wrapping_sub(prev.buckets[i]);
            if d > 0 {
                buckets.push((i as u8, d.min(u32::MAX as u64) as u32));
            }
        }
        Histogram {
            count: cur.count.wrapping_sub(prev.count),
            sum_ns: cur.sum_ns.wrapping_sub(prev.sum_ns),
            buckets,
        }
    }

    /// `count` samples known only by their sum (procfs gives a total wait and a count): all
    /// of them go in the bucket of the mean, so percentiles read as the mean.
    pub fn from_mean(count: u64, sum_ns: u64) -> Histogram {
        if count == 0 {
            return Histogram::default();
        }
        let b = bpfsight_common::hist_bucket(sum_ns / count) as u8;
        Histogram { count, sum_ns, buckets: vec![(b, count.min(u32::MAX as u64) as u32)] }
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Removes every sample, keeping the allocation.
    pub fn clear(&mut self) {
        self.count = 0;
        self.sum_ns = 0;
        self.buckets.clear();
    }

    /// Adds `other`'s samples.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        for &(b, n) in &other.buckets {
            match self.buckets.binary_search_by_key(&b, |(k, _)| *k) {
                Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(n),
                Err(i) => self.buckets.insert(i, (b, n)),
            }
        }
    }

    /// Upper bound of bucket `b`, milliseconds.
    fn upper_ms(b: u8) -> f64 {
        if b == 0 { 0.001 } else { (1u64 << b) as f64 / 1000.0 }
    }

    /// Lower bound of bucket `b`, milliseconds.
    fn lower_ms(b: u8) -> f64 {
        if b == 0 { 0.0 } else { (1u64 << (b - 1)) as f64 / 1000.0 }
    }

    /// The `p`th percentile (0 < p <= 100) in milliseconds, interpolated linearly inside its
    /// log2 bucket (so within a factor of two of the truth); `None` without samples.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().map(|(_, n)| *n as u64).sum();
        if total == 0 {
            return None;
        }
        let rank = (p / 100.0 * total as f64).ceil().max(1.0);
        let mut seen = 0f64;
        for &(b, n) in &self.buckets {
            let n = n as f64;
            if seen + n >= rank {
                let frac = (rank - seen) / n;
                let (lo, hi) = (Self::lower_ms(b), Self::upper_ms(b));
                return Some(lo + (hi - lo) * frac);
            }
            seen += n;
        }
        self.buckets.last().map(|(b, _)| Self::upper_ms(*b))
    }

    /// Mean in milliseconds.
    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ns as f64 / self.count as f64 / 1e6)
    }

    /// Upper bound of the highest non-empty bucket, milliseconds.
    pub fn max_ms(&self) -> Option<f64> {
        self.buckets.last().map(|(b, _)| Self::upper_ms(*b))
    }

    /// Heap bytes held, for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(u8, u32)>()
    }
}

/// Block IO of one service on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoTotals {
    /// Read requests.
    pub read_ops: u64,
    /// Write and flush requests.
    pub write_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Requests that completed with an error.
    pub errors: u64,
    /// Discard requests: blocks released, no data moved (absent from recordings made before
    /// they were counted).
    #[serde(default)]
    pub discard_ops: u64,
    /// Bytes discarded.
    #[serde(default)]
    pub discard_bytes: u64,
}

impl IoTotals {
    fn add(&mut self, o: &IoTotals) {
        self.read_ops += o.read_ops;
        self.write_ops += o.write_ops;
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.errors += o.errors;
        self.discard_ops += o.discard_ops;
        self.discard_bytes += o.discard_bytes;
    }
}

/// Everything but TCP that happened to one service in one time slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCounters {
    /// Run-queue delay.
    pub runq: Histogram,
    /// Time on CPU, nanoseconds.
    pub oncpu_ns: u64,
    /// Voluntary context switches.
    pub vol_switches: u64,
    /// Involuntary context switches.
    pub invol_switches: u64,
    /// Pages allocated.
    pub page_allocs: u64,
    /// Execs.
    pub execs: u64,
    /// Processes that exited.
    pub exits: u64,
    /// Of which failed (non-zero status or a crash signal).
    pub failed_exits: u64,
    /// Of which were stopped by SIGKILL, SIGTERM, SIGINT or SIGHUP.
    pub killed: u64,
    /// OOM kills of the service's processes.
    pub oom_kills: u64,
    /// Block IO latency.
    pub io_lat: Histogram,
    /// Block IO over all devices.
    pub io: IoTotals,
    /// Block IO per device (`dev_t` as the block tracepoints print it).
    pub io_devices: Vec<(u32, IoTotals)>,
    /// TCP handshake time of successful connects.
    pub connect: Histogram,
    /// Failed syscalls: `(syscall nr, errno, count)`.
    pub syscall_errors: Vec<(u32, u32, u64)>,
    /// Failed syscalls beyond [`MAX_SYSCALL_ERRORS_PER_SLOT`] distinct pairs.
    pub syscall_errors_other: u64,
    /// Latency of the timed syscalls: `(syscall nr, histogram)`.
    pub syscall_lat: Vec<(u32, Histogram)>,
}

impl HostCounters {
    /// Whether nothing happened.
    pub fn is_zero(&self) -> bool {
        *self == HostCounters::default()
    }

    /// Back to nothing, keeping the allocations (for a scratch value reused in a loop).
    pub fn clear(&mut self) {
        // Rebuilt from the default so that a counter added later is reset too.
        let old = std::mem::take(self);
        *self = HostCounters {
            runq: old.runq,
            io_lat: old.io_lat,
            connect: old.connect,
            io_devices: old.io_devices,
            syscall_errors: old.syscall_errors,
            syscall_lat: old.syscall_lat,
            ..Default::default()
        };
        self.runq.clear();
        self.io_lat.clear();
        self.connect.clear();
        self.io_devices.clear();
        self.syscall_errors.clear();
        self.syscall_lat.clear();
    }

    /// Adds the scheduler/memory/process delta `cur - prev`.
    pub fn add_proc(&mut self, cur: &ProcStats, prev: &ProcStats) {
        self.runq.merge(&Histogram::delta(&cur.runq, &prev.runq));
        self.oncpu_ns += cur.oncpu_ns.wrapping_sub(prev.oncpu_ns);
        self.vol_switches += cur.vol_switches.wrapping_sub(prev.vol_switches);
        self.invol_switches += cur.invol_switches.wrapping_sub(prev.invol_switches);
        self.page_allocs += cur.page_allocs.wrapping_sub(prev.page_allocs);
        self.execs += cur.execs.wrapping_sub(prev.execs);
        self.exits += cur.exits.wrapping_sub(prev.exits);
        self.failed_exits += cur.failed_exits.wrapping_sub(prev.failed_exits);
        self.killed += cur.killed.wrapping_sub(prev.killed);
    }

    /// Adds the block IO delta `cur - prev` on `dev`.
    pub fn add_io(&mut self, dev: u32, cur: &IoStats, prev: &IoStats) {
        self.io_lat.merge(&Histogram::delta(&cur.lat, &prev.lat));
        let d = IoTotals {
            read_ops: cur.read_ops.wrapping_sub(prev.read_ops),
            write_ops: cur.write_ops.wrapping_sub(prev.write_ops),
            read_bytes: cur.read_bytes.wrapping_sub(prev.read_bytes),
            write_bytes: cur.write_bytes.wrapping_sub(prev.write_bytes),
            errors: cur.errors.wrapping_sub(prev.errors),
            discard_ops: cur.discard_ops.wrapping_sub(prev.discard_ops),
            discard_bytes: cur.discard_bytes.wrapping_sub(prev.discard_bytes),
        };
        self.io.add(&d);
        self.add_device(dev, &d);
    }

    /// Adds `d` to the per-device breakdown only (the caller keeps [`Self::io`]).
    fn add_device(&mut self, dev: u32, d: &IoTotals) {
        if let Some((_, t)) = self.io_devices.iter_mut().find(|(k, _)| *k == dev) {
            t.add(d);
        } else if self.io_devices.len() < MAX_DEVICES_PER_SLOT {
            self.io_devices.push((dev, *d));
        } else if let Some((_, t)) = self.io_devices.iter_mut().find(|(k, _)| *k == 0) {
            t.add(d);
        } else {
            let (_, mut last) = self.io_devices.pop().expect("cap > 0");
            last.add(d);
            self.io_devices.push((0, last));
        }
    }

    /// Adds `n` failures of syscall `nr` with `errno`.
    pub fn add_syscall_error(&mut self, nr: u32, errno: u32, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(e) = self.syscall_errors.iter_mut().find(|(s, e, _)| *s == nr && *e == errno) {
            e.2 += n;
        } else if self.syscall_errors.len() < MAX_SYSCALL_ERRORS_PER_SLOT {
            self.syscall_errors.push((nr, errno, n));
        } else {
            self.syscall_errors_other += n;
        }
    }

    /// Adds latency samples of syscall `nr`.
    pub fn add_syscall_lat(&mut self, nr: u32, h: &Histogram) {
        if h.is_empty() {
            return;
        }
        match self.syscall_lat.iter_mut().find(|(s, _)| *s == nr) {
            Some((_, x)) => x.merge(h),
            None => self.syscall_lat.push((nr, h.clone())),
        }
    }

    /// Adds everything in `o`.
    pub fn merge(&mut self, o: &HostCounters) {
        self.runq.merge(&o.runq);
        self.oncpu_ns += o.oncpu_ns;
        self.vol_switches += o.vol_switches;
        self.invol_switches += o.invol_switches;
        self.page_allocs += o.page_allocs;
        self.execs += o.execs;
        self.exits += o.exits;
        self.failed_exits += o.failed_exits;
        self.killed += o.killed;
        self.oom_kills += o.oom_kills;
        self.io_lat.merge(&o.io_lat);
        self.io.add(&o.io);
        for (dev, t) in &o.io_devices {
            self.add_device(*dev, t);
        }
        self.connect.merge(&o.connect);
        for &(nr, errno, n) in &o.syscall_errors {
            self.add_syscall_error(nr, errno, n);
        }
        self.syscall_errors_other += o.syscall_errors_other;
        for (nr, h) in &o.syscall_lat {
            self.add_syscall_lat(*nr, h);
        }
    }

    /// Heap bytes held, for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.runq.heap_bytes()
            + self.io_lat.heap_bytes()
            + self.connect.heap_bytes()
            + self.io_devices.capacity() * std::mem::size_of::<(u32, IoTotals)>()
            + self.syscall_errors.capacity() * std::mem::size_of::<(u32, u32, u64)>()
            + self
                .syscall_lat
                .iter()
                .map(|(_, h)| std::mem::size_of::<(u32, Histogram)>() + h.heap_bytes())
                .sum::<usize>()
    }
}

/// Formats a `dev_t` as the block tracepoints encode it (`major << 20 | minor`) as "254:0".
pub fn dev_name(dev: u32) -> String {
    if dev == 0 { "other".into() } else { format!("{}:{}", dev >> 20, dev & 0xfffff) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(samples_us: &[u64]) -> LatHist {
        let mut h = LatHist::default();
        for us in samples_us {
            h.add(us * 1000);
        }
        h
    }

    #[test]
    fn buckets_are_log2_microseconds() {
        assert_eq!(bpfsight_common::hist_bucket(500), 0);
        assert_eq!(bpfsight_common::hist_bucket(1_000), 1);
        assert_eq!(bpfsight_common::hist_bucket(1_999), 1);
        assert_eq!(bpfsight_common::hist_bucket(2_000), 2);
        assert_eq!(bpfsight_common::hist_bucket(1_000_000), 10);
        assert_eq!(bpfsight_common::hist_bucket(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn percentiles_land_in_the_right_bucket() {
        // 99 samples at ~10 µs, one at ~50 ms.
        let mut v = vec![10; 99];
        v.push(50_000);
        let h = Histogram::delta(&raw(&v), &LatHist::default());
        assert_eq!(h.count, 100);
        let p50 = h.percentile_ms(50.0).unwrap();
        assert!((0.008..=0.016).contains(&p50), "{p50}");
        let p100 = h.percentile_ms(100.0).unwrap();
        assert!((32.768..=65.536).contains(&p100), "{p100}");
        assert!(h.percentile_ms(99.0).unwrap() <= 0.016);
        assert_eq!(Histogram::default().percentile_ms(99.0), None);
    }

    #[test]
    fn deltas_and_merges_add_up() {
        let a = raw(&[5, 5, 100]);
        let b = raw(&[5, 5, 100, 7, 3000]);
        let d = Histogram::delta(&b, &a);
        assert_eq!(d.count, 2);
        let mut m = Histogram::delta(&a, &LatHist::default());
        m.merge(&d);
        assert_eq!(m, Histogram::delta(&b, &LatHist::default()));
    }

    #[test]
    fn syscall_errors_are_capped_without_losing_counts() {
        let mut c = HostCounters::default();
        for nr in 0..40 {
            c.add_syscall_error(nr, 2, 3);
        }
        assert_eq!(c.syscall_errors.len(), MAX_SYSCALL_ERRORS_PER_SLOT);
        let kept: u64 = c.syscall_errors.iter().map(|e| e.2).sum();
        assert_eq!(kept + c.syscall_errors_other, 120);
    }

    #[test]
    fn devices_are_capped_without_losing_counts() {
        let mut c = HostCounters::default();
        let one = IoStats { write_ops: 1, ..Default::default() };
        for dev in 1..10 {
            c.add_io(dev, &one, &IoStats::default());
        }
        assert!(c.io_devices.len() <= MAX_DEVICES_PER_SLOT);
        assert_eq!(c.io_devices.iter().map(|(_, t)| t.write_ops).sum::<u64>(), 9);
        assert_eq!(c.io.write_ops, 9);
        let mut m = HostCounters::default();
        m.merge(&c);
        m.merge(&c);
        assert_eq!(m.io.write_ops, 18);
        assert_eq!(m.io_devices.iter().map(|(_, t)| t.write_ops).sum::<u64>(), 18);
    }
}
