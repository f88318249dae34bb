//! The OpenAPI document as the tests' referee: every JSON response the
//! helpers read ([`crate::expect_json`], [`crate::read_json`]) and every
//! stream event ([`crate::sse`]) is validated against the schema the
//! document declares for it, with `jsonschema` (JSON Schema 2020-12, the
//! dialect of OpenAPI 3.1, formats checked).
//!
//! A response is matched to the document by its path (against the path
//! templates, literal segments first) and status, among the operations of
//! that path; a status no operation declares fails. The schemas are checked
//! strictly: every object schema that lists its properties is closed here
//! (`unevaluatedProperties: false`), so a member the server sends and the
//! document does not declare fails as surely as a missing one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

/// The document, closed for validation.
fn strict_document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc: Value = serde_json::from_slice(&pantheon_api::openapi::json()).unwrap();
        let composed = composed_components(&doc);
        close(&mut doc, false, &composed, None);
        doc
    })
}

/// Components used as an `allOf` member: their siblings add properties, so
/// they cannot be closed on their own (the whole is closed at the root).
fn composed_components(doc: &Value) -> Vec<String> {
    let mut names = Vec::new();
    fn walk(node: &Value, names: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if let Some(Value::Array(items)) = map.get("allOf") {
                    for item in items {
                        if let Some(Value::String(r)) = item.get("$ref") {
                            names.push(r.rsplit('/').next().unwrap_or_default().to_owned());
                        }
                    }
                }
                map.values().for_each(|v| walk(v, names));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    walk(doc, &mut names);
    names
}

/// Adds `unevaluatedProperties: false` to every object schema with
/// `properties`, except `allOf` members and composed components.
fn close(node: &mut Value, in_all_of: bool, composed: &[String], component: Option<&str>) {
    match node {
        Value::Object(map) => {
            let skip = in_all_of || component.is_some_and(|c| composed.iter().any(|n| n == c));
            if map.contains_key("properties") && map.get("properties").is_some_and(Value::is_object)
            {
                if !skip {
                    map.entry("unevaluatedProperties").or_insert(Value::Bool(false));
                }
                if let Some(Value::Object(properties)) = map.get_mut("properties") {
                    for schema in properties.values_mut() {
                        close(schema, false, composed, None);
                    }
                }
            }
            for (key, value) in map.iter_mut() {
                match key.as_str() {
                    "properties" => {}
                    "allOf" => {
                        if let Value::Array(items) = value {
                            items.iter_mut().for_each(|i| close(i, true, composed, None));
                        }
                    }
                    "schemas" => {
                        if let Value::Object(schemas) = value {
                            for (name, schema) in schemas.iter_mut() {
                                close(schema, false, composed, Some(name));
                            }
                        }
                    }
                    _ => close(value, false, composed, None),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| close(i, false, composed, None)),
        _ => {}
    }
}

/// A JSON pointer to `tokens` inside the document, as a URI fragment.
fn pointer(tokens: &[&str]) -> String {
    let mut out = String::from("#");
    for token in tokens {
        out.push('/');
        for c in token.replace('~', "~0").replace('/', "~1").chars() {
            match c {
                '{' => out.push_str("%7B"),
                '}' => out.push_str("%7D"),
                c => out.push(c),
            }
        }
    }
    out
}

type Validator = Arc<jsonschema::Validator>;

/// Validates `instance` against the schema at `fragment` (a pointer into
/// the document), closed at its root too.
fn validate(fragment: &str, instance: &Value) -> Result<(), String> {
    static VALIDATORS: OnceLock<Mutex<HashMap<String, Validator>>> = OnceLock::new();
    let cache = VALIDATORS.get_or_init(Mutex::default);
    let validator = {
        let mut cache = cache.lock().unwrap();
        cache
            .entry(fragment.to_owned())
            .or_insert_with(|| {
                let mut root = match strict_document().clone() {
                    Value::Object(map) => map,
                    _ => Map::new(),
                };
                root.insert("$ref".into(), Value::String(fragment.to_owned()));
                root.insert("unevaluatedProperties".into(), Value::Bool(false));
                let schema = Value::Object(root);
                let built = jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("the schema at {fragment} compiles: {e}"));
                Arc::new(built)
            })
            .clone()
    };
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|e| format!("{}: {e}", e.instance_path())).collect();
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// The document's path templates that match `path`, most literal first.
fn templates_for(path: &str) -> Vec<String> {
    let doc = strict_document();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut matches: Vec<(usize, String)> = doc["paths"]
        .as_object()
        .map(|paths| {
            paths
                .keys()
                .filter_map(|template| {
                    let parts: Vec<&str> = template.split('/').collect();
                    if parts.len() != segments.len() {
                        return None;
                    }
                    let mut literal = 0;
                    for (part, segment) in parts.iter().zip(&segments) {
                        if part.starts_with('{') {
                            if segment.is_empty() {
                                return None;
                            }
                        } else if part == segment {
                            literal += 1;
                        } else {
                            return None;
                        }
                    }
                    Some((literal, template.clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    matches.sort_by_key(|m| std::cmp::Reverse(m.0));
    matches.into_iter().map(|(_, t)| t).collect()
}

/// Asserts that a JSON response (`path` as requested, `status`, the media
/// type without parameters) matches what the document declares.
pub fn check_response(path: &str, status: u16, media_type: &str, body: &Value) {
    let doc = strict_document();
    let status_key = status.to_string();
    let mut candidates: Vec<String> = Vec::new();
    if let Some(template) = templates_for(path).first() {
        for (method, operation) in doc["paths"][template].as_object().into_iter().flatten() {
            if operation["responses"][&status_key]["content"][media_type].is_object() {
                candidates.push(pointer(&[
                    "paths",
                    template,
                    method,
                    "responses",
                    &status_key,
                    "content",
                    media_type,
                    "schema",
                ]));
            }
        }
        if candidates.is_empty() && status == 405 {
            candidates.push(pointer(&[
                "components",
                "responses",
                "MethodNotAllowed",
                "content",
                media_type,
                "schema",
            ]));
        }
    } else if status == 404 {
        candidates.push(pointer(&[
            "components",
            "responses",
            "RouteNotFound",
            "content",
            media_type,
            "schema",
        ]));
    }
    assert!(
        !candidates.is_empty(),
        "the OpenAPI document declares no {status} {media_type} response for {path}; body {body}"
    );
    let failures: Vec<String> = candidates
        .iter()
        .filter_map(|c| validate(c, body).err().map(|e| format!("{c}: {e}")))
        .collect();
    assert!(
        failures.len() < candidates.len(),
        "{status} {path} does not match its declared schema: {}\nbody: {body}",
        failures.join("\n")
    );
}

/// Asserts that a stream event's `data` matches `TurnStreamEvent` and that
/// its SSE `event` name repeats the `type`.
pub fn check_event(event: &str, data: &Value) {
    if let Err(e) = validate("#/components/schemas/TurnStreamEvent", data) {
        panic!("stream event {event} does not match TurnStreamEvent: {e}\ndata: {data}");
    }
    assert_eq!(data["type"], json!(event), "the event name repeats the type");
}
