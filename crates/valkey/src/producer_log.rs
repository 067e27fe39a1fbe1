//! Producer states as the log tells them: the records carry `producerid`, `producerepoch` and
//! `producerseq`, so folding them in log order gives what `lua/producer.lua` should hold. The
//! gateway rebuilds states with it after Valkey starts empty; a replay drill compares and
//! repairs them.

use std::collections::{BTreeMap, HashMap};

use agentwire_protocol::ProducerId;

use crate::producers::{Outcome, Restored};

/// Folds log records into producer states: the newest epoch wins, and within it the highest
/// sequence sets `next`; only the newest `window` outcomes are kept.
#[derive(Debug)]
pub struct Accumulator {
    window: usize,
    states: HashMap<ProducerId, (u64, BTreeMap<u64, Outcome>)>,
}

impl Accumulator {
    pub fn new(window: u64) -> Self {
        Self {
            window: usize::try_from(window).unwrap_or(usize::MAX).max(1),
            states: HashMap::new(),
        }
    }

    /// Adds one sequenced record of `producer`.
    pub fn add(&mut self, producer: &ProducerId, epoch: u64, seq: u64, outcome: Outcome) {
        let (known_epoch, outcomes) = self
            .states
            .entry(producer.clone())
            .or_insert_with(|| (epoch, BTreeMap::new()));
        if epoch < *known_epoch {
            return;
        }
        if epoch > *known_epoch {
            *known_epoch = epoch;
            outcomes.clear();
        }
        // A retried record appended twice (before idempotency, or by a takeover that missed
        // the first copy) keeps its first offset: that is the one acked.
        outcomes.entry(seq).or_insert(outcome);
        while outcomes.len() > self.window {
            outcomes.pop_first();
        }
    }

    /// Every producer's state.
    pub fn finish(self) -> Vec<(ProducerId, Restored)> {
        self.states
            .into_iter()
            .map(|(producer, (epoch, outcomes))| {
                let next = outcomes.last_key_value().map_or(1, |(seq, _)| seq + 1);
                let outcomes = outcomes.into_iter().collect();
                (
                    producer,
                    Restored {
                        epoch,
                        next,
                        outcomes,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::Offset;
    use proptest::prelude::*;

    fn at(offset: u64) -> Outcome {
        Outcome {
            partition: 0,
            offset: Offset(offset),
        }
    }

    #[test]
    fn newest_epoch_wins_and_next_follows_the_highest_sequence() {
        let p = ProducerId::new("p1").expect("id");
        let mut acc = Accumulator::new(8);
        acc.add(&p, 1, 1, at(10));
        acc.add(&p, 1, 2, at(11));
        acc.add(&p, 2, 1, at(12));
        acc.add(&p, 1, 3, at(13));
        let states = acc.finish();
        assert_eq!(states.len(), 1);
        let (_, state) = &states[0];
        assert_eq!(state.epoch, 2);
        assert_eq!(state.next, 2);
        assert_eq!(state.outcomes, vec![(1, at(12))]);
    }

    proptest! {
        /// Whatever order and duplication the log holds, the rebuilt state names the newest
        /// epoch, the next sequence after its highest, the first offset of every kept
        /// sequence, and at most `window` of them, the newest.
        #[test]
        fn rebuilt_state_matches_a_model(
            records in prop::collection::vec((0u64..3, 1u64..40), 0..200),
            window in 1u64..16,
        ) {
            let p = ProducerId::new("p").expect("id");
            let mut acc = Accumulator::new(window);
            let mut firsts: BTreeMap<(u64, u64), u64> = BTreeMap::new();
            for (offset, (epoch, seq)) in records.iter().enumerate() {
                let offset = offset as u64;
                acc.add(&p, *epoch, *seq, at(offset));
                firsts.entry((*epoch, *seq)).or_insert(offset);
            }
            let states = acc.finish();
            if records.is_empty() {
                prop_assert!(states.is_empty());
                return Ok(());
            }
            // The epoch a reader ends on: the highest one that was ever seen.
            let top = records.iter().map(|(e, _)| *e).max().unwrap_or(0);
            let seqs: Vec<u64> = firsts.keys().filter(|(e, _)| *e == top).map(|(_, s)| *s).collect();
            let (_, state) = &states[0];
            prop_assert_eq!(state.epoch, top);
            prop_assert_eq!(state.next, seqs.iter().max().map_or(1, |s| s + 1));
            let kept: Vec<u64> = state.outcomes.iter().map(|(s, _)| *s).collect();
            let newest: Vec<u64> = seqs.iter().rev().take(window as usize).rev().copied().collect();
            prop_assert_eq!(&kept, &newest);
            for (seq, outcome) in &state.outcomes {
                // Records of the top epoch seen before it became the top still count: the
                // first offset of that (epoch, seq) in the log.
                prop_assert_eq!(outcome.offset.0, firsts[&(top, *seq)]);
            }
        }
    }
}
