//! Unit tests: every construct, every rule and every error of the filter language.

use super::*;

/// Attributes from `(key, value)` pairs.
fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Parses text that must be valid.
fn filter(src: &str) -> Filter {
    Filter::parse(src).unwrap_or_else(|e| panic!("{src:?} should parse: {e}"))
}

/// Parses text that must be invalid and returns the error.
fn error(src: &str) -> FilterError {
    match Filter::parse(src) {
        Ok(f) => panic!("{src:?} should not parse, got {f:?}"),
        Err(e) => e,
    }
}

/// Asserts that `src` fails at `position` with a message containing `fragment`.
#[track_caller]
fn assert_error(src: &str, position: usize, fragment: &str) {
    let e = error(src);
    assert_eq!(e.position, position, "position for {src:?}: {e}");
    assert!(
        e.message.contains(fragment),
        "message for {src:?} should contain {fragment:?}: {e}"
    );
}

/// Which of the sample messages (by index) a filter lets through.
fn selected(src: &str) -> Vec<usize> {
    let samples = [
        attrs(&[("lang", "en"), ("name", "com")]),
        attrs(&[("lang", "en"), ("name", "net")]),
        attrs(&[("lang", "fr"), ("name", "co")]),
        attrs(&[("lang", "jp")]),
        attrs(&[("name", "com")]),
        attrs(&[]),
        attrs(&[("iana.org/language_tag", "en"), ("name", "org")]),
    ];
    let f = filter(src);
    samples
        .iter()
        .enumerate()
        .filter(|(_, a)| f.matches(a))
        .map(|(i, _)| i)
        .collect()
}

// ---- constructs and their meaning -------------------------------------------------------------

#[test]
fn has_key() {
    assert_eq!(selected("attributes:name"), [0, 1, 2, 4, 6]);
    assert_eq!(selected("attributes:lang"), [0, 1, 2, 3]);
}

