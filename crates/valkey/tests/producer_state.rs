//! The producer dedupe script (`lua/producer.lua`) against a model, on a real Valkey: for any
//! sequence of reservations and settlements (what gateways do), every answer is the model's,
//! so no sequence is ever reserved twice without a failed append between, duplicates always
//! name the recorded outcome, and the next expected sequence never has a hole before it.

use std::collections::HashMap;
use std::time::Duration;

use agentwire_protocol::{Offset, ProducerId, Tenant};
use agentwire_test_support::{TestEnv, unique};
use agentwire_valkey::{
    HistorySettings, HistoryStore, Outcome, ProducerSettings, ProducerStore, Reserve, Unsettled,
};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Pending,
    Failed,
    /// Kafka did not confirm it; retries wait (the test's settle time is an hour).
    Unknown,
    Done(Outcome),
}

/// The documented state machine (`docs/protocol.md`, "Idempotent publishing").
#[derive(Debug, Default)]
struct Model {
    epoch: Option<u64>,
    next: u64,
    slots: HashMap<u64, Slot>,
}

impl Model {
    fn reset(&mut self, epoch: u64, next: u64) {
        self.epoch = Some(epoch);
        self.next = next;
        self.slots.clear();
    }

    fn reserve(&mut self, epoch: u64, seq: u64) -> Reserve {
        match self.epoch {
            Some(current) if epoch < current => return Reserve::StaleEpoch { current },
            Some(current) if epoch == current => {}
            _ => self.reset(epoch, 1),
        }
        if seq > self.next {
            return Reserve::Gap {
                expected: self.next,
            };
        }
        if seq == self.next {
            self.slots.insert(seq, Slot::Pending);
            self.next += 1;
            return Reserve::Reserved;
        }
        match self.slots.get(&seq).copied() {
            None => Reserve::TooOld {
                expected: self.next,
            },
            Some(Slot::Failed) => {
                self.slots.insert(seq, Slot::Pending);
                Reserve::Reserved
            }
            Some(Slot::Pending | Slot::Unknown) => Reserve::InFlight,
            Some(Slot::Done(outcome)) => Reserve::Duplicate(outcome),
        }
    }

    fn settle(&mut self, epoch: u64, seq: u64, outcome: Result<Outcome, Unsettled>) {
        match self.epoch {
            Some(current) if current > epoch => return,
            Some(current) if current == epoch => {}
            _ => self.reset(epoch, seq),
        }
        match outcome {
            Ok(outcome) => {
                self.slots.insert(seq, Slot::Done(outcome));
                self.next = self.next.max(seq + 1);
            }
            Err(why) => {
                if self.slots.get(&seq) == Some(&Slot::Pending) {
                    let slot = match why {
                        Unsettled::NotWritten => Slot::Failed,
                        Unsettled::Unknown => Slot::Unknown,
                    };
                    self.slots.insert(seq, slot);
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Reserve {
        epoch: u64,
        seq: u64,
    },
    /// Settles the `index`-th outstanding reservation (modulo their number).
    Settle {
        index: usize,
        /// 0: appended, 1: nothing written, 2: outcome unknown.
        how: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..3, 1u64..7).prop_map(|(epoch, seq)| Op::Reserve { epoch, seq }),
        2 => (any::<usize>(), prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)])
            .prop_map(|(index, how)| Op::Settle { index, how }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_script_answers_as_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let env = TestEnv::from_env();
            let valkey = HistoryStore::connect(&env.valkey_url, HistorySettings::default())
                .await
                .expect("valkey");
            let store = ProducerStore::new(
                valkey.connection(),
                ProducerSettings {
                    window: 1_000,
                    ttl: Duration::from_secs(60),
                    pending_stale: Duration::from_secs(3_600),
                    unknown_settle: Duration::from_secs(3_600),
                },
            );
            let tenant = Tenant::new(unique("t")).expect("tenant");
            let producer = ProducerId::new("p").expect("producer");
            store.mark_ready(&tenant).await.expect("ready");
            let mut model = Model::default();
            let mut outstanding: Vec<(u64, u64)> = Vec::new();
            let mut next_offset = 0u64;
            for op in ops {
                match op {
                    Op::Reserve { epoch, seq } => {
                        let got = store.reserve(&tenant, &producer, epoch, seq).await.expect("reserve");
                        let want = model.reserve(epoch, seq);
                        prop_assert_eq!(got, want, "reserve epoch {} seq {}", epoch, seq);
                        if got == Reserve::Reserved {
                            prop_assert!(!outstanding.contains(&(epoch, seq)), "reserved twice");
                            outstanding.push((epoch, seq));
                        }
                    }
                    Op::Settle { index, how } if !outstanding.is_empty() => {
                        let (epoch, seq) = outstanding.remove(index % outstanding.len());
                        let outcome = match how {
                            0 => {
                                next_offset += 1;
                                Ok(Outcome { partition: 0, offset: Offset(next_offset) })
                            }
                            1 => Err(Unsettled::NotWritten),
                            _ => Err(Unsettled::Unknown),
                        };
                        match outcome {
                            Ok(o) => {
                                store.commit(&tenant, &producer, epoch, seq, o).await.expect("commit");
                            }
                            Err(why) => store.release(&tenant, &producer, epoch, seq, why).await.expect("release"),
                        }
                        model.settle(epoch, seq, outcome);
                    }
                    Op::Settle { .. } => {}
                }
            }
            Ok(())
        })?;
    }
}
