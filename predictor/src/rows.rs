//! A scope's recent history: fixed-width rows in one buffer, the oldest overwritten once it
//! is full.
//!
//! The engine keeps 20 minutes of one-second rows for each of its scopes, twice (raw and
//! normalised). As a `VecDeque<Vec<f32>>` every row was its own heap object with a 24-byte
//! header beside it; here a row is its `width` floats and nothing else.

/// Rows of `width` values, at most `cap` of them, oldest first.
#[derive(Clone, Debug)]
pub struct Rows {
    width: usize,
    cap: usize,
    /// `len` rows, row `i` (oldest first) at slot `(start + i) % cap`.
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl Rows {
    /// An empty history of rows `width` wide, keeping the newest `cap`.
    pub fn new(width: usize, cap: usize) -> Rows {
        Rows { width, cap: cap.max(1), buf: Vec::new(), start: 0, len: 0 }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `row` (exactly `width` values), dropping the oldest row when full.
    pub fn push(&mut self, row: &[f32]) {
        assert_eq!(row.len(), self.width, "row width");
        if self.len < self.cap {
            // Filling up: grow by a quarter, not by doubling, since the buffer lives as long
            // as the scope does.
            if self.buf.capacity() - self.buf.len() < self.width {
                let more_rows = (self.len / 4).max(16).min(self.cap - self.len);
                self.buf.reserve_exact(more_rows * self.width);
            }
            self.buf.extend_from_slice(row);
            self.len += 1;
        } else {
            let at = self.start * self.width;
            self.buf[at..at + self.width].copy_from_slice(row);
            self.start = (self.start + 1) % self.cap;
        }
    }

    /// Row `i`, oldest first.
    pub fn get(&self, i: usize) -> &[f32] {
        assert!(i < self.len, "row {i} of {}", self.len);
        let at = (self.start + i) % self.cap * self.width;
        &self.buf[at..at + self.width]
    }

    /// The newest row.
    pub fn last_mut(&mut self) -> Option<&mut [f32]> {
        let i = self.len.checked_sub(1)?;
        let at = (self.start + i) % self.cap * self.width;
        Some(&mut self.buf[at..at + self.width])
    }

    /// The newest `n` rows (all of them if fewer), oldest first.
    pub fn tail(&self, n: usize) -> impl DoubleEndedIterator<Item = &[f32]> + ExactSizeIterator {
        (self.len - n.min(self.len)..self.len).map(|i| self.get(i))
    }

    /// Every row, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &[f32]> + ExactSizeIterator {
        self.tail(self.len)
    }

    /// Rows `f(row)` for every row, same width and capacity.
    pub fn map(&self, f: impl Fn(&[f32]) -> Vec<f32>) -> Rows {
        let mut out = Rows::new(self.width, self.cap);
        out.buf.reserve_exact(self.len * self.width);
        for r in self.iter() {
            out.push(&f(r));
        }
        out
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_rows_in_order_across_the_wrap() {
        let mut rows = Rows::new(2, 3);
        assert!(rows.is_empty() && rows.last_mut().is_none());
        for i in 0..5 {
            rows.push(&[i as f32, -(i as f32)]);
        }
        assert_eq!(rows.len(), 3);
        let seen: Vec<f32> = rows.iter().map(|r| r[0]).collect();
        assert_eq!(seen, [2.0, 3.0, 4.0]);
        assert_eq!(rows.get(0), &[2.0, -2.0]);
        let tail: Vec<f32> = rows.tail(2).map(|r| r[0]).collect();
        assert_eq!(tail, [3.0, 4.0]);
        assert_eq!(rows.tail(10).len(), 3);
        assert_eq!(rows.iter().next_back().unwrap(), &[4.0, -4.0]);
        rows.last_mut().unwrap()[1] = 9.0;
        assert_eq!(rows.get(2), &[4.0, 9.0]);
        let doubled = rows.map(|r| r.iter().map(|v| v * 2.0).collect());
        assert_eq!(doubled.iter().map(|r| r[0]).collect::<Vec<_>>(), [4.0, 6.0, 8.0]);
    }

    #[test]
    fn holds_no_more_than_its_rows() {
        let mut rows = Rows::new(8, 1200);
        for _ in 0..5000 {
            rows.push(&[1.0; 8]);
        }
        assert_eq!(rows.heap_bytes(), 1200 * 8 * 4);
    }
}
