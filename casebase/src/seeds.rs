//! The seed library: curated failure patterns compiled into the binary from `cases/*.toml`.

use serde::Deserialize;

use crate::Error;
use crate::incident::{Incident, Source};
use crate::schema::Signature;

/// The case files, by name; reviewed like code.
const FILES: &[(&str, &str)] = &[
    ("network.toml", include_str!("../cases/network.toml")),
    ("compute.toml", include_str!("../cases/compute.toml")),
    ("storage.toml", include_str!("../cases/storage.toml")),
    ("application.toml", include_str!("../cases/application.toml")),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    id: String,
    title: String,
    tags: Vec<String>,
    description: String,
    root_cause: String,
    resolution: String,
    signature: Signature,
}

/// Every seeded incident, in file order.
pub fn load() -> Result<Vec<Incident>, Error> {
    let mut out: Vec<Incident> = Vec::new();
    for (file, text) in FILES {
        let parsed: File = toml::from_str(text).map_err(|e| Error::Seed { file, why: e.to_string() })?;
        for c in parsed.case {
            let bad = |why: String| Error::Seed { file, why: format!("case {}: {why}", c.id) };
            if c.id.starts_with("inc-")
                || !c.id.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
            {
                return Err(bad("ids are lower-case slugs and must not start with inc-".into()));
            }
            if out.iter().any(|o| o.id == c.id) {
                return Err(bad("duplicate id".into()));
            }
            if c.signature.significant().is_empty() {
                return Err(bad("signature has no significant feature".into()));
            }
            out.push(Incident {
                id: c.id,
                title: c.title,
                services: Vec::new(),
                time_range: None,
                signature: c.signature,
                description: c.description,
                root_cause: c.root_cause,
                resolution: c.resolution,
                tags: c.tags,
                source: Source::Seeded,
                created_at_ms: 0,
            });
        }
    }
    Ok(out)
}

/// A fingerprint of the seed library; stored indexes built from other seeds are rebuilt.
pub fn fingerprint() -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (name, text) in FILES {
        h.update(name.as_bytes());
        h.update(text.as_bytes());
    }
    h.finalize()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_library_loads_and_has_at_least_thirty_patterns() {
        let seeds = super::load().unwrap();
        assert!(seeds.len() >= 30, "{} seeds", seeds.len());
    }
}
