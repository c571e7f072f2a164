//! Parsing schema definitions and validating messages against them, as Pub/Sub's SchemaService
//! and schema-bound topics do.
//!
//! Definitions are parsed by the ecosystem's own parsers, so converge accepts and rejects what
//! those accept and reject: `apache-avro` for Avro, `protox` (a pure-Rust `.proto` compiler) plus
//! `prost-reflect` for protocol buffers. A protocol buffer definition is one `.proto` text that
//! defines exactly one top-level message (nested types and enums allowed), as Pub/Sub requires.
//!
//! Messages are checked in the encoding the topic or request names: Avro binary or Avro's JSON
//! encoding (unions written `{"branch": value}`), protobuf wire format or proto3 JSON. Parsed
//! schemas are cached by their definition text, so publishing to a schema-bound topic does not
//! compile the definition again for every request.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use apache_avro::schema::{NamesRef, ResolvedSchema};
use apache_avro::{Schema as AvroSchema, reader::datum::GenericDatumReader};
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde_json::Value as Json;

use crate::proto::{Encoding, schema::Type};

/// The file name a protocol buffer definition is compiled under (it appears in parser errors).
const PROTO_FILE: &str = "schema.proto";

/// How many parsed definitions the cache keeps before it starts over. Schemas are few; the bound
/// only keeps a client that validates endless distinct inline schemas from growing memory.
const CACHE_CAPACITY: usize = 256;

/// Why a definition or a message was refused. Both are `INVALID_ARGUMENT` for the client; the
/// text is the parser's or validator's own explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The schema type is missing or unknown.
    #[error("Invalid schema type: {0}")]
    UnknownType(i32),
    /// The definition does not parse as its type says.
    #[error("Invalid schema definition: {0}")]
    InvalidDefinition(String),
    /// The message does not match the schema in the given encoding.
    #[error("{0}")]
    InvalidMessage(String),
}

/// A parsed, ready-to-use schema definition.
#[derive(Debug)]
pub enum ParsedSchema {
    /// An Avro schema whose named types are known to resolve.
    Avro(AvroSchema),
    /// The single top-level message of a protocol buffer definition.
    Proto(MessageDescriptor),
}

/// Parses `definition` as a schema of type `kind` (a `google.pubsub.v1.Schema.Type` number),
/// from the cache when the same definition was parsed before.
pub fn parse(kind: i32, definition: &str) -> Result<Arc<ParsedSchema>, SchemaError> {
    let cache = CACHE.get_or_init(Mutex::default);
    let key = (kind, definition.to_owned());
    if let Some(hit) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return Ok(hit.clone());
    }
    let parsed = Arc::new(parse_uncached(kind, definition)?);
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= CACHE_CAPACITY {
        cache.clear();
    }
    cache.insert(key, parsed.clone());
    Ok(parsed)
}

/// Parsed definitions by (type, definition text). Content-addressed, so never stale.
type Cache = Mutex<HashMap<(i32, String), Arc<ParsedSchema>>>;

/// The process-wide parse cache.
static CACHE: OnceLock<Cache> = OnceLock::new();

/// Parses without the cache.
fn parse_uncached(kind: i32, definition: &str) -> Result<ParsedSchema, SchemaError> {
    match Type::try_from(kind) {
        Ok(Type::Avro) => parse_avro(definition).map(ParsedSchema::Avro),
        Ok(Type::ProtocolBuffer) => parse_proto(definition).map(ParsedSchema::Proto),
        _ => Err(SchemaError::UnknownType(kind)),
    }
}

/// Parses an Avro schema (JSON) and checks that its named types resolve.
fn parse_avro(definition: &str) -> Result<AvroSchema, SchemaError> {
    let schema = AvroSchema::parse_str(definition)
        .map_err(|e| SchemaError::InvalidDefinition(e.to_string()))?;
    ResolvedSchema::try_from(&schema).map_err(|e| SchemaError::InvalidDefinition(e.to_string()))?;
    Ok(schema)
}

/// Serves the definition text as [`PROTO_FILE`]; every other name is not found, so imports
/// fall through to the well-known types.
struct DefinitionResolver {
    source: String,
}

impl FileResolver for DefinitionResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == PROTO_FILE {
            return File::from_source(name, &self.source);
        }
        Err(protox::Error::file_not_found(name))
    }
}

