//! Redaction of every tool result before it leaves the process.
//!
//! Secrets are always masked: `password=...`, `token=...`, `--api-key VALUE`,
//! `Authorization: ...`, bearer tokens, credentials in URLs. IP addresses and user names
//! (in `/home/NAME` paths and `user=NAME`) are kept, masked or replaced by a stable keyed hash,
//! as the policy says; a keyed hash keeps the same peer recognisable across answers without
//! revealing it. Loopback and unspecified addresses are never sensitive and stay as they are.

use std::borrow::Cow;
use std::hash::Hasher;
use std::net::IpAddr;

use regex::{Captures, Regex};
use rmcp::model::CallToolResult;
use serde_json::Value;
use siphasher::sip::SipHasher13;

/// What to do with an identifier (IP address, user name).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Treatment {
    /// Leave it.
    #[default]
    Keep,
    /// Replace it with a placeholder.
    Mask,
    /// Replace it with a stable keyed hash (`ip-1a2b3c4d`, `user-5e6f7a8b`).
    Hash,
}

/// The redaction policy, compiled.
pub struct Redactor {
    secrets: Vec<(Regex, &'static str)>,
    ipv4: Regex,
    ipv6: Regex,
    home: Regex,
    user_kv: Regex,
    ips: Treatment,
    users: Treatment,
    key: (u64, u64),
}

const MASK: &str = "***";

impl Redactor {
    /// A redactor with the given treatments and hash key.
    pub fn new(ips: Treatment, users: Treatment, key: (u64, u64)) -> Redactor {
        let secret_words = r"(?:password|passwd|pass|pwd|passphrase|token|secret|api[-_]?key|apikey|access[-_]?key|secret[-_]?key|private[-_]?key|client[-_]?secret|credentials?|auth)";
        let secrets = vec![
            // Authorization / Proxy-Authorization headers, whatever the scheme.
            (
                Regex::new(
                    r"(?i)\b((?:proxy-)?authorization)(\s*[:=]\s*)[^\s*]\S*(?:\s+[A-Za-z0-9._~+/=-]{8,})?",
                )
                .unwrap(),
                "$1$2***",
            ),
            // Bearer tokens anywhere.
            (Regex::new(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}").unwrap(), "$1***"),
            // Credentials in URLs: scheme://user:secret@host.
            (Regex::new(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@").unwrap(), "$1***@"),
            // Command-line options: --api-key VALUE, --password=VALUE, -p? no: only named options.
            (
                Regex::new(&format!(r"(?i)(--?[a-z0-9-]*{secret_words}[a-z0-9-]*)(=|\s+)([^\s*-][^\s&;,]*)"))
                    .unwrap(),
                "$1$2***",
            ),
            // Environment-like and query-string pairs: DB_PASSWORD=..., token=..., ?api_key=...
            (
                Regex::new(&format!(
                    r"(?i)\b([a-z0-9_.-]*{secret_words}[a-z0-9_.-]*)(\s*=\s*)([^\s&;,*][^\s&;,]*)"
                ))
                .unwrap(),
                "$1$2***",
            ),
            // JSON-ish "password": "value".
            (
                Regex::new(&format!(r#"(?i)("[a-z0-9_.-]*{secret_words}[a-z0-9_.-]*"\s*:\s*)"[^"]*""#))
                    .unwrap(),
                "$1\"***\"",
            ),
        ];
        Redactor {
            secrets,
            ipv4: Regex::new(r"\b(?:\d{1,3}\.){3}\d{1,3}\b").unwrap(),
            // An IPv6 address may end in a dotted quad (`::ffff:10.1.2.3`): take it whole, or its
            // tail would be left for the IPv4 pattern of the next pass to find.
            ipv6: Regex::new(r"(?i)[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:(?:\.\d{1,3}){3})?(?:%[a-z0-9]+)?")
                .unwrap(),
            home: Regex::new(r"(/home/)([^/\s]+)").unwrap(),
            user_kv: Regex::new(r"(?i)\b(user(?:name)?|login)(\s*[=:]\s*)([A-Za-z0-9_.-]+)").unwrap(),
            ips,
            users,
            key,
        }
    }

    fn hash(&self, kind: &str, s: &str) -> String {
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(kind.as_bytes());
        h.write(s.as_bytes());
        format!("{kind}-{:08x}", h.finish() as u32)
    }

    fn ip(&self, text: &str) -> Option<String> {
        let addr: IpAddr = text.split('%').next()?.parse().ok()?;
        if addr.is_loopback() || addr.is_unspecified() {
            return None;
        }
        Some(match self.ips {
            Treatment::Keep => return None,
            Treatment::Mask => {
                if addr.is_ipv4() {
                    "x.x.x.x".into()
                } else {
                    "x:x::x".into()
                }
            }
            Treatment::Hash => self.hash("ip", &addr.to_string()),
        })
    }

    fn user(&self, name: &str) -> String {
        // A name this redactor already hashed stays as it is: text redacted once (an incident
        // note, a recording) may be redacted again on the way out, and the hash must not move.
        if is_user_hash(name) {
            return name.to_string();
        }
        match self.users {
            Treatment::Keep => name.to_string(),
            Treatment::Mask => MASK.to_string(),
            Treatment::Hash => self.hash("user", name),
        }
    }

    /// Redacts one string, so that redacting the result again changes nothing (the fuzz
    /// target checks this): text redacted once, such as an incident note, is redacted again
    /// on its way out, and a hash that moved would name a different peer or user.
    ///
    /// One pass is not always enough. Each pattern scans for non-overlapping matches, and a
    /// mask or hash written by a later pattern changes what an earlier one finds next time
    /// (`login:ff:d9%e::` hides `e::` inside a non-address until the user name is masked), so
    /// a string that changed is passed again until it stops changing. Most strings are not
    /// changed by the first pass and cost one.
    pub fn redact_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out = self.redact_pass(s);
        if let Cow::Owned(first) = &out {
            if first == s {
                return Cow::Borrowed(s);
            }
            // A pass only writes hashes and masks that no pattern matches again, so this ends
            // fast: one more pass was the most needed over 3 million generated strings. The
            // bound is for a hostile string.
            for _ in 0..8 {
                match self.redact_pass(&out) {
                    Cow::Owned(next) if next != *out => out = Cow::Owned(next),
                    _ => break,
                }
            }
        }
        out
    }

    /// One pass of every pattern. Identifiers first, secrets last: hashing an address can put
    /// a word boundary where there was none, and secret masking must see the final text.
    fn redact_pass<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out: Cow<'a, str> = Cow::Borrowed(s);
        if self.ips != Treatment::Keep {
            for re in [&self.ipv4, &self.ipv6] {
                if re.is_match(&out) {
                    let replaced = re.replace_all(&out, |c: &Captures| {
                        // An address does not start inside a word, a longer dotted or
                        // colon-separated run, or right after a mask (`login:***::1` was
                        // `login:bob::1`, whose `::1` was not an address either). Without
                        // this, the hex tail of a hash written here (`ip-4a470c9d`) followed
                        // by `::` reads as an IPv6 address on a second pass, and
                        // `ip-4a470c9d.10.1.2.3` hides a quad the first pass never saw (both
                        // found by the fuzz target).
                        let start = c.get(0).map_or(0, |m| m.start());
                        let glued = out[..start].chars().next_back().is_some_and(|ch| {
                            ch.is_ascii_alphanumeric() || matches!(ch, '_' | ':' | '.' | '*')
                        });
                        if glued { None } else { self.ip(&c[0]) }.unwrap_or_else(|| c[0].to_string())
                    });
                    out = Cow::Owned(replaced.into_owned());
                }
            }
        }
        if self.users != Treatment::Keep {
            if self.home.is_match(&out) {
                let r = self.home.replace_all(&out, |c: &Captures| format!("{}{}", &c[1], self.user(&c[2])));
                out = Cow::Owned(r.into_owned());
            }
            if self.user_kv.is_match(&out) {
                let r = self
                    .user_kv
                    .replace_all(&out, |c: &Captures| format!("{}{}{}", &c[1], &c[2], self.user(&c[3])));
                out = Cow::Owned(r.into_owned());
            }
        }
        // Most strings (names, addresses, numbers) cannot hold a secret: every pattern needs
        // one of these words or an `=`/`://`, and checking for them is far cheaper than regexes.
        // Values never start with `*`, so masks are not masked again; one pattern's mask that
        // completes another's match is caught by `redact_str`'s next pass.
        if might_hold_secret(&out) {
            for (re, rep) in &self.secrets {
                if re.is_match(&out) {
                    out = Cow::Owned(re.replace_all(&out, *rep).into_owned());
                }
            }
        }
        out
    }

    /// Redacts every string in a JSON value, in place (keys are kept).
    pub fn redact_value(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact_str(s) {
                    *s = r;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.redact_value(x)),
            Value::Object(m) => m.values_mut().for_each(|x| self.redact_value(x)),
            _ => {}
        }
    }

    /// Redacts a tool result: its text content and its structured content.
    pub fn redact_result(&self, r: &mut CallToolResult) {
        if let Some(v) = r.structured_content.as_mut() {
            self.redact_value(v);
        }
        for c in r.content.iter_mut() {
            if let Some(t) = c.as_text()
                && let Cow::Owned(red) = self.redact_str(&t.text)
            {
                *c = rmcp::model::ContentBlock::text(red);
            }
        }
    }
}

/// Whether `name` has the shape of [`Redactor::hash`]'s output for a user (`user-1a2b3c4d`).
fn is_user_hash(name: &str) -> bool {
    name.strip_prefix("user-")
        .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Cheap pre-check: whether any secret pattern could match `s`.
fn might_hold_secret(s: &str) -> bool {
    // One case-insensitive pass (the regex engine turns the literals into a SIMD prefilter),
    // no lower-cased copy: this runs on every string of every result.
    static HINT: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"(?i)pass|pwd|token|secret|key|auth|credential|bearer|=|://").expect("valid pattern")
    });
    HINT.is_match(s)
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(Treatment::Keep, Treatment::Keep, (0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRETS: &[&str] =
        &["hunter2", "sk-live-abc123def456", "s3cr3tT0k3n", "AKIAZZZZ9999", "pa55w0rd", "eyJhbGciOi.xyz.abc"];

    fn corpus() -> Vec<&'static str> {
        vec![
            "postgres -c password=hunter2 -D /var/lib/pg",
            "app --api-key sk-live-abc123def456 --verbose",
            "app --api-key=sk-live-abc123def456",
            "worker --token s3cr3tT0k3n",
            "curl -H Authorization: Bearer eyJhbGciOi.xyz.abc https://x",
            "curl -H 'Authorization: Basic pa55w0rd' https://x",
            "env AWS_SECRET_ACCESS_KEY=AKIAZZZZ9999 DB_PASSWORD=pa55w0rd run",
            "GET /login?user=bob&api_key=sk-live-abc123def456",
            "psql postgres://admin:hunter2@db.internal:5432/app",
            r#"{"password": "hunter2", "token": "s3cr3tT0k3n"}"#,
            "redis-server --requirepass hunter2",
            "mysqld --password hunter2",
        ]
    }

    #[test]
    fn secrets_never_survive() {
        let r = Redactor::default();
        for line in corpus() {
            let out = r.redact_str(line);
            for s in SECRETS {
                assert!(!out.contains(s), "{s} leaked from {line:?}: {out:?}");
            }
        }
        // Harmless text is untouched.
        assert_eq!(r.redact_str("nginx: worker process"), "nginx: worker process");
        assert_eq!(r.redact_str("--window 5m --limit 3"), "--window 5m --limit 3");
    }

    #[test]
    fn addresses_and_users_by_policy() {
        let keep = Redactor::default();
        assert_eq!(keep.redact_str("10.1.2.3:5432"), "10.1.2.3:5432");
        let mask = Redactor::new(Treatment::Mask, Treatment::Mask, (1, 2));
        assert_eq!(mask.redact_str("peer 10.1.2.3:5432"), "peer x.x.x.x:5432");
        assert_eq!(mask.redact_str("[2001:db8::7]:443"), "[x:x::x]:443");
        assert_eq!(mask.redact_str("127.0.0.1:80 and ::1"), "127.0.0.1:80 and ::1");
        assert_eq!(mask.redact_str("/home/alice/bin/app user=alice"), "/home/***/bin/app user=***");
        let hash = Redactor::new(Treatment::Hash, Treatment::Hash, (1, 2));
        let a = hash.redact_str("10.1.2.3").into_owned();
        assert!(a.starts_with("ip-") && a.len() == 11, "{a}");
        assert_eq!(hash.redact_str("10.1.2.3"), a, "stable");
        assert_ne!(hash.redact_str("10.1.2.4"), a);
        let other_key = Redactor::new(Treatment::Hash, Treatment::Hash, (3, 4));
        assert_ne!(other_key.redact_str("10.1.2.3"), a, "keyed per deployment");
        // Times and versions are not addresses.
        assert_eq!(mask.redact_str("12:30:45 v1.2.3"), "12:30:45 v1.2.3");
        // Nor is a hex run glued to a word, such as a hash this redactor wrote followed by `::`.
        assert_eq!(mask.redact_str("id4a470c9d::1f"), "id4a470c9d::1f");
        // An IPv4-mapped IPv6 address is one address, hidden whole.
        assert_eq!(mask.redact_str("from ::ffff:10.1.2.3 port 5"), "from x:x::x port 5");
    }

    /// A deterministic pick in `0..n` (xorshift), so a failing string is the same every run.
    fn picker(mut state: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        }
    }

