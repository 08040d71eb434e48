//! The symptom signature: one number per metric, in a typed and versioned schema.
//!
//! Every value is a *deviation* from normal on one common scale so that signatures from the
//! seed library, from recorded incidents and from live data are comparable by cosine:
//! `0` is normal, `1` is noticeable, `3` is severe and `5` is extreme (values are clipped to
//! `[-5, 5]`; negative means below normal, e.g. traffic dropping to nothing).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Bumped whenever [`Feature`] changes; stored indexes built with another version are rebuilt
/// and recorded incidents are re-mapped by feature name (see [`LEGACY_FILE_ERRORS`] for the
/// one feature version 2 split).
pub const SCHEMA_VERSION: u32 = 2;

/// Version 1's single feature for failed file syscalls. Its errnos point to different fixes
/// (a missing file to configuration, a refusal to permissions, EIO to hardware), so version 2
/// has one feature for each; a stored value is spread evenly over the three, keeping the
/// signature's length, since which errno it counted is not known.
pub const LEGACY_FILE_ERRORS: &str = "syscall_errors_file";

/// Largest magnitude a signature value may have.
pub const MAX_DEVIATION: f32 = 5.0;

macro_rules! features {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// One metric of the signature.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Feature {
            $(#[doc = $doc] $variant,)*
        }

        impl Feature {
            /// Every feature, in signature order.
            pub const ALL: &'static [Feature] = &[$(Feature::$variant,)*];

            /// The snake_case name used in case files, tool arguments and results.
            pub fn name(self) -> &'static str {
                match self { $(Feature::$variant => $name,)* }
            }

            /// What the feature measures, for people and models reading results.
            pub fn describe(self) -> &'static str {
                match self { $(Feature::$variant => $doc,)* }
            }

            /// The feature called `name`, if any.
            pub fn from_name(name: &str) -> Option<Feature> {
                match name { $($name => Some(Feature::$variant),)* _ => None }
            }
        }
    };
}

features! {
    Retransmits => "retransmits": "TCP segments retransmitted, relative to segments sent",
    FailedConnects => "failed_connects": "outgoing TCP connects that failed (refused, timed out, unreachable)",
    ResetsReceived => "resets_received": "TCP resets received from peers",
    ResetsSent => "resets_sent": "TCP resets sent to peers",
    ConnectionChurn => "connection_churn": "new TCP connections per second (short-lived connections, no pooling)",
    ConnectLatency => "connect_latency": "time for outgoing connects / handshakes to complete",
    Traffic => "traffic": "bytes and requests moved (negative: traffic dropped)",
    RunqueueDelay => "runqueue_delay": "time runnable threads wait for a CPU",
    CpuUsage => "cpu_usage": "on-CPU time of the service",
    IoLatency => "io_latency": "block IO request latency",
    IoThroughput => "io_throughput": "block IO bytes and operations",
    SyscallErrorsNetwork => "syscall_errors_network": "failed network syscalls (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, name resolution)",
    SyscallErrorsMissing => "syscall_errors_missing": "syscalls failing on paths that do not exist (ENOENT, ENOTDIR): missing files, configuration or directories",
    SyscallErrorsDenied => "syscall_errors_denied": "syscalls refused by permissions or policy (EACCES, EPERM)",
    SyscallErrorsIo => "syscall_errors_io": "IO errors returned to syscalls (EIO, ENXIO, and EROFS from a filesystem remounted read-only after errors): failing storage",
    SyscallErrorsResource => "syscall_errors_resource": "resource-limit errors (EMFILE, ENFILE, ENOMEM, EAGAIN, ENOSPC, EADDRNOTAVAIL)",
    MemoryGrowth => "memory_growth": "resident memory growth and page allocation rate",
    OomKills => "oom_kills": "processes killed by the OOM killer",
    ProcessRestarts => "process_restarts": "process exits with failure and restarts (crash loops)",
    ContextSwitches => "context_switches": "context switches (lock contention, thundering herds)",
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Number of dimensions of a signature.
pub fn dimensions() -> usize {
    Feature::ALL.len()
}

/// A symptom signature: one deviation per [`Feature`], plus which features were measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    values: Vec<f32>,
}

impl Default for Signature {
    fn default() -> Self {
        Signature { values: vec![0.0; dimensions()] }
    }
}

