//! Incident memory for bpfsight (issue 5 fills this crate).
