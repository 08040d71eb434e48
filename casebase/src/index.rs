//! A cosine nearest-neighbour index over `f32` vectors, backed by usearch (HNSW).

use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::Error;

/// Nearest-neighbour index; keys are the caller's dense incident numbers.
pub struct VectorIndex {
    index: Index,
    dimensions: usize,
}

/// Search effort: higher finds the true neighbours more often and costs more time.
const EXPANSION_SEARCH: usize = 128;

impl VectorIndex {
    /// An empty index for vectors of `dimensions`.
    pub fn new(dimensions: usize) -> Result<Self, Error> {
        let options = IndexOptions {
            dimensions,
            metric: MetricKind::Cos,
            quantization: ScalarKind::F32,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: EXPANSION_SEARCH,
            multi: false,
        };
        let index = Index::new(&options).map_err(Error::index)?;
        index.reserve(64).map_err(Error::index)?;
        Ok(VectorIndex { index, dimensions })
    }

    /// Loads an index saved by [`VectorIndex::save`], checking its dimensions.
    pub fn load(path: &Path, dimensions: usize) -> Result<Self, Error> {
        let index = Index::restore(&path.to_string_lossy()).map_err(Error::index)?;
        if index.dimensions() != dimensions {
            return Err(Error::Index(format!(
                "{} has {} dimensions, expected {dimensions}",
                path.display(),
                index.dimensions()
            )));
        }
        index.change_expansion_search(EXPANSION_SEARCH);
        Ok(VectorIndex { index, dimensions })
    }

    /// Writes the index to `path` (not atomically: callers write to a fresh name).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        self.index.save(&path.to_string_lossy()).map_err(Error::index)
    }

    /// Makes room for `capacity` vectors, so that adds from several threads need no growth.
    pub fn reserve(&self, capacity: usize) -> Result<(), Error> {
        self.index.reserve(capacity).map_err(Error::index)
    }

    /// Adds `vector` under `key`, growing capacity geometrically.
    pub fn add(&self, key: u64, vector: &[f32]) -> Result<(), Error> {
        if vector.len() != self.dimensions {
            return Err(Error::Index(format!(
                "vector has {} dimensions, expected {}",
                vector.len(),
                self.dimensions
            )));
        }
        if self.index.size() + 1 > self.index.capacity() {
            self.index.reserve((self.index.capacity() * 2).max(64)).map_err(Error::index)?;
        }
        self.index.add(key, vector).map_err(Error::index)
    }

    /// Up to `count` nearest keys that pass `filter`, with cosine similarity, best first.
    pub fn search(
        &self,
        query: &[f32],
        count: usize,
        filter: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>, Error> {
        if self.index.size() == 0 || count == 0 {
            return Ok(Vec::new());
        }
        let m = self.index.filtered_search(query, count, filter).map_err(Error::index)?;
        Ok(m.keys.into_iter().zip(m.distances).map(|(k, d)| (k, 1.0 - d)).collect())
    }

    /// The exact `count` nearest keys, by brute force (for measuring recall).
    pub fn exact_search(&self, query: &[f32], count: usize) -> Result<Vec<(u64, f32)>, Error> {
        let m = self.index.exact_search(query, count).map_err(Error::index)?;
        Ok(m.keys.into_iter().zip(m.distances).map(|(k, d)| (k, 1.0 - d)).collect())
    }

    /// The stored vector of `key`.
    pub fn get(&self, key: u64) -> Option<Vec<f32>> {
        let mut v = vec![0.0f32; self.dimensions];
        match self.index.get(key, &mut v) {
            Ok(n) if n > 0 => Some(v),
            _ => None,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the index uses.
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
    }
}
