//! Parity with sentence-transformers on every backend this machine has: token ids equal,
//! cosine ≥ 0.999 per case, one sentence at a time and all in one padded batch.

use agentwire_enricher::device::{self, Adapter, DeviceChoice};
use agentwire_enricher::golden::{self, Case, Golden};
use agentwire_enricher::tokenize::SentenceTokenizer;
use agentwire_enricher::{DIM, Embedder, ModelFiles};

fn files() -> ModelFiles {
    ModelFiles::locate().expect("model files (cargo xtask deps fetches them)")
}

fn fixture() -> Golden {
    Golden::load(&Golden::default_path()).expect("golden fixture")
}

#[test]
fn token_ids_match_sentence_transformers_exactly() {
    let golden = fixture();
    assert_eq!(golden.cases.len(), 32);
    let tokenizer = SentenceTokenizer::from_file(&files().tokenizer()).expect("tokenizer");
    for case in &golden.cases {
        let ids = tokenizer.ids(&case.text).expect("encode");
        assert_eq!(ids, case.token_ids, "token ids of {:?}", case.text);
    }
}

fn assert_parity(embedder: &Embedder, cases: &[&Case]) {
    let results = golden::check(embedder, cases).expect("embed");
    assert_eq!(results.len(), cases.len());
    for r in &results {
        eprintln!(
            "{}: batched {:.6} alone {:.6} padding {:.6} {:?}",
            embedder.adapter().label(),
            r.batched,
            r.alone,
            r.padding,
            r.text
        );
    }
    let failed: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
    assert!(failed.is_empty(), "{}: {failed:#?}", embedder.adapter());
}

#[test]
fn cpu_backend_matches_every_golden_case() {
    let golden = fixture();
    assert_eq!(golden.dim, DIM);
    let embedder = Embedder::load(&files(), DeviceChoice::Cpu).expect("load on cpu");
    assert_eq!(embedder.adapter(), &Adapter::Cpu);
    let cases: Vec<&Case> = golden.cases.iter().collect();
    assert_parity(&embedder, &cases);
}

/// wgpu on whatever adapter exists: a hardware GPU (every case), or Mesa's lavapipe in CI
/// (slow, so a few: short, empty, unicode, emoji, and one truncated at 256 tokens).
/// `cargo xtask test` installs lavapipe and sets `AGENTWIRE_REQUIRE_WGPU=1`, so there a
/// missing adapter fails instead of skipping.
#[test]
fn wgpu_backend_matches_golden_cases() {
    let golden = fixture();
    let (device, adapter) = match device::open(DeviceChoice::Gpu) {
        Ok(opened) => opened,
        Err(error) => {
            assert!(
                std::env::var_os("AGENTWIRE_REQUIRE_WGPU").is_none(),
                "no wgpu adapter, but AGENTWIRE_REQUIRE_WGPU is set: {error}"
            );
            eprintln!("SKIPPED: no wgpu adapter on this machine ({error})");
            return;
        }
    };
    eprintln!("wgpu parity on {adapter}");
    let embedder = Embedder::load_on(&files(), device, adapter).expect("load on wgpu");
    let cases: Vec<&Case> = if embedder.adapter().is_hardware_gpu() {
        golden.cases.iter().collect()
    } else {
        [0usize, 3, 22, 25, 30]
            .iter()
            .map(|&i| &golden.cases[i])
            .collect()
    };
    assert_parity(&embedder, &cases);
}