/// Compiles a `.proto` text and returns its only top-level message.
fn parse_proto(definition: &str) -> Result<MessageDescriptor, SchemaError> {
    let mut resolver = ChainFileResolver::new();
    resolver.add(DefinitionResolver {
        source: definition.to_owned(),
    });
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler
        .open_file(PROTO_FILE)
        .map_err(|e| SchemaError::InvalidDefinition(e.to_string()))?;
    let pool = compiler.descriptor_pool();
    let file = pool.get_file_by_name(PROTO_FILE).ok_or_else(|| {
        SchemaError::InvalidDefinition("the definition compiled to no file".into())
    })?;
    let mut messages = file.messages();
    match (messages.next(), messages.next()) {
        (Some(message), None) => Ok(message),
        (None, _) => Err(SchemaError::InvalidDefinition(
            "the definition must define exactly one top-level message, it defines none".into(),
        )),
        (Some(_), Some(_)) => Err(SchemaError::InvalidDefinition(
            "the definition must define exactly one top-level message, it defines several".into(),
        )),
    }
}

/// Validates `data` against `schema` in `encoding` (a `google.pubsub.v1.Encoding` number;
/// unspecified means JSON, as for topics whose settings leave it out).
pub fn validate(schema: &ParsedSchema, encoding: i32, data: &[u8]) -> Result<(), SchemaError> {
    let binary = Encoding::try_from(encoding) == Ok(Encoding::Binary);
    match (schema, binary) {
        (ParsedSchema::Avro(avro), true) => validate_avro_binary(avro, data),
        (ParsedSchema::Avro(avro), false) => {
            let json = parse_json(data)?;
            let resolved = ResolvedSchema::try_from(avro)
                .map_err(|e| invalid(format!("Invalid Avro schema: {e}")))?;
            check_avro_json(avro, resolved.get_names(), &json, "$")
        }
        (ParsedSchema::Proto(message), true) => DynamicMessage::decode(message.clone(), data)
            .map(drop)
            .map_err(|e| {
                invalid(format!(
                    "Invalid binary message for {}: {e}",
                    message.full_name()
                ))
            }),
        (ParsedSchema::Proto(message), false) => validate_proto_json(message, data),
    }
}

/// The message error with `text`.
fn invalid(text: impl Into<String>) -> SchemaError {
    SchemaError::InvalidMessage(text.into())
}

/// Decodes one Avro datum and requires that it uses every byte.
fn validate_avro_binary(avro: &AvroSchema, data: &[u8]) -> Result<(), SchemaError> {
    let reader = GenericDatumReader::builder(avro)
        .build()
        .map_err(|e| invalid(format!("Invalid Avro schema: {e}")))?;
    let mut rest = data;
    reader
        .read_value(&mut rest)
        .map_err(|e| invalid(format!("Invalid binary Avro message: {e}")))?;
    let mut trailing = [0u8; 1];
    if rest.read(&mut trailing).unwrap_or(0) > 0 {
        let used = data.len() - rest.len() - 1;
        return Err(invalid(format!(
            "Invalid binary Avro message: {} trailing bytes after the datum ({used} bytes)",
            rest.len() + 1
        )));
    }
    Ok(())
}

/// Parses message data as JSON.
fn parse_json(data: &[u8]) -> Result<Json, SchemaError> {
    serde_json::from_slice(data).map_err(|e| invalid(format!("Invalid JSON message: {e}")))
}

/// Deserializes proto3 JSON into the message type, refusing unknown fields.
fn validate_proto_json(message: &MessageDescriptor, data: &[u8]) -> Result<(), SchemaError> {
    let mut deserializer = serde_json::Deserializer::from_slice(data);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(message.clone(), &mut deserializer, &options)
        .map_err(|e| {
            invalid(format!(
                "Invalid JSON message for {}: {e}",
                message.full_name()
            ))
        })?;
    deserializer
        .end()
        .map_err(|e| invalid(format!("Invalid JSON message: {e}")))
}