impl Signature {
    /// Sets one feature, clipping to `[-MAX_DEVIATION, MAX_DEVIATION]` (NaN becomes 0).
    pub fn set(&mut self, feature: Feature, value: f32) {
        let v = if value.is_nan() { 0.0 } else { value.clamp(-MAX_DEVIATION, MAX_DEVIATION) };
        self.values[feature as usize] = v;
    }

    /// Builder form of [`Signature::set`].
    pub fn with(mut self, feature: Feature, value: f32) -> Self {
        self.set(feature, value);
        self
    }

    /// The deviation of one feature.
    pub fn get(&self, feature: Feature) -> f32 {
        self.values[feature as usize]
    }

    /// All values, in [`Feature::ALL`] order.
    pub fn as_slice(&self) -> &[f32] {
        &self.values
    }

    /// True when every feature is normal: such a signature has no direction to compare.
    pub fn is_zero(&self) -> bool {
        self.values.iter().all(|v| *v == 0.0)
    }

    /// Cosine similarity in `[-1, 1]`; 0 when either side is all zero.
    pub fn cosine(&self, other: &Signature) -> f32 {
        cosine(&self.values, &other.values)
    }

    /// The non-zero features, largest magnitude first.
    pub fn significant(&self) -> Vec<(Feature, f32)> {
        let mut v: Vec<(Feature, f32)> =
            Feature::ALL.iter().map(|f| (*f, self.get(*f))).filter(|(_, x)| x.abs() >= 0.5).collect();
        v.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        v
    }

    /// Features that both signatures push the same way, by their share of the dot product.
    pub fn shared_with(&self, other: &Signature) -> Vec<Feature> {
        let mut v: Vec<(Feature, f32)> = Feature::ALL
            .iter()
            .map(|f| (*f, self.get(*f) * other.get(*f)))
            .filter(|(_, p)| *p > 0.25)
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.into_iter().map(|(f, _)| f).collect()
    }
}

/// The sparse `name = value` form used in case files and on the wire.
impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let nonzero: Vec<_> = Feature::ALL.iter().filter(|f| self.get(**f) != 0.0).collect();
        let mut m = s.serialize_map(Some(nonzero.len()))?;
        for f in nonzero {
            m.serialize_entry(f.name(), &self.get(*f))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, f32>::deserialize(d)?;
        let mut sig = Signature::default();
        for (name, value) in map {
            if name == LEGACY_FILE_ERRORS && value.is_finite() {
                let share = value / 3f32.sqrt();
                for f in
                    [Feature::SyscallErrorsMissing, Feature::SyscallErrorsDenied, Feature::SyscallErrorsIo]
                {
                    sig.set(f, sig.get(f) + share);
                }
                continue;
            }
            let feature = Feature::from_name(&name).ok_or_else(|| {
                let known: Vec<_> = Feature::ALL.iter().map(|f| f.name()).collect();
                serde::de::Error::custom(format!("unknown feature {name:?}; known: {}", known.join(", ")))
            })?;
            if !value.is_finite() {
                return Err(serde::de::Error::custom(format!("{name} is not a finite number")));
            }
            sig.set(feature, sig.get(feature) + value);
        }
        Ok(sig)
    }
}

/// Cosine similarity of two equal-length vectors; 0 when either is all zero.
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_values_clip() {
        for f in Feature::ALL {
            assert_eq!(Feature::from_name(f.name()), Some(*f));
        }
        let s = Signature::default().with(Feature::OomKills, 40.0).with(Feature::Traffic, f32::NAN);
        assert_eq!(s.get(Feature::OomKills), MAX_DEVIATION);
        assert_eq!(s.get(Feature::Traffic), 0.0);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"oom_kills":5.0}"#);
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), s);
        assert!(
            serde_json::from_str::<Signature>(r#"{"nope":1}"#).unwrap_err().to_string().contains("known")
        );
    }

    #[test]
    fn a_version_1_file_error_value_is_spread_over_the_three_that_replace_it() {
        let old: Signature = serde_json::from_str(r#"{"syscall_errors_file":3.0,"oom_kills":4.0}"#).unwrap();
        let share = 3.0 / 3f32.sqrt();
        for f in [Feature::SyscallErrorsMissing, Feature::SyscallErrorsDenied, Feature::SyscallErrorsIo] {
            assert!((old.get(f) - share).abs() < 1e-6, "{f}: {}", old.get(f));
        }
        // Same length as before, so its weight against the other features is unchanged.
        let norm = old.as_slice().iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 5.0).abs() < 1e-5, "{norm}");
    }
}