#[test]
fn equals_needs_key_and_exact_value() {
    assert_eq!(selected(r#"attributes.name = "com""#), [0, 4]);
    assert_eq!(selected(r#"attributes.name = "co""#), [2]);
    assert_eq!(selected(r#"attributes.name = "COM""#), Vec::<usize>::new());
}

#[test]
fn not_equals_matches_missing_attributes() {
    assert_eq!(selected(r#"attributes.name != "com""#), [1, 2, 3, 5, 6]);
}

#[test]
fn has_prefix_needs_key() {
    assert_eq!(selected(r#"hasPrefix(attributes.name, "co")"#), [0, 2, 4]);
    assert_eq!(
        selected(r#"hasPrefix(attributes.name, "")"#),
        [0, 1, 2, 4, 6]
    );
    assert_eq!(
        selected(r#"hasPrefix(attributes.name, "c*")"#),
        Vec::<usize>::new()
    );
}

#[test]
fn negation() {
    assert_eq!(selected("NOT attributes:name"), [3, 5]);
    assert_eq!(selected("-attributes:name"), [3, 5]);
    assert_eq!(
        selected(r#"NOT hasPrefix(attributes.name, "co")"#),
        [1, 3, 5, 6]
    );
    assert_eq!(selected(r#"-attributes.lang = "en""#), [2, 3, 4, 5, 6]);
    assert_eq!(selected("NOT (NOT attributes:lang)"), [0, 1, 2, 3]);
    assert_eq!(selected("-(-attributes:lang)"), [0, 1, 2, 3]);
}

#[test]
fn conjunction_and_disjunction() {
    assert_eq!(
        selected(r#"attributes:lang AND attributes.name = "com""#),
        [0]
    );
    assert_eq!(
        selected(
            r#"attributes.lang = "jp" OR attributes.name = "net" OR attributes:"iana.org/language_tag""#
        ),
        [1, 3, 6]
    );
    assert_eq!(
        selected(r#"attributes:lang AND attributes:name AND NOT attributes.lang = "en""#),
        [2]
    );
}

#[test]
fn not_binds_tighter_than_and_or() {
    assert_eq!(
        selected(r#"NOT attributes:lang AND attributes:name"#),
        [4, 6]
    );
    assert_eq!(
        selected("NOT attributes:lang OR attributes:name"),
        [0, 1, 2, 4, 5, 6]
    );
}

#[test]
fn parentheses_group() {
    assert_eq!(
        selected(r#"attributes:lang AND (attributes.name = "net" OR attributes.name = "co")"#),
        [1, 2]
    );
    assert_eq!(
        selected(
            r#"(attributes.lang = "en" AND attributes.name = "com") OR attributes:"iana.org/language_tag""#
        ),
        [0, 6]
    );
    assert_eq!(
        selected(r#"NOT (attributes:name OR attributes.lang = "jp")"#),
        [5]
    );
    assert_eq!(selected("((attributes:lang))"), [0, 1, 2, 3]);
}

#[test]
fn quoted_keys() {
    assert_eq!(selected(r#"attributes:"iana.org/language_tag""#), [6]);
    assert_eq!(
        selected(r#"attributes."iana.org/language_tag" = "en""#),
        [6]
    );
    assert_eq!(
        selected(r#"hasPrefix(attributes."iana.org/language_tag", "e")"#),
        [6]
    );
    assert_eq!(selected(r#"attributes:'name'"#), [0, 1, 2, 4, 6]);
    assert_eq!(filter(r#"attributes:"name""#), filter("attributes:name"));
}

#[test]
fn bare_keys_allow_hyphens_underscores_and_digits() {
    let f = filter(r#"attributes.ce-type = "x" AND attributes:_k9 AND attributes:9lives"#);
    assert!(f.matches(&attrs(&[("ce-type", "x"), ("_k9", ""), ("9lives", "")])));
    assert!(!f.matches(&attrs(&[("ce-type", "x"), ("_k9", "")])));
}

#[test]
fn keywords_can_be_keys() {
    let f = filter(r#"attributes:AND AND attributes.NOT = "OR""#);
    assert!(f.matches(&attrs(&[("AND", ""), ("NOT", "OR")])));
    assert!(!f.matches(&attrs(&[("AND", "")])));
}

#[test]
fn keys_and_values_are_case_sensitive() {
    let f = filter(r#"attributes.Name = "Com""#);
    assert!(f.matches(&attrs(&[("Name", "Com")])));
    assert!(!f.matches(&attrs(&[("name", "Com")])));
    assert!(!f.matches(&attrs(&[("Name", "com")])));
}

#[test]
fn whitespace_is_free_around_comparators_and_parentheses() {
    let compact = filter(r#"attributes.a="x" AND (attributes:b OR attributes.c!="y")"#);
    let spaced =
        filter(" \t attributes.a  =  \"x\"\nAND\r\n(  attributes : b OR attributes.c != \"y\" ) ");
    assert_eq!(compact, spaced);
    assert_eq!(
        filter(r#"hasPrefix( attributes.a , "p" )"#),
        filter(r#"hasPrefix(attributes.a,"p")"#)
    );
}

#[test]
fn string_escapes() {
    let cases = [
        (r#""\"q\"""#, "\"q\""),
        (r#""\\""#, "\\"),
        (r#""\'\?\`""#, "'?`"),
        (r#""\a\b\f\n\r\t\v""#, "\u{07}\u{08}\u{0C}\n\r\t\u{0B}"),
        (r#""\x41\X42""#, "AB"),
        (r#""\101\060""#, "A0"),
        (r#""\u307F\u3093\u306A""#, "みんな"),
        (r#""\U0001F600""#, "😀"),
        (r#"'it"s'"#, "it\"s"),
        (r#"'\''"#, "'"),
        (r#""みんな""#, "みんな"),
    ];
    for (literal, expected) in cases {
        let f = filter(&format!("attributes.k = {literal}"));
        assert!(
            f.matches(&attrs(&[("k", expected)])),
            "{literal} should mean {expected:?}"
        );
        let g = filter(&format!("attributes:{literal}"));
        assert!(
            g.matches(&attrs(&[(expected, "")])),
            "key {literal} should mean {expected:?}"
        );
    }
}

#[test]
fn from_str_is_parse() {
    let parsed: Filter = "attributes:a".parse().expect("valid");
    assert_eq!(parsed, filter("attributes:a"));
    assert_eq!("".parse::<Filter>(), Filter::parse(""));
}

#[test]
fn max_length_is_inclusive() {
    let prefix = "attributes.k = \"";
    let fill = MAX_FILTER_BYTES - prefix.len() - 1;
    let exact = format!("{prefix}{}\"", "v".repeat(fill));
    assert_eq!(exact.len(), MAX_FILTER_BYTES);
    let f = filter(&exact);
    assert!(f.matches(&attrs(&[("k", &"v".repeat(fill))])));

    let over = format!("{prefix}{}\"", "v".repeat(fill + 1));
    let e = error(&over);
    assert_eq!(e.position, MAX_FILTER_BYTES);
    assert_eq!(
        e.message,
        format!("the filter is 257 bytes long; the maximum is {MAX_FILTER_BYTES} bytes")
    );
}

#[test]
fn max_length_counts_bytes_not_characters() {
    // 'み' is three bytes: 86 of them are 258 bytes although only 86 characters.
    let key = "み".repeat(86);
    let e = error(&format!("attributes:\"{key}\""));
    assert_eq!(e.position, MAX_FILTER_BYTES);
}

#[test]
fn display_is_canonical_and_parses_back() {
    let cases = [
        ("attributes:a", "attributes:a"),
        ("attributes : \"a.b\"", "attributes:\"a.b\""),
        ("attributes.a=\"x\"", "attributes.a = \"x\""),
        ("attributes.a!='x'", "attributes.a != \"x\""),
        (
            "hasPrefix(attributes.a,\"p\")",
            "hasPrefix(attributes.a, \"p\")",
        ),
        ("-attributes:a", "NOT attributes:a"),
        (
            "NOT (attributes:a OR attributes:b)",
            "NOT (attributes:a OR attributes:b)",
        ),
        ("-(-attributes:a)", "NOT (NOT attributes:a)"),
        ("(attributes:a)", "attributes:a"),
        (
            "(attributes:a AND attributes:b) AND attributes:c",
            "(attributes:a AND attributes:b) AND attributes:c",
        ),
        (
            "attributes:a OR (attributes:b AND NOT attributes:c)",
            "attributes:a OR (attributes:b AND NOT attributes:c)",
        ),
        ("attributes:\"\"", "attributes:\"\""),
        ("attributes:\"-a\"", "attributes:\"-a\""),
        (
            r#"attributes.k = "q\"b\\n\n\t\r\x01""#,
            r#"attributes.k = "q\"b\\n\n\t\r\u0001""#,
        ),
    ];
    for (src, canonical) in cases {
        let f = filter(src);
        assert_eq!(f.to_string(), canonical, "canonical form of {src:?}");
        assert_eq!(filter(canonical), f, "{canonical:?} should parse back");
    }
}

// ---- errors -----------------------------------------------------------------------------------

#[test]
fn error_display_names_position_and_expectation() {
    let e = error("attributes.key=");
    assert_eq!(
        e.to_string(),
        "Invalid filter at position 15: expected a string after '='"
    );
    let e = error("attributes.k != com");
    assert_eq!(
        e.to_string(),
        "Invalid filter at position 16: expected a string after '!='"
    );
}

#[test]
fn empty_and_blank_filters() {
    assert_error("", 0, "the filter is empty");
    assert_error("   ", 3, "the filter is empty");
}

#[test]
fn values_must_be_strings() {
    assert_error("attributes.a = b", 15, "expected a string after '='");
    assert_error("attributes.a = 1", 15, "expected a string after '='");
    assert_error(
        "attributes.a = attributes.b",
        15,
        "expected a string after '='",
    );
    assert_error(
        "attributes.a != (\"x\")",
        16,
        "expected a string after '!='",
    );
}

#[test]
fn condition_must_start_with_the_attribute() {
    assert_error(
        r#""com" = attributes.name"#,
        0,
        "a condition starts with the attribute",
    );
    assert_error("name = \"com\"", 0, "expected a condition");
    assert_error(
        "attributes = \"x\"",
        11,
        "expected '.' or ':' after attributes",
    );
    assert_error("attributes", 10, "expected '.' or ':' after attributes");
    assert_error("Attributes:a", 0, "expected a condition");
}

#[test]
fn member_needs_a_comparison() {
    assert_error(
        "attributes.a",
        12,
        "expected '=' or '!=' after the attribute key",
    );
    assert_error("attributes.a:b", 12, "test for a key with attributes:KEY");
    assert_error("attributes.a < \"x\"", 13, "unsupported operator '<'");
    assert_error("attributes.a >= \"x\"", 13, "unsupported operator '>'");
    assert_error("attributes.a == \"x\"", 14, "expected a string after '='");
}

#[test]
fn has_needs_a_key() {
    assert_error("attributes:", 11, "expected an attribute key after ':'");
    assert_error("attributes:(a)", 11, "expected an attribute key after ':'");
    assert_error("attributes:-a", 11, "quote keys that start with '-'");
    assert_error(
        "attributes:a = \"x\"",
        13,
        "expected AND, OR or the end of the filter",
    );
}

#[test]
fn member_syntax_is_tight() {
    assert_error(
        "attributes .a = \"x\"",
        11,
        "unexpected whitespace before '.'",
    );
    assert_error(
        "attributes. a = \"x\"",
        12,
        "unexpected whitespace after '.'",
    );
    assert_error("attributes.a.b = \"x\"", 12, "no nested fields");
    assert_error("attributes.", 11, "expected an attribute key after '.'");
}

#[test]
fn unquoted_keys_are_ascii() {
    assert_error("attributes:みんな", 11, "must be quoted");
    assert_error("attributes:a/b", 12, "unexpected character '/'");
    assert_error("attributes:a$", 12, "unexpected character '$'");
}

#[test]
fn strings_must_be_well_formed() {
    assert_error("attributes.a = \"abc", 15, "unterminated string");
    assert_error("attributes.a = 'abc\"", 15, "unterminated string");
    assert_error("attributes.a = \"ab\\", 15, "unterminated string");
    assert_error(
        "attributes.a = \"\\q\"",
        16,
        "invalid escape sequence '\\q'",
    );
    assert_error(
        "attributes.a = \"\\8\"",
        16,
        "invalid escape sequence '\\8'",
    );
    assert_error(
        "attributes.a = \"\\x4\"",
        16,
        "expected 2 hexadecimal digits",
    );
    assert_error(
        "attributes.a = \"\\u12\"",
        16,
        "expected 4 hexadecimal digits",
    );
    assert_error(
        "attributes.a = \"\\U0001F6\"",
        16,
        "expected 8 hexadecimal digits",
    );
    assert_error("attributes.a = \"\\09\"", 16, "expected 3 octal digits");
    assert_error(
        "attributes.a = \"\\uD800\"",
        16,
        "not a Unicode scalar value",
    );
    assert_error(
        "attributes.a = \"\\U00110000\"",
        16,
        "not a Unicode scalar value",
    );
    assert_error("attributes.a = \"a\nb\"", 17, "control characters");
}

#[test]
fn operators_are_upper_case() {
    assert_error("attributes:a and attributes:b", 13, "expected AND");
    assert_error("attributes:a Or attributes:b", 13, "expected OR");
    assert_error("not attributes:a", 0, "expected NOT");
    assert_error("attributes:a AND Not attributes:b", 17, "expected NOT");
}

#[test]
fn and_or_cannot_be_mixed_without_parentheses() {
    assert_error(
        "attributes:a AND attributes:b OR attributes:c",
        30,
        "OR cannot follow AND without parentheses",
    );
    assert_error(
        "attributes:a OR attributes:b AND attributes:c",
        29,
        "AND cannot follow OR without parentheses",
    );
    assert_error(
        "(attributes:a OR attributes:b AND attributes:c)",
        30,
        "AND cannot follow OR",
    );
    assert_error(
        r#"attributes:x AND (attributes.n = "a" OR "b")"#,
        40,
        "a condition starts with the attribute",
    );
}

#[test]
fn and_or_need_surrounding_whitespace() {
    assert_error(
        "(attributes:a)AND attributes:b",
        14,
        "expected whitespace before AND",
    );
    assert_error(
        "attributes:a OR(attributes:b)",
        15,
        "expected whitespace after OR",
    );
}

#[test]
fn juxtaposition_is_not_a_conjunction() {
    assert_error(
        "attributes:a attributes:b",
        13,
        "expected AND, OR or the end of the filter",
    );
}

#[test]
fn negation_rules() {
    assert_error("NOT(attributes:a)", 3, "expected whitespace after NOT");
    assert_error("- attributes:a", 2, "directly after '-'");
    assert_error("NOT NOT attributes:a", 4, "one negation");
    assert_error("--attributes:a", 1, "one negation");
    assert_error("NOT -attributes:a", 4, "one negation");
    assert_error("NOT", 3, "expected a condition");
    assert_error("-", 1, "after '-'");
    assert_error("!attributes:a", 0, "negate with NOT or '-'");
}

#[test]
fn dangling_boolean_operators() {
    assert_error("attributes:a AND", 16, "expected a condition");
    assert_error("attributes:a AND", 16, "after AND");
    assert_error("attributes:a OR ", 16, "after OR");
    assert_error("AND attributes:a", 0, "expected a condition");
    assert_error(
        "attributes:a && attributes:b",
        13,
        "combine conditions with AND",
    );
    assert_error(
        "attributes:a || attributes:b",
        13,
        "combine conditions with OR",
    );
}

#[test]
fn parentheses_must_balance() {
    assert_error(
        "(attributes:a",
        13,
        "expected ')' to close the '(' at position 0",
    );
    assert_error("attributes:a)", 12, "without a matching '('");
    assert_error("()", 1, "after '('");
    assert_error("(attributes:a attributes:b)", 14, "expected AND, OR or ')'");
}

#[test]
fn has_prefix_rules() {
    assert_error(
        r#"hasPrefix (attributes.a, "p")"#,
        10,
        "unexpected whitespace between",
    );
    assert_error("hasPrefix", 9, "expected '(' after hasPrefix");
    assert_error(
        r#"hasPrefix("p", attributes.a)"#,
        10,
        "first argument of hasPrefix",
    );
    assert_error(
        r#"hasPrefix(attributes:a, "p")"#,
        20,
        "expected '.' after attributes",
    );
    assert_error(r#"hasPrefix(attributes.a "p")"#, 23, "expected ','");
    assert_error(
        r#"hasPrefix(attributes.a, p)"#,
        24,
        "second argument of hasPrefix",
    );
    assert_error(r#"hasPrefix(attributes.a, "p""#, 27, "expected ')'");
    assert_error(r#"hasPrefix(attributes.a, "p", "q")"#, 27, "expected ')'");
    assert_error(
        r#"hasprefix(attributes.a, "p")"#,
        0,
        "unknown function 'hasprefix'",
    );
    assert_error(
        r#"hasSuffix(attributes.a, "p")"#,
        0,
        "hasPrefix is the only function",
    );
}
