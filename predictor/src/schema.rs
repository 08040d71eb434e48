//! The feature schema: which metrics a model reads, in which order, on which scale.
//!
//! A saved model records the schema it was trained on; loading it under another schema is
//! refused, because the weights of feature 3 mean nothing for a different feature 3.

use serde::{Deserialize, Serialize};

/// The live per-second features, host level and per service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Feature {
    /// Run-queue delay p99, ms.
    RunqueueDelay,
    /// Pages allocated per second.
    PageAllocRate,
    /// TCP segments retransmitted per second.
    RetransmitRate,
    /// Block IO latency p99, ms.
    IoLatency,
    /// Context switches per second.
    ContextSwitchRate,
    /// Failed syscalls per second (benign errnos such as EAGAIN excluded).
    SyscallErrorRate,
    /// Failed TCP connects per second.
    FailedConnectRate,
    /// On-CPU time, percent of one CPU.
    CpuPercent,
}

impl Feature {
    /// Every live feature, in schema order.
    pub const ALL: [Feature; 8] = [
        Feature::RunqueueDelay,
        Feature::PageAllocRate,
        Feature::RetransmitRate,
        Feature::IoLatency,
        Feature::ContextSwitchRate,
        Feature::SyscallErrorRate,
        Feature::FailedConnectRate,
        Feature::CpuPercent,
    ];

    /// The spec of this feature.
    pub fn spec(self) -> FeatureSpec {
        let (name, unit, alert) = match self {
            Feature::RunqueueDelay => ("runqueue_delay_p99_ms", "ms", Some(50.0)),
            Feature::PageAllocRate => ("page_alloc_per_s", "pages/s", Some(250_000.0)),
            Feature::RetransmitRate => ("retransmits_per_s", "1/s", Some(5.0)),
            Feature::IoLatency => ("io_latency_p99_ms", "ms", Some(100.0)),
            Feature::ContextSwitchRate => ("context_switches_per_s", "1/s", Some(50_000.0)),
            Feature::SyscallErrorRate => ("syscall_errors_per_s", "1/s", Some(50.0)),
            Feature::FailedConnectRate => ("failed_connects_per_s", "1/s", Some(1.0)),
            Feature::CpuPercent => ("cpu_pct", "% of one CPU", None),
        };
        // Every live feature is a non-negative, heavy-tailed rate or latency: log1p makes a
        // tenfold rise the same step at any level.
        FeatureSpec { name: name.to_string(), unit: unit.to_string(), log: true, alert }
    }
}

/// One column of a schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Stable name, as tools report it.
    pub name: String,
    /// Unit of the raw value.
    pub unit: String,
    /// Whether the model sees `ln(1 + max(x, 0))` instead of `x`.
    pub log: bool,
    /// The operational threshold a forecast is checked against, in raw units, if any.
    pub alert: Option<f64>,
}

/// An ordered, versioned list of features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// Which family of data (`host` for the live features, `univariate` for a CSV column).
    pub name: String,
    /// Bumped whenever the list or a transform changes.
    pub version: u32,
    /// The columns.
    pub features: Vec<FeatureSpec>,
}

/// Version of [`Schema::host`]. Bump it when [`Feature::ALL`] or a spec changes.
pub const HOST_SCHEMA_VERSION: u32 = 1;

impl Schema {
    /// The live per-second features of [`Feature::ALL`].
    pub fn host() -> Schema {
        Schema {
            name: "host".into(),
            version: HOST_SCHEMA_VERSION,
            features: Feature::ALL.iter().map(|f| f.spec()).collect(),
        }
    }

    /// One unitless column read as is (a NAB series).
    pub fn univariate() -> Schema {
        Schema {
            name: "univariate".into(),
            version: 1,
            features: vec![FeatureSpec {
                name: "value".into(),
                unit: String::new(),
                log: false,
                alert: None,
            }],
        }
    }

    /// Column count.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether the schema has no column.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// `name@version: a, b, c`, for error messages.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.features.iter().map(|f| f.name.as_str()).collect();
        format!("{}@v{} [{}]", self.name, self.version, names.join(", "))
    }
}
