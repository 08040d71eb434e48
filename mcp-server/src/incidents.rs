//! The shape of `similar_incidents` results: the query as understood, and compact matches.

use bpfsight_casebase::{Match, Source};
use serde::Serialize;

use crate::symptoms::SignatureSummary;

/// Answer of `similar_incidents`.
#[derive(Debug, Serialize)]
pub struct SimilarReport {
    /// What was matched against.
    pub query: QueryView,
    /// Closest first.
    pub matches: Vec<MatchView>,
}

/// The query as the server understood it.
#[derive(Debug, Serialize)]
pub struct QueryView {
    /// The live symptoms used (absent for a description-only query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_summary: Option<SignatureSummary>,
    /// The description used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One match, without the signature (get_incident has it).
#[derive(Debug, Serialize)]
pub struct MatchView {
    /// Incident id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Fused similarity, -1..1.
    pub score: f32,
    /// Symptom similarity, when symptoms were matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_score: Option<f32>,
    /// Text similarity, when a description was matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_score: Option<f32>,
    /// Shared symptoms, strongest first, and `description` when the words matched.
    pub matched_on: Vec<String>,
    /// Why it happened.
    pub root_cause: String,
    /// What fixed it.
    pub resolution: String,
    /// Labels.
    pub tags: Vec<String>,
    /// Services involved (recorded incidents).
    pub services: Vec<String>,
    /// Seeded pattern or recorded here.
    pub source: Source,
}

fn round3(x: f32) -> f32 {
    (x * 1000.0).round() / 1000.0
}

impl SimilarReport {
    /// Builds the report from a search.
    pub fn new(signature: Option<SignatureSummary>, text: Option<String>, matches: Vec<Match>) -> Self {
        let matches = matches
            .into_iter()
            .map(|m| MatchView {
                id: m.incident.id,
                title: m.incident.title,
                score: round3(m.score),
                signature_score: m.signature_score.map(round3),
                text_score: m.text_score.map(round3),
                matched_on: m.matched_on,
                root_cause: m.incident.root_cause,
                resolution: m.incident.resolution,
                tags: m.incident.tags,
                services: m.incident.services,
                source: m.incident.source,
            })
            .collect();
        SimilarReport { query: QueryView { signature_summary: signature, text }, matches }
    }

    /// A short text for clients that show text.
    pub fn summary(&self) -> String {
        let Some(best) = self.matches.first() else { return "no similar incidents".into() };
        // A score that rounds to 0.00 shares nothing with the query: naming it as a match
        // would send the reader after an unrelated fix.
        let similar = |score: f32| score >= 0.005;
        if !similar(best.score) {
            return format!("nothing similar (the closest, {}, scores {:.2})", best.id, best.score);
        }
        let mut s = format!("closest: {} ({}, score {:.2})", best.title, best.id, best.score);
        if !best.matched_on.is_empty() {
            s += &format!(", matched on {}", best.matched_on.join(", "));
        }
        s += &format!(". Fix: {}", best.resolution);
        let rest: Vec<String> = self
            .matches
            .iter()
            .skip(1)
            .filter(|m| similar(m.score))
            .take(3)
            .map(|m| format!("{} ({:.2})", m.id, m.score))
            .collect();
        if !rest.is_empty() {
            s += &format!(" Also: {}", rest.join(", "));
        }
        s
    }
}
