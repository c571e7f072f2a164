//! Property tests: the boolean operators mean what they say, printing round-trips, and no input
//! makes the parser panic.

use proptest::prelude::*;

use super::ast::Expr;
use super::*;

/// Keys drawn from a small pool (so generated filters and messages overlap), including keys
/// that need quoting and keys that look like keywords.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b-c".to_owned()),
        Just("AND".to_owned()),
        Just("iana.org/tag".to_owned()),
        Just("".to_owned()),
        Just("-x".to_owned()),
        Just("みんな".to_owned()),
    ]
}

/// Values from a small pool of prefixes of each other, plus arbitrary text (quotes, backslashes,
/// control characters and non-ASCII included) to exercise escaping.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["", "c", "co", "com", "x"]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn restriction() -> impl Strategy<Value = Expr> {
    prop_oneof![
        key().prop_map(|key| Expr::Has { key }),
        (key(), value()).prop_map(|(key, value)| Expr::Equals { key, value }),
        (key(), value()).prop_map(|(key, value)| Expr::NotEquals { key, value }),
        (key(), value()).prop_map(|(key, prefix)| Expr::HasPrefix { key, prefix }),
    ]
}

/// Arbitrary well-formed trees (AND/OR with at least two operands).
fn expr() -> impl Strategy<Value = Expr> {
    restriction().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

/// Attribute maps over the same key and value pools.
fn attributes() -> impl Strategy<Value = Attributes> {
    prop::collection::hash_map(key(), value(), 0..5)
}

fn filter_of(root: Expr) -> Filter {
    Filter { root }
}

proptest! {
    #[test]
    fn display_round_trips(root in expr()) {
        let f = filter_of(root);
        let text = f.to_string();
        let parsed = Filter::parse_unbounded(&text);
        prop_assert_eq!(parsed, Ok(f), "text: {}", text);
    }

    #[test]
    fn not_is_complement(root in expr(), attrs in attributes()) {
        let f = filter_of(root.clone());
        let negated = filter_of(Expr::Not(Box::new(root)));
        prop_assert_eq!(negated.matches(&attrs), !f.matches(&attrs));
    }

    #[test]
    fn and_is_all_or_is_any(operands in prop::collection::vec(expr(), 2..4), attrs in attributes()) {
        let each: Vec<bool> =
            operands.iter().map(|e| filter_of(e.clone()).matches(&attrs)).collect();
        let all = filter_of(Expr::And(operands.clone())).matches(&attrs);
        let any = filter_of(Expr::Or(operands)).matches(&attrs);
        prop_assert_eq!(all, each.iter().all(|m| *m));
        prop_assert_eq!(any, each.iter().any(|m| *m));
    }

    #[test]
    fn not_equals_is_not_of_equals(key in key(), value in value(), attrs in attributes()) {
        let eq = Expr::Equals { key: key.clone(), value: value.clone() };
        let ne = Expr::NotEquals { key, value };
        prop_assert_eq!(ne.matches(&attrs), !eq.matches(&attrs));
    }

    #[test]
    fn equals_implies_prefix_implies_has(key in key(), value in value(), attrs in attributes()) {
        let eq = Expr::Equals { key: key.clone(), value: value.clone() };
        let prefix = Expr::HasPrefix { key: key.clone(), prefix: value };
        let has = Expr::Has { key: key.clone() };
        prop_assert!(!eq.matches(&attrs) || prefix.matches(&attrs));
        prop_assert!(!prefix.matches(&attrs) || has.matches(&attrs));
        let empty_prefix = Expr::HasPrefix { key, prefix: String::new() };
        prop_assert_eq!(empty_prefix.matches(&attrs), has.matches(&attrs));
    }

    #[test]
    fn parse_never_panics_and_errors_point_inside(src in ".{0,300}") {
        match Filter::parse(&src) {
            Ok(f) => {
                prop_assert!(src.len() <= MAX_FILTER_BYTES);
                prop_assert_eq!(Filter::parse_unbounded(&f.to_string()), Ok(f));
            }
            Err(e) => prop_assert!(e.position <= src.len(), "{} for {:?}", e, src),
        }
    }

    #[test]
    fn parse_never_panics_on_filter_like_text(
        parts in prop::collection::vec(
            prop::sample::select(vec![
                "attributes", ".", ":", "a", "\"v\"", "'w'", "=", "!=", " ", "AND", "OR", "NOT",
                "-", "(", ")", "hasPrefix", ",", "\\", "\"", "\\u00e9",
            ]),
            0..30,
        ),
    ) {
        let src: String = parts.concat();
        match Filter::parse(&src) {
            Ok(f) => prop_assert_eq!(Filter::parse_unbounded(&f.to_string()), Ok(f)),
            Err(e) => prop_assert!(e.position <= src.len(), "{} for {:?}", e, src),
        }
    }
}
