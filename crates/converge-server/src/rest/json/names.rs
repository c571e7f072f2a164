//! Field-name spelling: proto names are snake_case, proto3 JSON names are lowerCamelCase.
//!
//! Both directions are needed: output and `FieldMask` text use lowerCamelCase, input accepts
//! either spelling, and a `FieldMask` read from JSON must hold snake_case paths again because
//! that is what the service layer matches `update_mask` entries against.

/// The proto field name of a Rust field identifier (`r#type` is the proto field `type`).
pub(crate) fn proto_name(ident: &str) -> &str {
    ident.strip_prefix("r#").unwrap_or(ident)
}

/// The proto3 JSON name of a proto field name, as `protoc` derives `json_name`: every `_` is
/// dropped and the character after it upper-cased.
pub(crate) fn lower_camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper_next = false;
    for ch in snake.chars() {
        if ch == '_' {
            upper_next = true;
        } else if upper_next {
            out.extend(ch.to_uppercase());
            upper_next = false;
        } else {
            out.push(ch);
        }
    }
    out
}

/// The snake_case proto name of a lowerCamelCase JSON name; already-snake input is unchanged.
pub(crate) fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for ch in camel.chars() {
        if ch.is_ascii_uppercase() {
            out.push('_');
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Converts each `.`-separated segment of a field-mask path with `convert`.
fn convert_path(path: &str, convert: fn(&str) -> String) -> String {
    path.split('.').map(convert).collect::<Vec<_>>().join(".")
}

/// Parses the proto3 JSON text of a `google.protobuf.FieldMask` (`"ackDeadlineSeconds,labels"`)
/// into snake_case paths, the form the service layer compares against.
///
/// Also the parser for the `updateMask` query parameter, which uses the same text.
pub fn field_mask_from_str(text: &str) -> prost_types::FieldMask {
    let paths = text
        .split(',')
        .map(str::trim)
        .filter(|path| !path.is_empty())
        .map(|path| convert_path(path, snake_case))
        .collect();
    prost_types::FieldMask { paths }
}

/// Formats a `google.protobuf.FieldMask` as its proto3 JSON text: lowerCamelCase paths joined
/// by commas.
pub fn field_mask_to_string(mask: &prost_types::FieldMask) -> String {
    mask.paths
        .iter()
        .map(|path| convert_path(path, lower_camel))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_and_snake_convert_both_ways() {
        assert_eq!(
            lower_camel("message_storage_policy"),
            "messageStoragePolicy"
        );
        assert_eq!(lower_camel("bigquery_config"), "bigqueryConfig");
        assert_eq!(lower_camel("name"), "name");
        assert_eq!(snake_case("messageStoragePolicy"), "message_storage_policy");
        assert_eq!(snake_case("ack_deadline_seconds"), "ack_deadline_seconds");
        assert_eq!(proto_name("r#type"), "type");
    }

    #[test]
    fn field_mask_text_round_trips() {
        let mask = field_mask_from_str("ackDeadlineSeconds,pushConfig.oidcToken, labels,,");
        assert_eq!(
            mask.paths,
            ["ack_deadline_seconds", "push_config.oidc_token", "labels"]
        );
        assert_eq!(
            field_mask_to_string(&mask),
            "ackDeadlineSeconds,pushConfig.oidcToken,labels"
        );
        assert!(field_mask_from_str("").paths.is_empty());
    }
}
