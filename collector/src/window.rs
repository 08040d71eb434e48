//! Query windows: how far back a question looks ("30s", "5m", "1h").

use std::fmt;
use std::str::FromStr;

/// A look-back window in whole seconds, up to the history the collector keeps (7 days).
/// Windows up to 15 minutes are answered at 1 s resolution, up to 6 hours at 10 s, longer
/// ones at 1 min.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    secs: u64,
}

/// Why a window string was refused; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid window {input:?}: {reason}; use a number followed by s, m, h or d (e.g. \"30s\", \"5m\", \"1h\", \"2d\"), between 1s and {max}"
)]
pub struct WindowError {
    input: String,
    reason: &'static str,
    max: Window,
}

impl Window {
    /// Five minutes: the default of every tool.
    pub const DEFAULT: Window = Window { secs: 300 };
    /// The longest window answered at 1 s resolution.
    pub const FINE_MAX: Window = Window { secs: 15 * 60 };
    /// The longest window answered at 10 s resolution.
    pub const MID_MAX: Window = Window { secs: 6 * 3600 };
    /// The longest window answerable at all.
    pub const MAX: Window = Window { secs: 7 * 24 * 3600 };

    /// A window of `secs` seconds, if within `1..=MAX`.
    pub fn from_secs(secs: u64) -> Option<Window> {
        (1..=Self::MAX.secs).contains(&secs).then_some(Window { secs })
    }

    /// Resolution the window is answered at, seconds.
    pub fn resolution_secs(self) -> u64 {
        if self <= Self::FINE_MAX {
            1
        } else if self <= Self::MID_MAX {
            10
        } else {
            60
        }
    }

    /// Length in seconds.
    pub fn secs(self) -> u64 {
        self.secs
    }
}

impl Default for Window {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| WindowError { input: s.to_string(), reason, max: Window::MAX };
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| err("missing unit"))?;
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err("missing number"));
        }
        let n: u64 = num.parse().map_err(|_| err("number too large"))?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return Err(err("unknown unit")),
        };
        let secs = n.checked_mul(mult).ok_or_else(|| err("number too large"))?;
        if secs == 0 {
            return Err(err("must be positive"));
        }
        Window::from_secs(secs).ok_or_else(|| err("longer than the history kept"))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.secs {
            s if s % 86400 == 0 => write!(f, "{}d", s / 86400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("30s".parse::<Window>().unwrap().secs(), 30);
        assert_eq!("5m".parse::<Window>().unwrap().secs(), 300);
        assert_eq!(" 15m ".parse::<Window>().unwrap().secs(), 900);
        assert_eq!("1m".parse::<Window>().unwrap().to_string(), "1m");
        assert_eq!("90s".parse::<Window>().unwrap().to_string(), "90s");
    }

    #[test]
    fn refuses_bad_input_with_what_is_accepted() {
        for bad in ["5x", "", "m", "0s", "-5m", "8d", "99999999999999999999s", "5 m"] {
            let e = bad.parse::<Window>().unwrap_err().to_string();
            assert!(e.contains("\"30s\""), "{bad}: {e}");
        }
        assert!("8d".parse::<Window>().unwrap_err().to_string().contains("7d"));
        assert_eq!("1h".parse::<Window>().unwrap().resolution_secs(), 10);
        assert_eq!("7h".parse::<Window>().unwrap().resolution_secs(), 60);
        assert_eq!("7d".parse::<Window>().unwrap().secs(), 7 * 86400);
        assert_eq!("15m".parse::<Window>().unwrap().resolution_secs(), 1);
    }
}
