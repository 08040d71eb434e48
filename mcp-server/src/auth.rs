//! Bearer tokens for remote sessions: who is calling (the principal in the audit log) and what
//! they may do (their role).
//!
//! Tokens come from a file or an environment variable, never from argv (other users see
//! argv in `ps`). One token per line: `NAME ROLE SECRET`, role `read` or `write`, secret at
//! least 16 characters; `#` starts a comment.

use std::fmt;
use std::path::Path;

/// What a principal may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Query tools only.
    Read,
    /// Query tools and tools that change state (e.g. recording an incident).
    Write,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Name from the token file (or `local` on stdio, `anonymous` on loopback without tokens).
    pub name: String,
    /// What it may call.
    pub role: Role,
}

/// A token file line that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading the source failed.
    #[error("reading tokens from {source_name}: {error}")]
    Io {
        /// File path or variable name.
        source_name: String,
        /// Cause.
        error: std::io::Error,
    },
    /// A line is malformed.
    #[error(
        "{source_name} line {line}: {reason}; expected `NAME ROLE SECRET` with ROLE read or write and a secret of at least 16 characters"
    )]
    Invalid {
        /// File path or variable name.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No token at all.
    #[error("{0} holds no tokens")]
    Empty(String),
}

struct Token {
    principal: Principal,
    secret: Vec<u8>,
}

/// The configured tokens.
pub struct Tokens {
    tokens: Vec<Token>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_list().entries(self.tokens.iter().map(|t| (&t.principal.name, t.principal.role))).finish()
    }
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

impl Tokens {
    /// Parses token lines; `source_name` names the origin in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Tokens, TokenError> {
        let mut tokens = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let invalid = |reason: &str| TokenError::Invalid {
                source_name: source_name.into(),
                line: i + 1,
                reason: reason.into(),
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, secret] = fields[..] else {
                return Err(invalid(&format!("{} fields", fields.len())));
            };
            let role = match role {
                "read" => Role::Read,
                "write" => Role::Write,
                other => return Err(invalid(&format!("unknown role {other:?}"))),
            };
            if secret.len() < 16 {
                return Err(invalid("secret shorter than 16 characters"));
            }
            if tokens.iter().any(|t: &Token| t.principal.name == name) {
                return Err(invalid(&format!("duplicate name {name:?}")));
            }
            tokens.push(Token {
                principal: Principal { name: name.into(), role },
                secret: secret.as_bytes().to_vec(),
            });
        }
        if tokens.is_empty() {
            return Err(TokenError::Empty(source_name.into()));
        }
        Ok(Tokens { tokens })
    }

    /// Reads a token file. Warns when other users can read it.
    pub fn from_file(path: &Path) -> Result<Tokens, TokenError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|error| TokenError::Io { source_name: name.clone(), error })?;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %name, "token file is readable by other users; chmod 600 it");
            }
        }
        Self::parse(&text, &name)
    }

    /// Reads tokens from an environment variable (lines separated by newlines or `;`).
    pub fn from_env(var: &str) -> Result<Option<Tokens>, TokenError> {
        match std::env::var(var) {
            Ok(v) => Self::parse(&v.replace(';', "\n"), var).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The principal whose secret is `presented`, checking every token in constant time.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Principal> {
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(&t.secret, presented) && found.is_none() {
                found = Some(t.principal.clone());
            }
        }
        found
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are none (never true for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_authenticates() {
        let t =
            Tokens::parse("# team\nci read aaaaaaaaaaaaaaaa1\nops write bbbbbbbbbbbbbbbb2 # on call\n", "x")
                .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.authenticate(b"aaaaaaaaaaaaaaaa1").unwrap(),
            Principal { name: "ci".into(), role: Role::Read }
        );
        assert_eq!(t.authenticate(b"bbbbbbbbbbbbbbbb2").unwrap().role, Role::Write);
        assert!(t.authenticate(b"aaaaaaaaaaaaaaaa").is_none());
        assert!(t.authenticate(b"").is_none());
        assert!(!format!("{t:?}").contains("aaaa"), "Debug must not print secrets");
    }

    #[test]
    fn refuses_bad_lines_with_the_line_number() {
        let e = Tokens::parse("ci read short\n", "tokens.txt").unwrap_err().to_string();
        assert!(e.contains("tokens.txt line 1") && e.contains("16 characters"), "{e}");
        let e = Tokens::parse("ci admin aaaaaaaaaaaaaaaaaaaa\n", "f").unwrap_err().to_string();
        assert!(e.contains("unknown role \"admin\""), "{e}");
        assert!(Tokens::parse("\n# nothing\n", "f").is_err());
        assert!(Tokens::parse("a read aaaaaaaaaaaaaaaaaa\na read bbbbbbbbbbbbbbbbbb\n", "f").is_err());
    }
}
