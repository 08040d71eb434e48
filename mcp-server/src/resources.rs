//! MCP resources: read-only JSON views of the live store that a client can attach as context
//! without a tool call (the collector's health, the services, one service's usage).

use bpfsight_collector::Store;
use bpfsight_collector::host_query::Resource as Usage;
use bpfsight_collector::query::{QueryError, ServiceListQuery};
use bpfsight_collector::window::Window;
use rmcp::ErrorData;
use rmcp::model::{Resource, ResourceTemplate};
use serde_json::Value;

/// The collector's health: data source, last poll, drop and overflow counters.
pub const HEALTH: &str = "bpfsight://health";
/// The services, as `list_services` gives them with no filter.
pub const SERVICES: &str = "bpfsight://services";
/// One service's resource usage over the last 5 minutes; `{service}` percent-encoded.
pub const SERVICE: &str = "bpfsight://services/{service}";

const JSON: &str = "application/json";

/// The fixed resources.
pub fn list() -> Vec<Resource> {
    vec![
        Resource::new(HEALTH, "health")
            .with_title("Collector health")
            .with_description(
                "Where the data comes from (ebpf, procfs or replay), when the kernel maps were last \
                 read, and the counters of anything lost (ring buffer drops, full maps, evicted \
                 services). Read it when answers look incomplete.",
            )
            .with_mime_type(JSON),
        Resource::new(SERVICES, "services")
            .with_title("Services")
            .with_description(
                "The services on this host (up to 50, those with network activity first) with \
                 their pids, identity, TCP activity, CPU and memory: the names the tools accept.",
            )
            .with_mime_type(JSON),
    ]
}

/// The parameterised resources.
pub fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(SERVICE, "service")
            .with_title("One service")
            .with_description(
                "CPU, memory, IO, network and syscall errors of one service over the last 5 \
                 minutes (get_resource_usage with resource \"all\"). {service} is a name from \
                 bpfsight://services, percent-encoded.",
            )
            .with_mime_type(JSON),
    ]
}

/// The contents of `uri`, or resource-not-found saying what exists.
pub fn read(store: &Store, uri: &str) -> Result<Value, ErrorData> {
    let json = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| ErrorData::internal_error(format!("serialising {uri}: {e}"), None))
    };
    if uri == HEALTH {
        return json(serde_json::to_value(store.health()));
    }
    if uri == SERVICES {
        return json(serde_json::to_value(store.list_services(&ServiceListQuery::default())));
    }
    if let Some(encoded) = SERVICE.strip_suffix("{service}").and_then(|prefix| uri.strip_prefix(prefix)) {
        let service = percent_decode(encoded).ok_or_else(|| {
            ErrorData::invalid_params(
                format!("{uri:?}: the service name is not valid percent-encoded UTF-8"),
                None,
            )
        })?;
        return match store.resource_usage(&service, Usage::All, Window::DEFAULT) {
            Ok(u) => json(serde_json::to_value(u)),
            Err(e @ QueryError::UnknownService { .. }) => {
                Err(ErrorData::resource_not_found(e.to_string(), Some(Value::String(uri.into()))))
            }
            Err(e) => Err(ErrorData::invalid_params(e.to_string(), None)),
        };
    }
    Err(ErrorData::resource_not_found(
        format!("no resource {uri:?}; the resources are {HEALTH}, {SERVICES} and {SERVICE}"),
        Some(Value::String(uri.into())),
    ))
}

/// Decodes `%XX` escapes; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits exactly (`from_str_radix` alone would take "+1").
            let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("postgres.service").as_deref(), Some("postgres.service"));
        assert_eq!(percent_decode("%5Bkernel%5D").as_deref(), Some("[kernel]"));
        assert_eq!(percent_decode("pod%3Aweb-1").as_deref(), Some("pod:web-1"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("a%+1"), None);
    }
}
