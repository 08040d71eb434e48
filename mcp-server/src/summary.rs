//! One-line text summaries that accompany every structured result, for clients that show text.

use bpfsight_collector::host_query::{EventPage, LatencyReport, ResourceUsage};
use bpfsight_collector::query::{ConnectionReport, ErrorReport, ServiceList};

/// `text`, then the signals not collected here (missing on this kernel, or turned off with
/// `--without`), so a reader of the text alone does not take their zeros for data.
pub(crate) fn noting_unavailable(mut text: String, unavailable: &[String]) -> String {
    if !unavailable.is_empty() {
        text += &format!(" (Not collected here: {}.)", unavailable.join("; "));
    }
    text
}

/// "the last 300s", or "the 7s watched of the last 300s" while bpfsight (or the recording) has
/// run for less than the window or was down for part of it, so that a reader of the text knows
/// what the rates are over.
pub(crate) fn span(window_s: u64, observed_s: u64) -> String {
    if observed_s < window_s {
        format!("the {observed_s}s watched of the last {window_s}s")
    } else {
        format!("the last {window_s}s")
    }
}

/// "585 B/s", "4.6 kB/s", "58.6 MB/s": a reader should not count the digits of 58582528.
fn byte_rate(b: f64) -> String {
    if b < 999.5 {
        return format!("{b:.0} B/s");
    }
    let (v, unit) = if b < 999.5e3 {
        (b / 1e3, "kB/s")
    } else if b < 999.5e6 {
        (b / 1e6, "MB/s")
    } else {
        (b / 1e9, "GB/s")
    };
    format!("{v:.1} {unit}")
}

/// "1 service", "2 services".
fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

pub(crate) fn services(l: &ServiceList) -> String {
    let mut s = count(l.total, "service");
    if l.truncated {
        s += &format!(" (showing {})", l.services.len());
    }
    let busy: Vec<String> = l
        .services
        .iter()
        .filter(|x| x.network_errors_5m > 0)
        .take(3)
        .map(|x| format!("{} ({} network errors in 5m)", x.service, x.network_errors_5m))
        .collect();
    if !busy.is_empty() {
        s += &format!("; with network errors: {}", busy.join(", "));
    }
    s
}

pub(crate) fn connections(r: &ConnectionReport) -> String {
    if r.services.is_empty() {
        return format!("no TCP activity in {}", span(r.window_s, r.observed_s));
    }
    let parts: Vec<String> = r
        .services
        .iter()
        .take(3)
        .map(|x| {
            let mut p = format!("{}: {} opened, {} active", x.service, x.opened, x.active);
            if x.retransmits > 0 {
                p += &format!(", {} retransmits ({}/s)", x.retransmits, x.retransmits_per_s);
            }
            if x.failed_connects > 0 {
                p += &format!(", {} failed connects ({} refused)", x.failed_connects, x.refused_connects);
            }
            if x.resets_sent + x.resets_received > 0 {
                p += &format!(", {} resets sent / {} received", x.resets_sent, x.resets_received);
            }
            if let Some(peer) =
                x.top_peers.first().filter(|p| p.retransmits + p.failed_connects + p.resets > 0)
            {
                p += &format!(", worst peer {}:{}", peer.addr, peer.port);
            }
            p
        })
        .collect();
    format!(
        "{} with TCP activity in {}. {}",
        count(r.total, "service"),
        span(r.window_s, r.observed_s),
        parts.join("; ")
    )
}

pub(crate) fn errors(r: &ErrorReport) -> String {
    if r.services.is_empty() {
        return format!(
            "no service has OOM kills, failed exits, a TCP error rate at or above {}% or {} failed syscalls/s in {}",
            r.threshold_pct,
            r.min_syscall_errors_per_s,
            span(r.window_s, r.observed_s)
        );
    }
    let parts: Vec<String> = r
        .services
        .iter()
        .take(3)
        .map(|x| {
            let mut p = Vec::new();
            if x.oom_kills > 0 {
                p.push(format!("{} OOM kills", x.oom_kills));
            }
            if x.errors > 0 {
                let refused = if x.failed_connects > 0 {
                    format!(" ({} refused)", x.refused_connects)
                } else {
                    String::new()
                };
                p.push(format!(
                    "TCP {}% ({} errors / {} attempts: {} failed connects{refused}, {} resets sent, {} received, {} retransmits)",
                    x.error_rate_pct, x.errors, x.attempts, x.failed_connects, x.resets_sent, x.resets_received, x.retransmits
                ));
            }
            // The rate counts only harmful failures: name the most frequent of those, not a
            // benign isatty probe that happens to be more frequent.
            if let Some(e) = x.syscall_errors.iter().find(|e| !e.benign).filter(|_| x.syscall_errors_per_s > 0.0) {
                p.push(format!("{} failed syscalls/s, most {} {}", x.syscall_errors_per_s, e.syscall, e.errno));
            }
            if x.failed_exits > 0 {
                p.push(format!("{} failed exits", x.failed_exits));
            }
            format!("{}: {}", x.service, p.join(", "))
        })
        .collect();
    format!(
        "{} with errors in {}. {}",
        count(r.total, "service"),
        span(r.window_s, r.observed_s),
        parts.join("; ")
    )
}

