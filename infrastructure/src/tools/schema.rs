//! The `file_read` tool as the model is told of it (its JSON Schema), and
//! its arguments as a call sends them, checked against that schema.
//!
//! The schema is compiled once per process, on first use, and shared by
//! every turn: compiling is far dearer than validating, and a turn may
//! make many calls. [`schema_compilations`] counts the compilations so a
//! test can hold the process to that.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use jsonschema::Validator;
use pantheon_domain::tool::{FILE_READ, ToolSpec};
use serde_json::Value;

/// The arguments of `file_read`, as the model is told of them.
pub const FILE_READ_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "file_id": {
      "type": "string",
      "description": "The id of one of this turn's files, as listed."
    },
    "offset": {
      "type": "integer",
      "minimum": 0,
      "default": 0,
      "description": "The first byte to read (of the extracted text, for a PDF)."
    },
    "length": {
      "type": "integer",
      "minimum": 1,
      "description": "The most bytes to read; larger values are cut to the server's limit."
    }
  },
  "required": ["file_id"],
  "additionalProperties": false
}"#;

const FILE_READ_DESCRIPTION: &str = "Reads part of one of this turn's files as UTF-8 text: \
up to `length` bytes from `offset`. A PDF is read as its extracted text; an image has no \
text to read. The result is JSON with the text, the bytes returned, `total_bytes` and \
`eof`; while `eof` is false, read on from `offset + bytes`.";

/// The most validation messages a result repeats, and the most characters
/// of each: a hostile argument must not make a huge result.
const MAX_MESSAGES: usize = 5;
const MAX_MESSAGE_CHARS: usize = 200;

static COMPILATIONS: AtomicU64 = AtomicU64::new(0);
static VALIDATOR: OnceLock<Result<Validator, String>> = OnceLock::new();

/// How many times this process compiled the schema (at most once).
pub fn schema_compilations() -> u64 {
    COMPILATIONS.load(Ordering::Relaxed)
}

/// The compiled schema, compiled by the first caller.
pub(super) fn validator() -> Result<&'static Validator, String> {
    let compiled = VALIDATOR.get_or_init(|| {
        COMPILATIONS.fetch_add(1, Ordering::Relaxed);
        let schema: Value = serde_json::from_str(FILE_READ_SCHEMA)
            .map_err(|e| format!("the file_read schema is not JSON: {e}"))?;
        jsonschema::validator_for(&schema)
            .map_err(|e| format!("the file_read schema does not compile: {e}"))
    });
    compiled.as_ref().map_err(Clone::clone)
}

/// The tool as offered to the model.
pub(super) fn spec() -> ToolSpec {
    ToolSpec { name: FILE_READ, description: FILE_READ_DESCRIPTION, parameters: FILE_READ_SCHEMA }
}

/// A call's arguments, validated; the numbers as sent, before clamping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadArgs {
    pub(super) file_id: String,
    pub(super) offset: u64,
    pub(super) length: Option<u64>,
}

/// The arguments of a call, or the message telling the model what is
/// wrong with them.
pub(super) fn parse(validator: &Validator, arguments: &str) -> Result<ReadArgs, String> {
    let value: Value = serde_json::from_str(arguments)
        .map_err(|e| format!("the arguments are not a JSON object: {e}"))?;
    let messages: Vec<String> = validator
        .iter_errors(&value)
        .take(MAX_MESSAGES)
        .map(|error| {
            let path = error.instance_path().to_string();
            let message = clip(&error.to_string(), MAX_MESSAGE_CHARS);
            if path.is_empty() { message } else { format!("{path}: {message}") }
        })
        .collect();
    if !messages.is_empty() {
        return Err(format!("invalid arguments: {}", messages.join("; ")));
    }
    // The schema holds from here; the fallbacks only guard a drift of it.
    let file_id = value.get("file_id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let offset = value.get("offset").map_or(Some(0), whole).unwrap_or(u64::MAX);
    let length = value.get("length").map(|l| whole(l).unwrap_or(u64::MAX));
    Ok(ReadArgs { file_id, offset, length })
}

/// A non-negative integer, however JSON spelled it (`2`, `2.0`, `1e3`);
/// one past `u64` saturates. `None` for anything else.
fn whole(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let float = value.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0)?;
    // `as` saturates at `u64::MAX`, which is what a huge offset means.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(float as u64)
}

/// `text` cut to `chars` characters, marked when cut.
pub(super) fn clip(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(arguments: &str) -> Result<ReadArgs, String> {
        let validator = validator().unwrap_or_else(|e| panic!("{e}"));
        parse(validator, arguments)
    }

    #[test]
    fn valid_arguments_are_read_with_their_defaults() {
        let args = check(r#"{"file_id": "f"}"#);
        assert_eq!(args, Ok(ReadArgs { file_id: "f".into(), offset: 0, length: None }));
        let args = check(r#"{"file_id": "f", "offset": 10, "length": 2.0}"#);
        assert_eq!(args, Ok(ReadArgs { file_id: "f".into(), offset: 10, length: Some(2) }));
        let args = check(r#"{"file_id": "f", "offset": 1e30}"#);
        assert_eq!(args.map(|a| a.offset), Ok(u64::MAX), "a huge offset saturates");
    }

    #[test]
    fn each_violation_is_reported_with_the_validators_message_and_its_place() {
        let cases = [
            ("{}", vec!["\"file_id\" is a required property"]),
            (r#"{"file_id": 7}"#, vec!["/file_id: 7 is not of type \"string\""]),
            (
                r#"{"file_id": "f", "offset": -1}"#,
                vec!["/offset: -1 is less than the minimum of 0"],
            ),
            (r#"{"file_id": "f", "length": 0}"#, vec!["/length: 0 is less than the minimum of 1"]),
            (r#"{"file_id": "f", "offset": 1.5}"#, vec!["/offset: 1.5 is not of type \"integer\""]),
            (r#"{"file_id": "f", "path": "/etc"}"#, vec!["'path' was unexpected"]),
            (r#"{"offset": "x", "extra": 1}"#, vec!["file_id", "/offset", "'extra'"]),
            ("[]", vec!["is not of type \"object\""]),
        ];
        for (arguments, expected) in cases {
            let message = check(arguments).err().unwrap_or_default();
            assert!(message.starts_with("invalid arguments: "), "{arguments}: {message}");
            for part in expected {
                assert!(message.contains(part), "{arguments}: {message:?} lacks {part:?}");
            }
        }
    }

    #[test]
    fn malformed_json_is_told_apart_and_huge_values_are_not_echoed_whole() {
        for arguments in ["", "{", "not json", "{\"file_id\": \"f\",}"] {
            let message = check(arguments).err().unwrap_or_default();
            assert!(message.starts_with("the arguments are not a JSON object"), "{message}");
        }
        let huge = format!(r#"{{"file_id": {}}}"#, serde_json::json!(["x".repeat(100_000)]));
        let message = check(&huge).err().unwrap_or_default();
        assert!(message.len() < 2 * MAX_MESSAGES * MAX_MESSAGE_CHARS, "{}", message.len());
    }

    #[test]
    fn the_schema_compiles_once_however_many_calls_use_it() {
        for _ in 0..3 {
            let _ = check(r#"{"file_id": "f"}"#);
            let _ = validator();
        }
        assert_eq!(schema_compilations(), 1);
        let spec = spec();
        assert_eq!((spec.name, spec.parameters), (FILE_READ, FILE_READ_SCHEMA));
    }
}