/// The name a union branch of type `schema` is written under in Avro's JSON encoding.
fn branch_name(schema: &AvroSchema) -> String {
    match schema {
        AvroSchema::Null => "null".into(),
        AvroSchema::Boolean => "boolean".into(),
        AvroSchema::Int | AvroSchema::Date | AvroSchema::TimeMillis => "int".into(),
        AvroSchema::Long
        | AvroSchema::TimeMicros
        | AvroSchema::TimestampMillis
        | AvroSchema::TimestampMicros
        | AvroSchema::TimestampNanos
        | AvroSchema::LocalTimestampMillis
        | AvroSchema::LocalTimestampMicros
        | AvroSchema::LocalTimestampNanos => "long".into(),
        AvroSchema::Float => "float".into(),
        AvroSchema::Double => "double".into(),
        AvroSchema::Bytes | AvroSchema::BigDecimal => "bytes".into(),
        AvroSchema::String | AvroSchema::Uuid(_) => "string".into(),
        AvroSchema::Array(_) => "array".into(),
        AvroSchema::Map(_) => "map".into(),
        AvroSchema::Union(_) => "union".into(),
        AvroSchema::Decimal(_) => "bytes".into(),
        AvroSchema::Record(r) => r.name.fullname(None),
        AvroSchema::Enum(e) => e.name.fullname(None),
        AvroSchema::Fixed(f) | AvroSchema::Duration(f) => f.name.fullname(None),
        AvroSchema::Ref { name } => name.fullname(None),
    }
}

/// Checks a JSON value against an Avro schema in Avro's JSON encoding. `path` locates the value
/// in the message for the error (`$.address.city`).
fn check_avro_json(
    schema: &AvroSchema,
    names: &NamesRef<'_>,
    json: &Json,
    path: &str,
) -> Result<(), SchemaError> {
    let mismatch = |expected: &str| {
        invalid(format!(
            "Invalid JSON Avro message: {path} must be {expected}, got {json}"
        ))
    };
    match schema {
        AvroSchema::Null => json.is_null().then_some(()).ok_or_else(|| mismatch("null")),
        AvroSchema::Boolean => json
            .is_boolean()
            .then_some(())
            .ok_or_else(|| mismatch("a boolean")),
        AvroSchema::Int | AvroSchema::Date | AvroSchema::TimeMillis => json
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(drop)
            .ok_or_else(|| mismatch("a 32-bit integer")),
        AvroSchema::Long
        | AvroSchema::TimeMicros
        | AvroSchema::TimestampMillis
        | AvroSchema::TimestampMicros
        | AvroSchema::TimestampNanos
        | AvroSchema::LocalTimestampMillis
        | AvroSchema::LocalTimestampMicros
        | AvroSchema::LocalTimestampNanos => json
            .as_i64()
            .map(drop)
            .ok_or_else(|| mismatch("a 64-bit integer")),
        AvroSchema::Float | AvroSchema::Double => json
            .is_number()
            .then_some(())
            .ok_or_else(|| mismatch("a number")),
        AvroSchema::Bytes | AvroSchema::BigDecimal | AvroSchema::Decimal(_) => avro_bytes(json)
            .map(drop)
            .ok_or_else(|| mismatch("a byte string")),
        AvroSchema::String | AvroSchema::Uuid(_) => json
            .is_string()
            .then_some(())
            .ok_or_else(|| mismatch("a string")),
        AvroSchema::Fixed(fixed) | AvroSchema::Duration(fixed) => match avro_bytes(json) {
            Some(len) if len == fixed.size => Ok(()),
            _ => Err(mismatch(&format!("a byte string of {} bytes", fixed.size))),
        },
        AvroSchema::Enum(e) => match json.as_str() {
            Some(symbol) if e.symbols.iter().any(|s| s == symbol) => Ok(()),
            _ => Err(mismatch(&format!("one of the symbols {:?}", e.symbols))),
        },
        AvroSchema::Array(array) => {
            let items = json.as_array().ok_or_else(|| mismatch("an array"))?;
            items.iter().enumerate().try_for_each(|(i, item)| {
                check_avro_json(&array.items, names, item, &format!("{path}[{i}]"))
            })
        }
        AvroSchema::Map(map) => {
            let entries = json.as_object().ok_or_else(|| mismatch("an object"))?;
            entries.iter().try_for_each(|(key, value)| {
                check_avro_json(&map.types, names, value, &format!("{path}.{key}"))
            })
        }
        AvroSchema::Record(record) => {
            let object = json.as_object().ok_or_else(|| mismatch("an object"))?;
            for field in &record.fields {
                let field_path = format!("{path}.{}", field.name);
                match object.get(&field.name) {
                    Some(value) => check_avro_json(&field.schema, names, value, &field_path)?,
                    None if field.default.is_some() => {}
                    None => {
                        return Err(invalid(format!(
                            "Invalid JSON Avro message: missing required field {field_path}"
                        )));
                    }
                }
            }
            match object.keys().find(|key| !record.lookup.contains_key(*key)) {
                Some(unknown) => Err(invalid(format!(
                    "Invalid JSON Avro message: unknown field {path}.{unknown}"
                ))),
                None => Ok(()),
            }
        }
        AvroSchema::Union(union) => check_avro_union(union.variants(), names, json, path),
        AvroSchema::Ref { name } => match names.get(name) {
            Some(target) => check_avro_json(target, names, json, path),
            None => Err(invalid(format!(
                "Invalid Avro schema: unresolved type {}",
                name.fullname(None)
            ))),
        },
    }
}

