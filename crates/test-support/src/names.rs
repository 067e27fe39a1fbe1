//! Unique names for shared servers: tests running at the same time against the one broker and
//! the one Valkey of `cargo xtask test` must never see each other's topics, keys or groups.

use uuid::Uuid;

/// Longest prefix kept; Kafka allows 249 characters in a topic name.
const MAX_PREFIX: usize = 200;

/// Returns `prefix-xxxxxxxxxxxx`: the prefix, lowercased, with every character outside
/// `[a-z0-9._-]` turned into `-`, then 12 random hex digits.
///
/// The result is valid as a Kafka topic name, a consumer group id and a Valkey key.
pub fn unique(prefix: &str) -> String {
    let mut name: String = prefix
        .chars()
        .take(MAX_PREFIX)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let random = Uuid::new_v4().simple().to_string();
    if !name.is_empty() {
        name.push('-');
    }
    name.push_str(&random[..12]);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(c: char) -> bool {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
    }

    #[test]
    fn keeps_a_clean_prefix_and_appends_twelve_hex_digits() {
        let name = unique("relay.events_v1");
        let (prefix, suffix) = name.rsplit_once('-').expect("a separator");
        assert_eq!(prefix, "relay.events_v1");
        assert_eq!(suffix.len(), 12);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn maps_every_other_character_into_the_allowed_set() {
        let name = unique("Tenant A/Session:Ünïcode*{}");
        assert!(name.chars().all(allowed), "{name}");
        assert!(name.starts_with("tenant-a-session--n-code---"), "{name}");
    }

    #[test]
    fn an_empty_prefix_gives_just_the_random_part() {
        let name = unique("");
        assert_eq!(name.len(), 12);
        assert!(name.chars().all(allowed));
    }

    #[test]
    fn long_prefixes_stay_within_kafka_topic_limits() {
        let name = unique(&"x".repeat(1000));
        assert!(name.len() <= 249, "{}", name.len());
    }

    #[test]
    fn two_calls_never_return_the_same_name() {
        let names: std::collections::HashSet<String> = (0..1000).map(|_| unique("t")).collect();
        assert_eq!(names.len(), 1000);
    }
}
