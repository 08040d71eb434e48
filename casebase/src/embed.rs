//! Text embeddings for description queries.
//!
//! The default, [`HashedEmbedder`], needs no model download and no network: words, word pairs and
//! character trigrams are hashed into a fixed number of signed buckets with sublinear term
//! frequency, after folding a small table of operations synonyms ("too many open files" and
//! "emfile" land on the same token). [`RemoteEmbedder`] calls an OpenAI-compatible
//! `/v1/embeddings` or an Ollama `/api/embeddings` endpoint instead.

use std::collections::HashMap;
use std::hash::Hasher;
use std::time::Duration;

use serde::Deserialize;
use siphasher::sip::SipHasher13;

/// Why a text could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The remote embedder could not be reached or answered with an error.
    #[error("embedding service {url} failed: {why}")]
    Remote {
        /// The endpoint called.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The remote embedder answered with vectors of another size than before.
    #[error("embedding service returned {got} dimensions, expected {expected}")]
    Dimensions {
        /// Size the index was built with.
        expected: usize,
        /// Size returned now.
        got: usize,
    },
}

/// Turns text into unit vectors of a fixed size.
pub enum Embedder {
    /// Built in, offline.
    Hashed(HashedEmbedder),
    /// An HTTP embedding service.
    Remote(RemoteEmbedder),
}

impl Default for Embedder {
    fn default() -> Self {
        Embedder::Hashed(HashedEmbedder::default())
    }
}

impl Embedder {
    /// Names the embedder and its settings; an index built by another id is rebuilt.
    pub fn id(&self) -> String {
        match self {
            Embedder::Hashed(h) => format!("hashed-v1-{}", h.dimensions),
            Embedder::Remote(r) => format!("{}:{}:{}", r.api.name(), r.url, r.model),
        }
    }

    /// Embeds one text as a unit vector (all zeros if the text has no usable words).
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        match self {
            Embedder::Hashed(h) => Ok(h.embed(text)),
            Embedder::Remote(r) => r.embed(text).await,
        }
    }
}

/// The offline embedder: feature hashing of words, word pairs and character trigrams, each
/// weighted by the word's rarity (inverse document frequency) in the seed library, so that
/// "eaddrnotavail" outweighs "under load".
#[derive(Clone, Debug)]
pub struct HashedEmbedder {
    dimensions: usize,
}

impl Default for HashedEmbedder {
    fn default() -> Self {
        HashedEmbedder { dimensions: 1024 }
    }
}

/// Word -> IDF over the seed library, and the IDF of a word it never uses.
struct Idf {
    words: HashMap<String, f32>,
    unseen: f32,
}

static IDF: std::sync::LazyLock<Idf> = std::sync::LazyLock::new(|| {
    let docs: Vec<String> =
        crate::seeds::load().unwrap_or_default().iter().map(|i| i.search_text()).collect();
    let n = docs.len() as f32;
    let mut df: HashMap<String, f32> = HashMap::new();
    for d in &docs {
        let mut seen: Vec<String> = tokens(d);
        seen.sort();
        seen.dedup();
        for w in seen {
            *df.entry(w).or_default() += 1.0;
        }
    }
    let idf = |df: f32| ((n + 1.0) / (df + 1.0)).ln() + 1.0;
    // A word no seed uses cannot match a seed, only collide with one: weigh it like a common word.
    Idf { words: df.into_iter().map(|(w, d)| (w, idf(d))).collect(), unseen: idf(n / 8.0) }
});

fn idf(word: &str) -> f32 {
    let base = IDF.words.get(word).copied().unwrap_or(IDF.unseen);
    // The canonical tokens of the synonym table are curated domain vocabulary.
    if SYNONYMS.iter().any(|(_, t)| *t == word) { 2.0 * base } else { base }
}

/// Words that say nothing about a failure.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is", "it", "its",
    "of", "on", "or", "that", "the", "their", "then", "there", "this", "to", "was", "were", "when", "which",
    "while", "with", "we", "our", "all", "after", "so", "but", "not", "no", "into", "than",
];