/// A union value is `null` (for a union with a null branch) or `{"branch name": value}`.
fn check_avro_union(
    variants: &[AvroSchema],
    names: &NamesRef<'_>,
    json: &Json,
    path: &str,
) -> Result<(), SchemaError> {
    if json.is_null() {
        return match variants.iter().any(|v| matches!(v, AvroSchema::Null)) {
            true => Ok(()),
            false => Err(invalid(format!(
                "Invalid JSON Avro message: {path} is null but its union has no null branch"
            ))),
        };
    }
    let branches: Vec<String> = variants.iter().map(branch_name).collect();
    let single = json
        .as_object()
        .filter(|object| object.len() == 1)
        .and_then(|object| object.iter().next());
    let Some((branch, value)) = single else {
        return Err(invalid(format!(
            "Invalid JSON Avro message: {path} must be null or an object naming one union branch \
             of {branches:?}, got {json}"
        )));
    };
    match branches.iter().position(|b| b == branch) {
        Some(i) => check_avro_json(&variants[i], names, value, &format!("{path}.{branch}")),
        None => Err(invalid(format!(
            "Invalid JSON Avro message: {path} names union branch {branch:?}, not one of \
             {branches:?}"
        ))),
    }
}

/// The length of an Avro JSON byte string (each char one byte, U+0000 to U+00FF).
fn avro_bytes(json: &Json) -> Option<usize> {
    let text = json.as_str()?;
    text.chars()
        .all(|c| u32::from(c) <= 0xFF)
        .then(|| text.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVRO: &str = r#"{
        "type": "record", "name": "State", "namespace": "utilities",
        "fields": [
            {"name": "name", "type": "string"},
            {"name": "post_abbr", "type": "string"},
            {"name": "population", "type": ["null", "long"], "default": null}
        ]
    }"#;

    const PROTO: &str = r#"
        syntax = "proto3";
        message State {
            string name = 1;
            string post_abbr = 2;
            int64 population = 3;
        }
    "#;

    fn avro() -> Arc<ParsedSchema> {
        parse(Type::Avro as i32, AVRO).expect("valid Avro")
    }

    fn proto() -> Arc<ParsedSchema> {
        parse(Type::ProtocolBuffer as i32, PROTO).expect("valid proto")
    }

    const JSON: i32 = Encoding::Json as i32;
    const BINARY: i32 = Encoding::Binary as i32;

    /// Avro binary of State{name, post_abbr, population: union index + long}.
    fn avro_binary(name: &str, abbr: &str, population: Option<i64>) -> Vec<u8> {
        fn zigzag(n: i64, out: &mut Vec<u8>) {
            let mut z = ((n << 1) ^ (n >> 63)) as u64;
            loop {
                let byte = (z & 0x7F) as u8;
                z >>= 7;
                if z == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        let mut out = Vec::new();
        for s in [name, abbr] {
            zigzag(s.len() as i64, &mut out);
            out.extend_from_slice(s.as_bytes());
        }
        match population {
            None => zigzag(0, &mut out),
            Some(p) => {
                zigzag(1, &mut out);
                zigzag(p, &mut out);
            }
        }
        out
    }

    #[test]
    fn avro_json_accepts_matching_messages() {
        let schema = avro();
        let ok = [
            r#"{"name": "Alaska", "post_abbr": "AK", "population": {"long": 733391}}"#,
            r#"{"name": "Alaska", "post_abbr": "AK", "population": null}"#,
            r#"{"name": "Alaska", "post_abbr": "AK"}"#,
        ];
        for message in ok {
            assert_eq!(
                validate(&schema, JSON, message.as_bytes()),
                Ok(()),
                "{message}"
            );
        }
    }

    #[test]
    fn avro_json_rejects_what_does_not_match() {
        let schema = avro();
        for (message, words) in [
            (
                r#"{"name": "Alaska"}"#,
                "missing required field $.post_abbr",
            ),
            (
                r#"{"name": 7, "post_abbr": "AK"}"#,
                "$.name must be a string",
            ),
            (
                r#"{"name": "A", "post_abbr": "AK", "extra": 1}"#,
                "unknown field $.extra",
            ),
            (
                r#"{"name": "A", "post_abbr": "AK", "population": 5}"#,
                "union branch",
            ),
            (
                r#"{"name": "A", "post_abbr": "AK", "population": {"int": 5}}"#,
                "\"int\"",
            ),
            ("not json", "Invalid JSON message"),
        ] {
            let error = validate(&schema, JSON, message.as_bytes()).expect_err(message);
            assert!(error.to_string().contains(words), "{message}: {error}");
        }
    }

    #[test]
    fn avro_binary_accepts_a_datum_and_rejects_garbage_and_trailing_bytes() {
        let schema = avro();
        let good = avro_binary("Alaska", "AK", Some(733_391));
        assert_eq!(validate(&schema, BINARY, &good), Ok(()));
        assert_eq!(
            validate(&schema, BINARY, &avro_binary("A", "B", None)),
            Ok(())
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(validate(&schema, BINARY, &trailing).is_err());
        assert!(validate(&schema, BINARY, &good[..good.len() - 2]).is_err());
        // A union index out of range.
        let mut bad_branch = avro_binary("A", "B", None);
        *bad_branch.last_mut().expect("non-empty") = 0x08;
        assert!(validate(&schema, BINARY, &bad_branch).is_err());
    }

    #[test]
    fn proto_json_accepts_matching_messages_and_rejects_others() {
        let schema = proto();
        for message in [
            r#"{"name": "Alaska", "postAbbr": "AK", "population": "733391"}"#,
            r#"{"name": "Alaska", "post_abbr": "AK", "population": 733391}"#,
            "{}",
        ] {
            assert_eq!(
                validate(&schema, JSON, message.as_bytes()),
                Ok(()),
                "{message}"
            );
        }
        for message in [
            r#"{"name": 5}"#,
            r#"{"nickname": "x"}"#,
            r#"{"population": "many"}"#,
            r#"{"name": "a"} trailing"#,
        ] {
            assert!(
                validate(&schema, JSON, message.as_bytes()).is_err(),
                "{message}"
            );
        }
    }

    #[test]
    fn proto_binary_accepts_the_wire_format_and_rejects_garbage() {
        let schema = proto();
        // name = "AK" (field 1, length-delimited), population = 5 (field 3, varint).
        let good = [0x0A, 0x02, b'A', b'K', 0x18, 0x05];
        assert_eq!(validate(&schema, BINARY, &good), Ok(()));
        // Field 1 declared 10 bytes long, only 2 present.
        let truncated = [0x0A, 0x0A, b'A', b'K'];
        assert!(validate(&schema, BINARY, &truncated).is_err());
        // Field 1 (a string) sent as a varint: wrong wire type.
        let wrong_type = [0x08, 0x01];
        assert!(validate(&schema, BINARY, &wrong_type).is_err());
    }

    #[test]
    fn invalid_definitions_carry_the_parser_message() {
        let error = parse(Type::Avro as i32, r#"{"type": "record", "name": "X"}"#)
            .expect_err("a record without fields");
        assert!(
            matches!(error, SchemaError::InvalidDefinition(_)),
            "{error}"
        );
        let error = parse(
            Type::ProtocolBuffer as i32,
            "syntax = \"proto3\"; message X { strin name = 1; }",
        )
        .expect_err("an unknown type");
        assert!(error.to_string().contains("strin"), "{error}");
        let error = parse(
            Type::ProtocolBuffer as i32,
            "syntax = \"proto3\"; message A {} message B {}",
        )
        .expect_err("two messages");
        assert!(error.to_string().contains("exactly one"), "{error}");
        assert_eq!(
            parse(0, "{}").expect_err("no type"),
            SchemaError::UnknownType(0)
        );
    }

    #[test]
    fn proto2_definitions_parse_too() {
        let parsed = parse(
            Type::ProtocolBuffer as i32,
            "syntax = \"proto2\"; message M { required string id = 1; optional int32 n = 2; }",
        )
        .expect("proto2");
        assert!(matches!(*parsed, ParsedSchema::Proto(_)));
        assert_eq!(validate(&parsed, JSON, br#"{"id": "x", "n": 3}"#), Ok(()));
    }
}