    /// The fuzz target's find: the first pass hashed `4::%ivetasn4`, leaving `ip-4a470c9d::%ive`,
    /// whose `0c9d::%ive` the second pass took for an address.
    #[test]
    fn redacting_twice_changes_nothing_more() {
        let hash = Redactor::new(Treatment::Hash, Treatment::Hash, (1, 2));
        for text in [
            "{\"$:0.5\u{8}\u{2}\0\0\0\0\0\0ive_o?\0\090itas4n::%ive_o?\0\090indow\":\"1\090itasn4::%ivetasn4::%ive_o\"}",
            "peer 2001:db8::7::%eth0 and 10.1.2.3",
            "a4::%x4::%y",
            "\"::10.10.1.2.3:4\"",
            "::ffff:10.1.2.3 and ::10.1.2.3.4",
            "login:d9::a 10",
            ":login:ff:d9%e::\"userkeyuser= x",
            "/home/alice/bin user=bob",
        ] {
            let once = hash.redact_str(text).into_owned();
            assert_eq!(hash.redact_str(&once), once, "{text:?}");
        }
    }

    /// The fuzz target's property over many strings built from the characters addresses and
    /// hashes are made of, so a regression shows here and not only in a lucky fuzz run.
    #[test]
    fn redacting_twice_changes_nothing_more_on_address_like_noise() {
        // Runs of groups and separators rather than random characters, so that long dotted
        // runs, `::` and hash-like words meet often (the fuzz target's finds need ten in a row).
        const LEADS: &[&str] = &["", " ", "\"", "x", ".", ":", "::", "ip-a", "_"];
        const GROUPS: &[&str] = &["7", "10", "255", "1", "ff", "a", "d9"];
        const SEPS: &[&str] = &[".", ":", "::"];
        let hash = Redactor::new(Treatment::Hash, Treatment::Hash, (1, 2));
        let mask = Redactor::new(Treatment::Mask, Treatment::Mask, (1, 2));
        let mut next = picker(0x9e37_79b9_7f4a_7c15_u64);
        let rounds = if cfg!(debug_assertions) { 10_000 } else { 100_000 };
        for _ in 0..rounds {
            let mut text = String::new();
            for _ in 0..1 + next(3) {
                text.push_str(LEADS[next(LEADS.len())]);
                for g in 0..1 + next(7) {
                    if g > 0 {
                        text.push_str(SEPS[next(SEPS.len())]);
                    }
                    text.push_str(GROUPS[next(GROUPS.len())]);
                }
            }
            for r in [&hash, &mask] {
                let once = r.redact_str(&text).into_owned();
                assert_eq!(r.redact_str(&once), once, "{text:?}");
            }
        }
    }

