//! One-line text summaries that accompany every structured result, for clients that show text.

use bpfsight_collector::query::{ConnectionReport, ErrorReport, ServiceList};

pub(crate) fn services(l: &ServiceList) -> String {
    let mut s = format!("{} services", l.total);
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
        return format!("no TCP activity in the last {}s", r.window_s);
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
                p += &format!(", {} failed connects", x.failed_connects);
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
    format!("{} services with TCP activity in the last {}s. {}", r.total, r.window_s, parts.join("; "))
}

pub(crate) fn errors(r: &ErrorReport) -> String {
    if r.services.is_empty() {
        return format!(
            "no service has a network error rate at or above {}% in the last {}s",
            r.threshold_pct, r.window_s
        );
    }
    let parts: Vec<String> = r
        .services
        .iter()
        .take(3)
        .map(|x| {
            format!(
                "{}: {}% ({} errors / {} attempts: {} failed connects, {} resets sent, {} received, {} retransmits)",
                x.service, x.error_rate_pct, x.errors, x.attempts, x.failed_connects, x.resets_sent, x.resets_received, x.retransmits
            )
        })
        .collect();
    format!(
        "{} services at or above {}% in the last {}s. {}",
        r.total,
        r.threshold_pct,
        r.window_s,
        parts.join("; ")
    )
}
