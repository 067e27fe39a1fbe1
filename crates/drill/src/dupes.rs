//! Finding keys that occur twice in a stream of any length with bounded memory: keys are
//! buffered, sorted and spilled to temporary files in runs, and the runs are merged at the
//! end; equal neighbours are duplicates. Used for event ids and producer sequences.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{BufReader, BufWriter, Read as _, Seek as _, SeekFrom, Write as _};

use crate::error::DrillError;

/// Where a key was seen.
pub type At = (i32, u64);

/// One entry: the key, then its partition and offset.
type Entry = (u128, i32, u64);

const ENTRY_BYTES: usize = 16 + 4 + 8;

/// Collects keys; [`DuplicateFinder::finish`] names every key seen more than once.
#[derive(Debug)]
pub struct DuplicateFinder {
    buffer: Vec<Entry>,
    capacity: usize,
    runs: Vec<std::fs::File>,
}

/// A key seen twice: where first, and where again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub key: u128,
    pub first: At,
    pub again: At,
}

impl DuplicateFinder {
    /// Keeps at most `capacity` keys in memory (28 bytes each, plus the sort's).
    pub fn new(capacity: usize) -> Self {
        Self {
            buffer: Vec::new(),
            capacity: capacity.max(1),
            runs: Vec::new(),
        }
    }

    pub fn add(&mut self, key: u128, at: At) -> Result<(), DrillError> {
        self.buffer.push((key, at.0, at.1));
        if self.buffer.len() >= self.capacity {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<(), DrillError> {
        self.buffer.sort_unstable();
        let file = tempfile::tempfile().map_err(DrillError::io("create a temporary run file"))?;
        let mut out = BufWriter::new(file);
        for (key, partition, offset) in self.buffer.drain(..) {
            out.write_all(&key.to_le_bytes())
                .and_then(|()| out.write_all(&partition.to_le_bytes()))
                .and_then(|()| out.write_all(&offset.to_le_bytes()))
                .map_err(DrillError::io("write a run file"))?;
        }
        let mut file = out
            .into_inner()
            .map_err(|e| DrillError::io("flush a run file")(e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .map_err(DrillError::io("rewind a run file"))?;
        self.runs.push(file);
        Ok(())
    }

    /// Every duplicate, in key order, handed to `found` (the first occurrence is the lowest
    /// partition and offset).
    pub fn finish(mut self, mut found: impl FnMut(Duplicate)) -> Result<(), DrillError> {
        if self.runs.is_empty() {
            self.buffer.sort_unstable();
            report(self.buffer.into_iter().map(Ok), &mut found)
        } else {
            if !self.buffer.is_empty() {
                self.spill()?;
            }
            let readers: Vec<RunReader> = self
                .runs
                .into_iter()
                .map(|f| RunReader(BufReader::with_capacity(64 * 1024, f)))
                .collect();
            report(Merge::new(readers)?, &mut found)
        }
    }
}

fn report(
    sorted: impl Iterator<Item = Result<Entry, DrillError>>,
    found: &mut impl FnMut(Duplicate),
) -> Result<(), DrillError> {
    let mut first: Option<Entry> = None;
    for entry in sorted {
        let entry = entry?;
        match first {
            Some(f) if f.0 == entry.0 => found(Duplicate {
                key: entry.0,
                first: (f.1, f.2),
                again: (entry.1, entry.2),
            }),
            _ => first = Some(entry),
        }
    }
    Ok(())
}

struct RunReader(BufReader<std::fs::File>);

impl RunReader {
    fn next(&mut self) -> Result<Option<Entry>, DrillError> {
        let mut bytes = [0u8; ENTRY_BYTES];
        match self.0.read_exact(&mut bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(DrillError::io("read a run file")(e)),
        }
        let (key, rest) = bytes.split_at(16);
        let (partition, offset) = rest.split_at(4);
        let key = u128::from_le_bytes(key.try_into().unwrap_or_default());
        let partition = i32::from_le_bytes(partition.try_into().unwrap_or_default());
        let offset = u64::from_le_bytes(offset.try_into().unwrap_or_default());
        Ok(Some((key, partition, offset)))
    }
}

/// A k-way merge of sorted runs.
struct Merge {
    readers: Vec<RunReader>,
    heap: BinaryHeap<Reverse<(Entry, usize)>>,
}

impl Merge {
    fn new(mut readers: Vec<RunReader>) -> Result<Self, DrillError> {
        let mut heap = BinaryHeap::new();
        for (i, reader) in readers.iter_mut().enumerate() {
            if let Some(entry) = reader.next()? {
                heap.push(Reverse((entry, i)));
            }
        }
        Ok(Self { readers, heap })
    }
}

impl Iterator for Merge {
    type Item = Result<Entry, DrillError>;

    fn next(&mut self) -> Option<Self::Item> {
        let Reverse((entry, i)) = self.heap.pop()?;
        match self.readers.get_mut(i).map(RunReader::next) {
            Some(Ok(Some(next))) => self.heap.push(Reverse((next, i))),
            Some(Err(e)) => return Some(Err(e)),
            _ => {}
        }
        Some(Ok(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn duplicates(keys: &[u128], capacity: usize) -> Vec<Duplicate> {
        let mut finder = DuplicateFinder::new(capacity);
        for (i, key) in keys.iter().enumerate() {
            finder.add(*key, (0, i as u64)).expect("add");
        }
        let mut out = Vec::new();
        finder.finish(|d| out.push(d)).expect("finish");
        out
    }

    proptest! {
        /// Spilling to runs finds exactly what an in-memory count finds, each later
        /// occurrence paired with the first.
        #[test]
        fn runs_find_what_memory_finds(keys in prop::collection::vec(0u128..50, 0..400), capacity in 1usize..64) {
            let mut firsts: HashMap<u128, u64> = HashMap::new();
            let mut expected = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                match firsts.get(key) {
                    Some(first) => expected.push(Duplicate { key: *key, first: (0, *first), again: (0, i as u64) }),
                    None => { firsts.insert(*key, i as u64); }
                }
            }
            expected.sort_by_key(|d| (d.key, d.again));
            prop_assert_eq!(duplicates(&keys, capacity), expected.clone());
            prop_assert_eq!(duplicates(&keys, 1_000_000), expected);
        }
    }
}
