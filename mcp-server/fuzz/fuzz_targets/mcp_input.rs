//! Everything a client controls, decoded the way the server decodes it: JSON-RPC messages,
//! tool arguments (typed structs, windows, limits, thresholds), bearer-token files and the
//! redactor over arbitrary text. None of it may panic.
#![no_main]

use bpfsight::args::{ConnectionStatsArgs, ListServicesArgs, ServiceErrorsArgs, limit, window};
use bpfsight::auth::Tokens;
use bpfsight::redact::{Redactor, Treatment};
use bpfsight_collector::query::{ConnectionQuery, ServiceListQuery};
use bpfsight_collector::{Store, Window};
use libfuzzer_sys::fuzz_target;
use rmcp::model::ClientJsonRpcMessage;

// Compiling the patterns is the expensive part; do it once, not per input.
static REDACTOR: std::sync::LazyLock<Redactor> =
    std::sync::LazyLock::new(|| Redactor::new(Treatment::Hash, Treatment::Mask, (7, 9)));

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
        let _ = store.service_errors(a.threshold_pct.unwrap_or(1.0), w, l);
    }
    if let Ok(a) = serde_json::from_slice::<ListServicesArgs>(data)
        && let Ok(l) = limit(a.limit, 50)
    {
        let _ = store.list_services(&ServiceListQuery {
            name_contains: a.name_contains,
            active_only: a.active_only,
            limit: Some(l),
        });
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<Window>();
        let _ = Tokens::parse(text, "fuzz");
        let r = &*REDACTOR;
        let out = r.redact_str(text);
        // Redaction is idempotent: masking twice changes nothing more.
        assert_eq!(r.redact_str(&out), out, "redaction not idempotent for {text:?}");
    }
});
