//! Answers of the store-query tools, reused until the collector next writes to the store.
//!
//! The collector writes about once a second; agents and dashboards ask the same questions
//! far more often than that (64 sessions asking `get_service_errors` see the same store).
//! An answer is a pure function of the tool, its arguments and the store, so it is kept under
//! the store's [`generation`](bpfsight_collector::store::Store::generation) and given again,
//! already redacted, while that generation lasts: the same bytes a fresh call would produce,
//! without the query, the JSON tree and the redaction pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use rmcp::model::{CallToolResult, JsonObject};

/// Tools whose answer depends only on their arguments and the store.
const PURE_TOOLS: [&str; 6] = [
    "list_services",
    "get_connection_stats",
    "get_service_errors",
    "get_high_latency_services",
    "get_resource_usage",
    "get_events",
];

/// Distinct (tool, arguments) answers kept per generation; results are bounded by each tool's
/// `limit`, so this bounds the cache's memory too.
const MAX_ENTRIES: usize = 32;

/// Cached answers of one store generation (see the module docs).
#[derive(Default)]
pub struct ResultCache {
    inner: Mutex<Generation>,
}

/// A call's identity: the tool and its arguments as canonical JSON.
pub type Key = (String, String);

#[derive(Default)]
struct Generation {
    generation: u64,
    answers: HashMap<Key, Arc<Answer>>,
}

/// One kept answer, and its JSON once some caller needed the bytes.
struct Answer {
    result: CallToolResult,
    json: OnceLock<Bytes>,
}

impl Answer {
    fn json(&self) -> Bytes {
        // `CallToolResult` serialises to a map of plain values, which cannot fail.
        self.json.get_or_init(|| serde_json::to_vec(&self.result).unwrap_or_default().into()).clone()
    }
}

/// The cache key of a call, or `None` when the tool's answer must not be reused.
pub fn key(tool: &str, arguments: Option<&JsonObject>) -> Option<Key> {
    if !PURE_TOOLS.contains(&tool) {
        return None;
    }
    // serde_json's map is ordered by key, so equal arguments give equal strings.
    let args = arguments.map_or_else(String::new, |a| serde_json::to_string(a).unwrap_or_default());
    Some((tool.to_string(), args))
}

impl ResultCache {
    fn hit(&self, generation: u64, key: &Key) -> Option<Arc<Answer>> {
        let g = self.inner.lock().ok()?;
        if g.generation != generation {
            return None;
        }
        g.answers.get(key).cloned()
    }

    /// The answer given to `key` at `generation`, if there was one.
    pub fn get(&self, generation: u64, key: &Key) -> Option<CallToolResult> {
        // The deep copy (the whole JSON tree) happens outside the lock every session shares.
        self.hit(generation, key).map(|a| a.result.clone())
    }

    /// The same answer as [`get`](Self::get), serialised as JSON: serialised once per
    /// generation, however many callers ask for it.
    pub fn get_json(&self, generation: u64, key: &Key) -> Option<Bytes> {
        self.hit(generation, key).map(|a| a.json())
    }

    /// Keeps `answer` for `key` while the store stays at `generation`. Errors are not kept:
    /// they are cheap and their text may name the moment.
    pub fn put(&self, generation: u64, key: Key, answer: &CallToolResult) {
        if answer.is_error == Some(true) {
            return;
        }
        let Ok(mut g) = self.inner.lock() else { return };
        if g.generation != generation {
            // A newer generation is never replaced by an older one.
            if generation < g.generation {
                return;
            }
            g.generation = generation;
            g.answers.clear();
        }
        if g.answers.len() >= MAX_ENTRIES {
            g.answers.clear();
        }
        g.answers.insert(key, Arc::new(Answer { result: answer.clone(), json: OnceLock::new() }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ContentBlock;

    fn answer(text: &str) -> CallToolResult {
        CallToolResult::success(vec![ContentBlock::text(text)])
    }

    #[test]
    fn answers_last_exactly_one_generation() {
        let cache = ResultCache::default();
        let k = key("list_services", None).unwrap();
        cache.put(7, k.clone(), &answer("seven"));
        assert_eq!(cache.get(7, &k), Some(answer("seven")));
        assert_eq!(cache.get_json(7, &k).unwrap(), serde_json::to_vec(&answer("seven")).unwrap());
        assert_eq!(cache.get(8, &k), None);
        assert_eq!(cache.get_json(8, &k), None);
        cache.put(8, k.clone(), &answer("eight"));
        // A call that started before the store moved cannot bring back the older answer.
        cache.put(7, k.clone(), &answer("seven"));
        assert_eq!(cache.get(8, &k), Some(answer("eight")));
        assert_eq!(cache.get(7, &k), None);
    }

    #[test]
    fn only_pure_tools_and_successes_are_kept() {
        assert!(key("similar_incidents", None).is_none());
        assert!(key("record_incident", None).is_none());
        assert!(key("predict_anomaly", None).is_none());
        let mut args = JsonObject::new();
        args.insert("window".into(), "5m".into());
        args.insert("limit".into(), 3.into());
        let mut same = JsonObject::new();
        same.insert("limit".into(), 3.into());
        same.insert("window".into(), "5m".into());
        assert_eq!(key("get_events", Some(&args)), key("get_events", Some(&same)));
        assert_ne!(key("get_events", Some(&args)), key("get_events", None));

        let cache = ResultCache::default();
        let k = key("get_events", Some(&args)).unwrap();
        cache.put(1, k.clone(), &CallToolResult::error(vec![ContentBlock::text("no")]));
        assert_eq!(cache.get(1, &k), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = ResultCache::default();
        for i in 0..(3 * MAX_ENTRIES) {
            let mut a = JsonObject::new();
            a.insert("limit".into(), i.into());
            cache.put(1, key("list_services", Some(&a)).unwrap(), &answer("x"));
        }
        assert!(cache.inner.lock().unwrap().answers.len() <= MAX_ENTRIES);
    }
}
