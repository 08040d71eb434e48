//! Anomaly prediction for bpfsight (issue 4 fills this crate).
