//! Everything a client controls, decoded the way the server decodes it: JSON-RPC messages,
//! tool arguments (typed structs, windows, limits, thresholds), bearer-token files and the
//! redactor over arbitrary text. None of it may panic.
#![no_main]

use bpfsight::args::{
    ConnectionStatsArgs, EventsArgs, GetIncidentArgs, HighLatencyArgs, ListServicesArgs, OneOrMany,
    PredictArgs, RecordIncidentArgs, ResourceUsageArgs, ServiceErrorsArgs, SimilarIncidentsArgs, limit,
    seconds, top_k, window,
};
use bpfsight::auth::Tokens;
use bpfsight::redact::{Redactor, Treatment};
use bpfsight_casebase::{HashedEmbedder, NewIncident, Signature};
use bpfsight_collector::host_query::{EventQuery, LatencyKind, LatencyQuery, Resource};
use bpfsight_collector::query::{ConnectionQuery, ErrorQuery, ServiceListQuery};
use bpfsight_collector::{Store, Window};
use libfuzzer_sys::fuzz_target;
use rmcp::model::ClientJsonRpcMessage;

// Compiling the patterns is the expensive part; do it once, not per input.
static PREDICTOR: std::sync::LazyLock<std::sync::Arc<bpfsight::predict::Predictor>> =
    std::sync::LazyLock::new(|| {
        bpfsight::predict::Predictor::new(None, bpfsight_predictor::engine::EngineConfig::default())
    });
/// Every treatment of addresses and of user names appears in one of these.
static REDACTORS: std::sync::LazyLock<[Redactor; 3]> = std::sync::LazyLock::new(|| {
    [
        Redactor::new(Treatment::Hash, Treatment::Mask, (7, 9)),
        Redactor::new(Treatment::Mask, Treatment::Hash, (7, 9)),
        Redactor::new(Treatment::Keep, Treatment::Keep, (7, 9)),
    ]
});

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ClientJsonRpcMessage>(data);
    let store = Store::new(1_000);
    if let Ok(a) = serde_json::from_slice::<ConnectionStatsArgs>(data)
        && let (Ok(w), Ok(l)) = (window(a.window.as_deref()), limit(a.limit, 20))
    {
        let _ = store.connection_stats(&ConnectionQuery { service: a.service, window: w, limit: Some(l) });
    }
    if let Ok(a) = serde_json::from_slice::<ServiceErrorsArgs>(data)
        && let (Ok(w), Ok(l)) = (window(a.window.as_deref()), limit(a.limit, 20))
    {
        let _ = store.service_errors(&ErrorQuery {
            threshold_pct: a.threshold_pct.unwrap_or(1.0),
            min_syscall_errors_per_s: a.min_syscall_errors_per_s.unwrap_or(5.0),
            window: w,
            limit: l,
        });
    }
    if let Ok(a) = serde_json::from_slice::<HighLatencyArgs>(data)
        && let (Ok(w), Ok(l)) = (window(a.window.as_deref()), limit(a.limit, 20))
    {
        let _ = store.high_latency(&LatencyQuery {
            threshold_ms: a.threshold_ms,
            kind: LatencyKind::Runqueue,
            percentile: a.percentile.unwrap_or(99.0),
            window: w,
            limit: l,
        });
    }
    if let Ok(a) = serde_json::from_slice::<ResourceUsageArgs>(data)
        && let Ok(w) = window(a.window.as_deref())
    {
        let _ = store.resource_usage(&a.service, Resource::All, w);
    }
    if let Ok(a) = serde_json::from_slice::<EventsArgs>(data)
        && let (Ok(w), Ok(l)) = (window(a.window.as_deref()), limit(a.limit, 50))
    {
        let _ = store.events(&EventQuery {
            service: a.service,
            kinds: Vec::new(),
            window: w,
            limit: l,
            cursor: a.cursor,
        });
    }
    if let Ok(a) = serde_json::from_slice::<ListServicesArgs>(data)
        && let Ok(l) = limit(a.limit, 50)
    {
        let _ = store.list_services(&ServiceListQuery {
            name_contains: a.name_contains,
            active_only: a.active_only,
            active_within: a.active_within.as_deref().and_then(|w| window(Some(w)).ok()),
            limit: Some(l),
        });
    }
    if let Ok(a) = serde_json::from_slice::<SimilarIncidentsArgs>(data) {
        let _ = (window(a.window.as_deref()), top_k(a.top_k));
    }
    if let Ok(a) = serde_json::from_slice::<RecordIncidentArgs>(data) {
        let new = NewIncident {
            title: a.title,
            root_cause: a.root_cause,
            resolution: a.resolution,
            description: a.description.unwrap_or_default(),
            tags: a.tags.map(OneOrMany::into_vec).unwrap_or_default(),
            ..NewIncident::default()
        };
        let _ = new.validate();
    }
    let _ = serde_json::from_slice::<GetIncidentArgs>(data);
    if let Ok(a) = serde_json::from_slice::<PredictArgs>(data)
        && let (Ok(h), Ok(w)) = (
            seconds("horizon", a.horizon.as_deref(), 60, 10, 300),
            seconds("window", a.window.as_deref(), 30, 1, 300),
        )
    {
        let _ = PREDICTOR.predict(a.service.as_deref(), h, w);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = bpfsight_predictor::nab::parse_time(text);
    }
    if let Ok(sig) = serde_json::from_slice::<Signature>(data) {
        assert!(sig.as_slice().iter().all(|v| v.is_finite() && v.abs() <= 5.0));
    }
    // The incident log's reader sees whatever a crash or a bad disk left behind.
    let _ = bpfsight_casebase::log::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let v = HashedEmbedder::default().embed(text);
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!(norm == 0.0 || (norm - 1.0).abs() < 1e-3, "embedding not unit length: {norm}");
        let _ = text.parse::<Window>();
        let _ = Tokens::parse(text, "fuzz");
        for r in REDACTORS.iter() {
            let out = r.redact_str(text);
            // Redaction is idempotent: masking twice changes nothing more.
            assert_eq!(r.redact_str(&out), out, "redaction not idempotent for {text:?}");
        }
    }
});
