//! One followed session's delivery cursor: the rule that makes delivery exactly-once per
//! connection. An event is delivered only if its offset is strictly greater than the cursor,
//! which then moves to it; history and live messages may overlap at the seam, after a lag or
//! after a feed resync, and the cursor drops the overlap.

use agentwire_protocol::Offset;

/// Whether an event reaches the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// At or below the cursor: already delivered (or before the resume point).
    Duplicate,
}

/// One followed session's delivery cursor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The last offset delivered (or resumed after); `None` before the first event.
    last: Option<Offset>,
}

impl Cursor {
    pub fn new(after: Option<Offset>) -> Self {
        Self { last: after }
    }

    /// Delivers `offset` if it is after the cursor, moving the cursor to it.
    pub fn admit(&mut self, offset: Offset) -> Verdict {
        if self.last.is_some_and(|last| offset <= last) {
            return Verdict::Duplicate;
        }
        self.last = Some(offset);
        Verdict::Deliver
    }

    pub fn last(&self) -> Option<Offset> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever order and repetition history and live messages arrive in, what is
        /// delivered is strictly increasing and above the resume point.
        #[test]
        fn deliveries_strictly_increase(after in proptest::option::of(0u64..50), offsets in proptest::collection::vec(0u64..100, 0..200)) {
            let mut cursor = Cursor::new(after.map(Offset));
            let mut last = after;
            for o in offsets {
                if cursor.admit(Offset(o)) == Verdict::Deliver {
                    prop_assert!(last.is_none_or(|l| o > l));
                    last = Some(o);
                }
            }
            prop_assert_eq!(cursor.last(), last.map(Offset));
        }
    }
}
