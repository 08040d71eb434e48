//! Live symptom signatures: the collector's window of one service (or the host), translated
//! into the case base's metric schema.
//!
//! Until per-service baselines exist (the predictor's job), deviations are absolute severities
//! on the schema's scale (0 normal, 1 noticeable, 3 severe, 5 extreme), from rates that are
//! abnormal on any host: retransmits as a share of sends, failed connects as a share of
//! attempts, resets and new connections per unit of time. Features the collector does not
//! measure yet are listed as such, so a reader knows a 0 there means "unknown", not "normal".

use std::collections::BTreeMap;

use bpfsight_casebase::{Feature, Signature};
use bpfsight_collector::Store;
use bpfsight_collector::Window;
use bpfsight_collector::query::{ConnectionQuery, MAX_LIMIT, QueryError};
use serde::Serialize;

/// The features this build measures live.
pub const MEASURED: &[Feature] = &[
    Feature::Retransmits,
    Feature::FailedConnects,
    Feature::ResetsReceived,
    Feature::ResetsSent,
    Feature::ConnectionChurn,
];

/// What a live signature was made of, for the caller to check.
#[derive(Clone, Debug, Serialize)]
pub struct SignatureSummary {
    /// The service, or `host` for every service together.
    pub scope: String,
    /// Window length, seconds.
    pub window_s: u64,
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
}

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
    let minutes = (window.secs() as f64 / 60.0).max(1.0 / 60.0);
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
    let summary = SignatureSummary {
        scope: service.map_or_else(|| "host".to_string(), |s| s.to_string()),
        window_s: window.secs(),
        measured: MEASURED.iter().map(|f| (f.name(), sig.get(*f))).collect(),
        unmeasured: Feature::ALL.iter().filter(|f| !MEASURED.contains(f)).map(|f| f.name()).collect(),
        counts: c,
    };
    Ok((sig, summary))
}

#[cfg(test)]
mod tests {
    use super::severity;

    #[test]
    fn severity_scale() {
        assert_eq!(severity(0.0005, 0.001, 0.2), 0.0);
        assert_eq!(severity(0.2, 0.001, 0.2), 5.0);
        assert_eq!(severity(9.0, 0.001, 0.2), 5.0);
        let mid = severity(0.014, 0.001, 0.2);
        assert!((2.0..3.0).contains(&mid), "{mid}");
    }
}