    /// Identifiers, user names and secrets together, under every policy: masks and hashes
    /// written by one pattern change what the others find (this found hashed user names
    /// hashed again, and addresses unmasked by a user-name mask next to them).
    #[test]
    fn redacting_twice_changes_nothing_more_on_mixed_noise() {
        const PIECES: &[&str] = &[
            "7",
            "10",
            "255",
            "1",
            "ff",
            "a",
            "d9",
            ".",
            ":",
            "::",
            " ",
            "\"",
            "=",
            "://",
            "@",
            "user",
            "user=",
            "/home/",
            "/",
            "password",
            "token",
            "key",
            "-",
            "--",
            "bearer ",
            "Authorization: ",
            "*",
            "ip-",
            "_",
            "%e",
            "&",
            ";",
            ",",
            "x",
            "login:",
            "auth",
        ];
        let rs = [
            Redactor::new(Treatment::Hash, Treatment::Mask, (7, 9)),
            Redactor::new(Treatment::Hash, Treatment::Hash, (1, 2)),
            Redactor::new(Treatment::Mask, Treatment::Mask, (1, 2)),
            Redactor::new(Treatment::Keep, Treatment::Keep, (1, 2)),
        ];
        let mut next = picker(0x1234_5678_9abc_def1_u64);
        let mut fails = 0;
        // Ten times fewer in a debug build, where each redaction is about ten times slower.
        let rounds = if cfg!(debug_assertions) { 30_000 } else { 300_000 };
        for _ in 0..rounds {
            let len = 1 + next(16);
            let text: String = (0..len).map(|_| PIECES[next(PIECES.len())]).collect();
            for r in &rs {
                let once = r.redact_str(&text).into_owned();
                let twice = r.redact_str(&once).into_owned();
                if twice != once {
                    fails += 1;
                    if fails < 10 {
                        eprintln!("{text:?}\n  once  {once:?}\n  twice {twice:?}");
                    }
                }
            }
        }
        assert_eq!(fails, 0);
    }
}
