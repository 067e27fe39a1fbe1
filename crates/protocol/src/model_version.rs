//! The version of an enrichment: what produced it, so that subscribers and the relay can tell
//! a re-enrichment by the same model and settings (a replay) from one by a new model or label
//! set (a new annotation).
//!
//! A version reads `<model id>@<8 hex digits>`, the digits a digest of everything besides the
//! model that changes the enricher's output (the label set, its thresholds). The digest is
//! FNV-1a (64 bits, folded to 32) over length-prefixed parts: stable across builds, platforms
//! and releases, so one configuration always has one version.

use std::fmt::Display;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Builds an enrichment version from the parts that determine the enricher's output.
///
/// Each part is a name and a value; parts are digested in the order they are added, so the
/// same configuration must add them in the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelVersion {
    state: u64,
}

impl Default for ModelVersion {
    fn default() -> Self {
        Self { state: FNV_OFFSET }
    }
}

impl ModelVersion {
    /// Adds one part (e.g. `("min_score", 0.25)`, `("label", "billing")`).
    pub fn part(mut self, name: &str, value: impl Display) -> Self {
        self.bytes(name.as_bytes());
        self.bytes(value.to_string().as_bytes());
        self
    }

    /// The version string for `model`: `<model>@<8 hex digits>`.
    pub fn finish(&self, model: &str) -> String {
        let mut digest = *self;
        digest.bytes(model.as_bytes());
        // Truncation intended: the fold keeps 32 bits of the 64-bit digest.
        let folded = ((digest.state >> 32) ^ digest.state) as u32;
        format!("{model}@{folded:08x}")
    }

    /// Length first, so that parts cannot run into each other (`"ab","c"` ≠ `"a","bc"`).
    fn bytes(&mut self, bytes: &[u8]) {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        for byte in len.to_le_bytes().iter().chain(bytes) {
            self.state ^= u64::from(*byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(set: &[(&str, &[&str])], min_score: f32) -> String {
        let mut v = ModelVersion::default();
        for (name, examples) in set {
            v = v.part("label", name);
            for example in *examples {
                v = v.part("example", example);
            }
        }
        v.part("min_score", min_score).finish("m")
    }

    const SET: &[(&str, &[&str])] = &[
        ("billing", &["charged twice", "refund please"]),
        ("sports", &["a hat-trick"]),
    ];

    #[test]
    fn the_same_configuration_has_the_same_version() {
        assert_eq!(labels(SET, 0.25), labels(SET, 0.25));
        // Pinned: a version must never change between releases for the same configuration,
        // or every redrive would send every annotation again (values checked by hand
        // against a separate FNV-1a implementation).
        assert_eq!(labels(SET, 0.25), "m@4a9ce4cf");
        assert_eq!(ModelVersion::default().finish("m"), "m@dd6f2357");
    }

    #[test]
    fn a_changed_label_set_or_threshold_changes_the_version() {
        let base = labels(SET, 0.25);
        let renamed: &[(&str, &[&str])] = &[
            ("billing", &["charged twice", "refund please"]),
            ("sport", &["a hat-trick"]),
        ];
        let new_example: &[(&str, &[&str])] = &[
            ("billing", &["charged twice", "refund please", "an invoice"]),
            ("sports", &["a hat-trick"]),
        ];
        let fewer: &[(&str, &[&str])] = &[("billing", &["charged twice", "refund please"])];
        for other in [
            labels(renamed, 0.25),
            labels(new_example, 0.25),
            labels(fewer, 0.25),
            labels(SET, 0.3),
        ] {
            assert_ne!(other, base);
            assert!(other.starts_with("m@"), "{other}");
        }
        let model = ModelVersion::default().part("label", "a");
        assert_ne!(model.finish("m1"), model.finish("m2"));
    }

    #[test]
    fn parts_do_not_run_into_each_other() {
        let joined = ModelVersion::default()
            .part("label", "ab")
            .part("label", "c");
        let split = ModelVersion::default()
            .part("label", "a")
            .part("label", "bc");
        assert_ne!(joined.finish("m"), split.finish("m"));
        let version = joined.finish("sentence-transformers/all-MiniLM-L6-v2");
        let (model, digits) = version.rsplit_once('@').expect("an @");
        assert_eq!(model, "sentence-transformers/all-MiniLM-L6-v2");
        assert_eq!(digits.len(), 8);
        assert!(digits.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
