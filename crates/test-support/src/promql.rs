//! The metric names a PromQL expression reads, so that a test can check every dashboard query
//! and rule against what the services export. A small scanner, not a parser: it knows enough
//! PromQL to skip strings, label matchers, ranges, grouping labels, functions, keywords and
//! numbers. A name given only as `{__name__="…"}` is not found.

use std::collections::BTreeSet;

/// Words that are PromQL syntax, not metric names (when not followed by `(`).
const KEYWORDS: [&str; 13] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Every metric name `expr` selects, e.g. `{"a_total", "b_bucket"}` for
/// `sum by (le) (rate(b_bucket[1m])) / rate(a_total{code="x"}[5m])`.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_to(&chars, i, '}'),
            '[' => i = skip_to(&chars, i, ']'),
            '#' => i = skip_to(&chars, i, '\n'),
            c if c.is_ascii_digit() || (c == '.' && next_is_digit(&chars, i)) => {
                i = skip_while(&chars, i, |c| {
                    c.is_ascii_alphanumeric() || c == '.' || c == '_'
                });
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let end = skip_while(&chars, i, |c| {
                    c.is_ascii_alphanumeric() || c == '_' || c == ':'
                });
                let word: String = chars[i..end].iter().collect();
                let after = skip_while(&chars, end, char::is_whitespace);
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) && chars.get(after) == Some(&'(') {
                    i = skip_to(&chars, after, ')');
                    continue;
                }
                let call = chars.get(after) == Some(&'(') || grouping_follows(&chars, after);
                if !call && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    names
}

/// Whether `by (` or `without (` starts at `i`: the word before it is an aggregation, as in
/// `sum by (le) (…)`.
fn grouping_follows(chars: &[char], i: usize) -> bool {
    let end = skip_while(chars, i, |c| c.is_ascii_alphabetic());
    let word: String = chars[i..end]
        .iter()
        .collect::<String>()
        .to_ascii_lowercase();
    (word == "by" || word == "without")
        && chars.get(skip_while(chars, end, char::is_whitespace)) == Some(&'(')
}

fn next_is_digit(chars: &[char], i: usize) -> bool {
    chars.get(i + 1).is_some_and(char::is_ascii_digit)
}

/// The index after the run of characters from `i` that satisfy `keep`.
fn skip_while(chars: &[char], mut i: usize, keep: impl Fn(char) -> bool) -> usize {
    while i < chars.len() && keep(chars[i]) {
        i += 1;
    }
    i
}

/// The index after the first `close` from `i + 1` on, skipping strings in between.
fn skip_to(chars: &[char], mut i: usize, close: char) -> usize {
    i += 1;
    while i < chars.len() {
        match chars[i] {
            c if c == close => return i + 1,
            '"' | '\'' | '`' => i = skip_string(chars, i),
            _ => i += 1,
        }
    }
    i
}

/// The index after the string literal opening at `i` (backslash escapes, except in raw
/// backtick strings).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn functions_aggregations_and_grouping_labels_are_not_names() {
        assert_eq!(
            names(
                "histogram_quantile(0.99, sum by (le, kind) (rate(agentwire_gateway_delivery_latency_seconds_bucket[$__rate_interval])))"
            ),
            ["agentwire_gateway_delivery_latency_seconds_bucket"]
        );
        assert_eq!(
            names("sum(rate(a_total[5m])) by (instance) / on (instance) group_left (job) b"),
            ["a_total", "b"]
        );
        assert_eq!(names("count without (instance) (x_total)"), ["x_total"]);
    }

    #[test]
    fn label_matchers_strings_and_keywords_are_skipped() {
        assert_eq!(
            names(
                r#"sum by (code) (rate(errors_total{code=~"internal|unavailable", x!="a}b"}[5m])) > 0.1 and on() up == bool 0 or vector(1e3)"#
            ),
            ["errors_total", "up"]
        );
        assert_eq!(
            names(r#"label_replace(lag, "group", "relay", "", "") offset 5m"#),
            ["lag"]
        );
    }

    #[test]
    fn recorded_names_with_colons_and_subqueries_are_names() {
        assert_eq!(
            names("max_over_time(agentwire:relay_consumer_lag:sum[1h:1m]) > .5"),
            ["agentwire:relay_consumer_lag:sum"]
        );
    }
}