/// Phrases operators use for the same thing, folded onto one token before hashing.
const SYNONYMS: &[(&str, &str)] = &[
    ("too many open files", "emfile"),
    ("file descriptors", "emfile"),
    ("file descriptor", "emfile"),
    ("fd limit", "emfile"),
    ("out of memory", "oom"),
    ("oom killer", "oom"),
    ("oom-killed", "oom"),
    ("oomkilled", "oom"),
    ("connection refused", "econnrefused"),
    ("connections refused", "econnrefused"),
    ("refused connections", "econnrefused"),
    ("timed out", "timeout"),
    ("time out", "timeout"),
    ("timeouts", "timeout"),
    ("connection reset", "reset"),
    ("rst", "reset"),
    ("resets", "reset"),
    ("retransmissions", "retransmit"),
    ("retransmits", "retransmit"),
    ("retransmitted", "retransmit"),
    ("packet loss", "loss"),
    ("dropped packets", "loss"),
    ("packets dropped", "loss"),
    ("name resolution", "dns"),
    ("resolve hostnames", "dns"),
    ("resolver", "dns"),
    ("run queue", "runqueue"),
    ("run-queue", "runqueue"),
    ("cpu starvation", "runqueue"),
    ("noisy neighbor", "noisy-neighbour"),
    ("noisy neighbour", "noisy-neighbour"),
    ("garbage collection", "gc"),
    ("garbage collector", "gc"),
    ("stop-the-world", "gc"),
    ("disk full", "enospc"),
    ("no space left", "enospc"),
    ("ephemeral ports", "ephemeral-port"),
    ("ephemeral port", "ephemeral-port"),
    ("source ports", "ephemeral-port"),
    ("cannot assign requested address", "eaddrnotavail"),
    ("handshake", "tls-handshake"),
    ("certificate", "tls-handshake"),
    ("cores", "cpu"),
    ("cpus", "cpu"),
    ("processors", "cpu"),
    ("same box", "same host"),
    ("same machine", "same host"),
    ("same node", "same host"),
    ("slow", "latency"),
    ("sluggish", "latency"),
    ("high latency", "latency"),
    ("crash loop", "crashloop"),
    ("crashlooping", "crashloop"),
    ("keeps restarting", "crashloop"),
    ("restarting", "crashloop"),
    ("connection pool", "pool"),
    ("pool exhausted", "pool"),
    ("backlog", "syn-backlog"),
    ("accept queue", "syn-backlog"),
    ("listen queue", "syn-backlog"),
    ("conntrack", "nf-conntrack"),
    ("nf_conntrack", "nf-conntrack"),
];

impl HashedEmbedder {
    /// An embedder with `dimensions` buckets (at least 16).
    pub fn new(dimensions: usize) -> Self {
        HashedEmbedder { dimensions: dimensions.max(16) }
    }

    /// Embeds `text` as a unit vector.
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let words = tokens(text);
        // feature -> (occurrences, weight per occurrence)
        let mut counts: HashMap<String, (f32, f32)> = HashMap::new();
        let mut bump = |feature: String, weight: f32| {
            let e = counts.entry(feature).or_insert((0.0, weight));
            e.0 += 1.0;
        };
        for w in &words {
            let idf = idf(w);
            bump(format!("w:{w}"), idf);
            // Trigrams let "retransmit" meet "retransmission" and typos meet their word.
            let padded: Vec<char> = format!("<{w}>").chars().collect();
            let per_trigram = 0.5 * idf / padded.len().saturating_sub(2).max(1) as f32;
            for t in padded.windows(3) {
                bump(format!("c:{}", t.iter().collect::<String>()), per_trigram);
            }
        }
        for pair in words.windows(2) {
            bump(format!("b:{} {}", pair[0], pair[1]), 0.5 * (idf(&pair[0]) + idf(&pair[1])) * 0.7);
        }
        let mut v = vec![0.0f32; self.dimensions];
        for (feature, (tf, weight)) in counts {
            let mut h = SipHasher13::new_with_keys(0x6270_6673, 0x6967_6874);
            h.write(feature.as_bytes());
            let hash = h.finish();
            let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
            // Sublinear tf: the tenth mention of "timeout" matters less than the first.
            v[(hash % self.dimensions as u64) as usize] += sign * (1.0 + tf.ln()) * weight;
        }
        normalize(&mut v);
        v
    }
}

/// Lower-cased words after synonym folding, stop-word removal and light stemming.
fn tokens(text: &str) -> Vec<String> {
    let mut t = format!(" {} ", text.to_lowercase());
    t = t
        .chars()
        .map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { ' ' })
        .collect::<String>();
    let mut t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    t = format!(" {t} ");
    for (phrase, token) in SYNONYMS {
        let needle = format!(" {phrase} ");
        while t.contains(&needle) {
            t = t.replace(&needle, &format!(" {token} "));
        }
    }
    t.split_whitespace().filter(|w| !STOPWORDS.contains(w)).map(stem).collect()
}

