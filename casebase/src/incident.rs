//! Incidents: what happened, what it looked like, what caused it and what fixed it.

use serde::{Deserialize, Serialize};

use crate::schema::Signature;

/// Where an incident came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The curated library shipped in `casebase/cases/`.
    Seeded,
    /// Recorded by a user (or agent) on this deployment.
    Recorded,
}

/// A time range in Unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    /// Start, inclusive.
    pub start_ms: u64,
    /// End, exclusive.
    pub end_ms: u64,
}

/// One remembered incident or failure pattern.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Stable id: the case's slug for seeds (`conn-pool-exhaustion`), `inc-N` for recorded ones.
    pub id: String,
    /// One line naming the failure.
    pub title: String,
    /// Services involved (empty for generic patterns).
    #[serde(default)]
    pub services: Vec<String>,
    /// When it happened (recorded incidents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_range: Option<TimeRange>,
    /// How it looked in the metrics.
    pub signature: Signature,
    /// What was observed, in words.
    #[serde(default)]
    pub description: String,
    /// Why it happened.
    pub root_cause: String,
    /// What fixed it.
    pub resolution: String,
    /// Free-form labels (`network`, `memory`, `database`, ...), lower case.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Seeded or recorded.
    pub source: Source,
    /// When it was stored, Unix milliseconds (0 for seeds).
    #[serde(default)]
    pub created_at_ms: u64,
}

impl Incident {
    /// The text that the text index embeds: everything a person would search for.
    pub fn search_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}",
            self.title,
            self.description,
            self.root_cause,
            self.resolution,
            self.tags.join(" ")
        )
    }
}

/// What a caller supplies to record an incident; the case base assigns id, source and time.
#[derive(Clone, Debug, Default)]
pub struct NewIncident {
    /// One line naming the failure (required, at most 200 characters).
    pub title: String,
    /// Services involved.
    pub services: Vec<String>,
    /// The window the signature was taken from.
    pub time_range: Option<TimeRange>,
    /// How it looked.
    pub signature: Signature,
    /// What was observed.
    pub description: String,
    /// Why it happened (required).
    pub root_cause: String,
    /// What fixed it (required).
    pub resolution: String,
    /// Labels.
    pub tags: Vec<String>,
}

/// Longest accepted title, in characters.
pub const MAX_TITLE: usize = 200;
/// Longest accepted description, root cause or resolution, in characters.
pub const MAX_TEXT: usize = 8_000;
/// Most tags on one incident.
pub const MAX_TAGS: usize = 16;

impl NewIncident {
    /// Checks the fields a person must fill in; the message names the field and the rule.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |field: &'static str, why: String| Err(crate::Error::Invalid { field, why });
        if self.title.trim().is_empty() {
            return bad("title", "must not be empty".into());
        }
        if self.title.chars().count() > MAX_TITLE {
            return bad("title", format!("is longer than {MAX_TITLE} characters"));
        }
        for (field, text) in [("root_cause", &self.root_cause), ("resolution", &self.resolution)] {
            if text.trim().is_empty() {
                return bad(field, "must not be empty: say what caused it / what fixed it".into());
            }
        }
        for (field, text) in [
            ("description", &self.description),
            ("root_cause", &self.root_cause),
            ("resolution", &self.resolution),
        ] {
            if text.chars().count() > MAX_TEXT {
                return bad(field, format!("is longer than {MAX_TEXT} characters"));
            }
        }
        if self.tags.len() > MAX_TAGS {
            return bad("tags", format!("has {} tags; at most {MAX_TAGS}", self.tags.len()));
        }
        if let Some(t) = self.tags.iter().find(|t| t.trim().is_empty() || t.len() > 40) {
            return bad("tags", format!("{t:?} must be 1 to 40 characters"));
        }
        Ok(())
    }
}