pub(crate) fn latency(r: &LatencyReport) -> String {
    let kind = r.kind.as_str();
    if r.services.is_empty() {
        return format!(
            "no service has {kind} latency p{} at or above {} ms in {}",
            r.percentile,
            r.threshold_ms,
            span(r.window_s, r.observed_s)
        );
    }
    let parts: Vec<String> = r
        .services
        .iter()
        .take(3)
        .map(|x| {
            let what = x.syscall.as_ref().map_or(String::new(), |s| format!(" {s}"));
            format!("{}{what}: p{} {} ms ({} samples)", x.service, r.percentile, x.value_ms, x.samples)
        })
        .collect();
    format!(
        "{} over {} ms {kind} latency in {}. {}",
        r.total,
        r.threshold_ms,
        span(r.window_s, r.observed_s),
        parts.join("; ")
    )
}

pub(crate) fn resources(r: &ResourceUsage) -> String {
    let mut p = Vec::new();
    if let Some(c) = &r.cpu {
        let mut s = format!("CPU {}%", c.cpu_pct);
        if let Some(q) = &c.runqueue {
            s += &format!(", run-queue p99 {} ms", q.p99_ms);
        }
        p.push(s);
    }
    if let Some(m) = &r.memory {
        if let Some(rss) = m.rss_bytes {
            p.push(format!("RSS {} MiB", rss / (1 << 20)));
        }
        if m.oom_kills > 0 {
            p.push(format!("{} OOM kills", m.oom_kills));
        }
    }
    if let Some(io) = &r.io {
        let mut s = format!(
            "IO {} read, {} written",
            byte_rate(io.read_bytes_per_s),
            byte_rate(io.write_bytes_per_s)
        );
        if let Some(l) = &io.latency {
            s += &format!(", p99 {} ms", l.p99_ms);
        }
        p.push(s);
    }
    if let Some(n) = &r.network {
        p.push(format!("TCP {} opened, {} retransmits", n.tcp.opened, n.tcp.retransmits));
    }
    format!("{} over {}: {}", r.service, span(r.window_s, r.observed_s), p.join("; "))
}

pub(crate) fn events(p: &EventPage) -> String {
    let mut s = format!("{} in {}", count(p.total, "event"), span(p.window_s, p.observed_s));
    if let Some(e) = p.events.first() {
        s += &format!("; newest: {} of {} (pid {})", e.kind.as_str(), e.service, e.pid);
    }
    if p.next_cursor.is_some() {
        s += &format!("; showing {}, more with cursor", p.events.len());
    }
    s
}

/// One line on a prediction: the verdict, the main contributor, the first forecast crossing.
pub fn prediction(p: &crate::predict::Prediction) -> String {
    // Without a threshold yet (the first seconds) a score below it says nothing.
    let verdict = match (p.is_anomaly, p.threshold) {
        (true, _) => "ANOMALY",
        (false, Some(_)) => "normal",
        (false, None) => "not judged yet",
    };
    let threshold = p.threshold.map_or_else(|| "calibrating".to_string(), |t| format!("{t:.1}"));
    let mut out = format!(
        "{}: {verdict} by {} (score {:.1}, threshold {threshold}; model {}, {} s seen)",
        p.service,
        p.detector,
        p.score,
        p.model.state.as_str(),
        p.model.samples
    );
    if let Some(c) = p.contributors.first() {
        out.push_str(&format!(
            "; mostly {} = {:.3} (expected {:.3}, z {:.1})",
            c.feature, c.value, c.expected, c.z
        ));
    }
    if let Some(f) = p.forecast.iter().filter(|f| f.crosses_at.is_some()).min_by_key(|f| f.crosses_at) {
        out.push_str(&format!(
            "; {} forecast to reach {} in {} s",
            f.feature,
            f.threshold.unwrap_or_default(),
            f.crosses_at.unwrap_or_default()
        ));
    }
    if let Some(s) = p.services.as_ref().and_then(|v| v.iter().find(|s| s.judgement.is_anomaly)) {
        out.push_str(&format!("; service {} is anomalous", s.service));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_rates_read_at_a_glance() {
        let r = super::byte_rate;
        assert_eq!((r(0.0), r(585.143), r(999.6)), ("0 B/s".into(), "585 B/s".into(), "1.0 kB/s".into()));
        assert_eq!(
            (r(59904.0), r(58_582_528.0), r(2.5e9)),
            ("59.9 kB/s".into(), "58.6 MB/s".into(), "2.5 GB/s".into())
        );
    }
}