/// Strips the commonest English suffixes so "failing", "failed" and "fails" meet.
fn stem(w: &str) -> String {
    for suffix in ["ing", "ed", "es", "s"] {
        if w.len() > suffix.len() + 3
            && let Some(root) = w.strip_suffix(suffix)
        {
            return root.to_string();
        }
    }
    w.to_string()
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Which HTTP API a remote embedder speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteApi {
    /// `POST {url}` with `{"model", "input"}`, answer `{"data": [{"embedding": [...]}]}`.
    OpenAi,
    /// `POST {url}` with `{"model", "prompt"}`, answer `{"embedding": [...]}`.
    Ollama,
}

impl RemoteApi {
    fn name(self) -> &'static str {
        match self {
            RemoteApi::OpenAi => "openai",
            RemoteApi::Ollama => "ollama",
        }
    }
}

/// An embedding service reached over HTTP.
pub struct RemoteEmbedder {
    api: RemoteApi,
    url: String,
    model: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl RemoteEmbedder {
    /// An embedder calling `url` (the full endpoint, e.g. `http://localhost:11434/api/embeddings`)
    /// with `model`, giving up after `timeout`.
    pub fn new(
        api: RemoteApi,
        url: String,
        model: String,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, EmbedError> {
        // reqwest is built without a bundled crypto provider; ring is ours. An earlier install
        // (by the server's TLS setup) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| EmbedError::Remote { url: url.clone(), why: e.to_string() })?;
        Ok(RemoteEmbedder { api, url, model, api_key, client })
    }

    async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let fail = |why: String| EmbedError::Remote { url: self.url.clone(), why };
        let body = match self.api {
            RemoteApi::OpenAi => serde_json::json!({"model": self.model, "input": text}),
            RemoteApi::Ollama => serde_json::json!({"model": self.model, "prompt": text}),
        };
        let mut req = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| fail(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(fail(format!("HTTP {status}: {}", text.chars().take(200).collect::<String>())));
        }
        let mut v = match self.api {
            RemoteApi::OpenAi => {
                #[derive(Deserialize)]
                struct Item {
                    embedding: Vec<f32>,
                }
                #[derive(Deserialize)]
                struct Answer {
                    data: Vec<Item>,
                }
                let a: Answer = resp.json().await.map_err(|e| fail(format!("bad answer: {e}")))?;
                a.data.into_iter().next().ok_or_else(|| fail("answer has no embedding".into()))?.embedding
            }
            RemoteApi::Ollama => {
                #[derive(Deserialize)]
                struct Answer {
                    embedding: Vec<f32>,
                }
                let a: Answer = resp.json().await.map_err(|e| fail(format!("bad answer: {e}")))?;
                a.embedding
            }
        };
        if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
            return Err(fail("answer has an empty or non-finite embedding".into()));
        }
        normalize(&mut v);
        Ok(v)
    }
}

/// reqwest hides the useful part ("connection refused") in the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::cosine;

    #[test]
    fn paraphrases_are_closer_than_unrelated_text() {
        let e = HashedEmbedder::default();
        let a = e.embed("The service failed with too many open files");
        let b = e.embed("EMFILE errors: file descriptor limit reached");
        let c = e.embed("disk full, writes failing with no space left on device");
        assert!(cosine(&a, &b) > cosine(&a, &c), "{} vs {}", cosine(&a, &b), cosine(&a, &c));
        let n = a.iter().map(|x| x * x).sum::<f32>();
        assert!((n - 1.0).abs() < 1e-4);
        assert!(e.embed("  ,, ").iter().all(|x| *x == 0.0));
    }

    #[tokio::test]
    async fn a_remote_embedder_that_is_down_says_so() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let r = RemoteEmbedder::new(
            RemoteApi::Ollama,
            format!("http://127.0.0.1:{port}/api/embeddings"),
            "nomic-embed-text".into(),
            None,
            Duration::from_secs(2),
        )
        .unwrap();
        let err = Embedder::Remote(r).embed("x").await.unwrap_err().to_string();
        assert!(err.contains("refused"), "{err}");
    }
}
