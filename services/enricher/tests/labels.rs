//! The default label set (`infra/labels.toml`) on clearly topical sentences, and near-duplicate
//! scores, with the real model on the CPU backend.

use std::path::PathBuf;

use agentwire_enricher::labels::LabelSet;
use agentwire_enricher::{DeviceChoice, Embedder, ModelFiles, cosine};

fn default_labels() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../infra/labels.toml")
}

#[test]
fn topical_sentences_get_their_label_first() {
    let embedder =
        Embedder::load(&ModelFiles::locate().expect("model"), DeviceChoice::Cpu).expect("load");
    let labels = LabelSet::load(&default_labels(), &embedder, 0.25, 3).expect("labels");
    let cases = [
        (
            "sports",
            "The striker scored a hat-trick in the second half of the final.",
        ),
        (
            "sports",
            "Score: Lakers 112, Celtics 108 after overtime in Boston.",
        ),
        (
            "finance",
            "Shares of the chipmaker fell 8% after the earnings call.",
        ),
        (
            "finance",
            "The central bank raised interest rates by 25 basis points today.",
        ),
        (
            "technology",
            "Our GPU cluster now runs the new transformer model twice as fast.",
        ),
        (
            "billing",
            "My credit card was charged twice for the same subscription this month.",
        ),
        (
            "billing",
            "Refund the customer's last invoice and email them a receipt.",
        ),
        (
            "incident",
            "The deployment to production failed because the database migration timed out.",
        ),
        (
            "account",
            "Please reset my password, I cannot log in to the dashboard.",
        ),
        (
            "shipping",
            "Order #A-1029-XZ shipped on 2026-11-24 and the tracking number was emailed.",
        ),
    ];
    let texts: Vec<&str> = cases.iter().map(|(_, t)| *t).collect();
    let embeddings = embedder.embed(&texts).expect("embed");
    for ((expected, text), embedding) in cases.iter().zip(&embeddings) {
        let scored = labels.score(embedding);
        assert!(
            !scored.is_empty(),
            "no label reached the minimum for {text:?}"
        );
        assert_eq!(scored[0].label, *expected, "{text:?} scored {scored:?}");
    }
}

#[test]
fn paraphrases_are_near_duplicates_and_other_topics_are_not() {
    let embedder =
        Embedder::load(&ModelFiles::locate().expect("model"), DeviceChoice::Cpu).expect("load");
    let e = embedder
        .embed(&[
            "The deployment to production failed because the database migration timed out.",
            "The deployment to production failed since the database migration timed out.",
            "The striker scored a hat-trick in the second half of the final.",
        ])
        .expect("embed");
    let paraphrase = cosine(&e[0], &e[1]);
    let unrelated = cosine(&e[0], &e[2]);
    assert!(paraphrase >= 0.95, "paraphrase cosine {paraphrase}");
    assert!(unrelated < 0.5, "unrelated cosine {unrelated}");
}
