//! Near-duplicate detection within a session: each session keeps its last few embeddings
//! (bounded per session, and a bounded number of sessions, least recently used evicted);
//! an event whose cosine with an earlier one reaches the threshold is a duplicate of it.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use agentwire_protocol::{Offset, SessionKey};
use lru::LruCache;

use crate::embedder::cosine;

#[derive(Debug)]
pub struct SessionMemory {
    sessions: LruCache<SessionKey, VecDeque<(Offset, Vec<f32>)>>,
    per_session: usize,
    threshold: f32,
}

/// An earlier event this one nearly repeats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Duplicate {
    pub of: Offset,
    pub score: f32,
}

impl SessionMemory {
    pub fn new(sessions: NonZeroUsize, per_session: usize, threshold: f32) -> Self {
        Self {
            sessions: LruCache::new(sessions),
            per_session,
            threshold,
        }
    }

    /// Compares `embedding` with the session's remembered events before `offset` (a replayed
    /// event never matches itself or later ones), returns the closest at or above the
    /// threshold, and remembers this one.
    pub fn observe(
        &mut self,
        session: &SessionKey,
        offset: Offset,
        embedding: &[f32],
    ) -> Option<Duplicate> {
        let recent = self
            .sessions
            .get_or_insert_mut(session.clone(), VecDeque::new);
        let best = recent
            .iter()
            .filter(|(seen, _)| *seen < offset)
            .map(|(seen, e)| Duplicate {
                of: *seen,
                score: cosine(embedding, e),
            })
            .filter(|d| d.score >= self.threshold)
            .max_by(|a, b| a.score.total_cmp(&b.score));
        if !recent.iter().any(|(seen, _)| *seen == offset) {
            recent.push_back((offset, embedding.to_vec()));
            while recent.len() > self.per_session {
                recent.pop_front();
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SessionKey {
        s.parse().expect("key")
    }

    fn memory() -> SessionMemory {
        SessionMemory::new(NonZeroUsize::new(2).expect("2"), 2, 0.9)
    }

    #[test]
    fn finds_the_closest_earlier_event_of_the_same_session_only() {
        let mut m = memory();
        let (a, b) = (key("t:a:1"), key("t:a:2"));
        assert_eq!(m.observe(&a, Offset(1), &[1.0, 0.0]), None);
        assert_eq!(m.observe(&b, Offset(2), &[0.0, 1.0]), None);
        let d = m.observe(&a, Offset(3), &[0.99, 0.05]).expect("duplicate");
        assert_eq!(d.of, Offset(1));
        assert_eq!(m.observe(&b, Offset(4), &[1.0, 0.0]), None, "other session");
    }

    #[test]
    fn a_replayed_event_never_matches_itself_or_later_events() {
        let mut m = memory();
        let s = key("t:a:1");
        m.observe(&s, Offset(5), &[1.0, 0.0]);
        m.observe(&s, Offset(6), &[0.0, 1.0]);
        assert_eq!(m.observe(&s, Offset(5), &[1.0, 0.0]), None);
    }

    #[test]
    fn memory_is_bounded_per_session_and_in_sessions() {
        let mut m = memory();
        let s = key("t:a:1");
        m.observe(&s, Offset(1), &[1.0, 0.0]);
        m.observe(&s, Offset(2), &[0.0, 1.0]);
        m.observe(&s, Offset(3), &[0.0, -1.0]);
        assert_eq!(
            m.observe(&s, Offset(4), &[1.0, 0.0]),
            None,
            "offset 1 fell out"
        );
        m.observe(&key("t:a:2"), Offset(5), &[1.0, 0.0]);
        m.observe(&key("t:a:3"), Offset(6), &[1.0, 0.0]);
        assert_eq!(
            m.observe(&s, Offset(7), &[0.0, -1.0]),
            None,
            "session evicted"
        );
    }
}
