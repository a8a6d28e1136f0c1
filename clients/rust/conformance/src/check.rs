//! Steps and their checks: variables, dotted result paths, expected values and errors.

use std::collections::HashMap;

use mabeam::Error;
use serde_json::{json, Value};

#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

pub(crate) type StepResult = std::result::Result<Value, Outcome>;

pub(crate) enum Outcome {
    Api(Error),
    Fail(Failure),
}

impl From<Error> for Outcome {
    fn from(e: Error) -> Outcome { Outcome::Api(e) }
}

pub(crate) fn fail(msg: impl Into<String>) -> Outcome { Outcome::Fail(Failure(msg.into())) }

pub(crate) fn substitute(value: &Value, vars: &HashMap<String, Value>) -> Value {
    match value {
        Value::String(s) => {
            if s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1 {
                return vars.get(&s[2..s.len() - 1]).cloned().unwrap_or(Value::Null);
            }
            let mut out = s.clone();
            for (k, v) in vars {
                let text = match v { Value::String(t) => t.clone(), other => other.to_string() };
                out = out.replace(&format!("${{{k}}}"), &text);
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, vars)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), substitute(v, vars))).collect()),
        other => other.clone(),
    }
}

pub(crate) fn lookup_path(result: &Value, path: &str) -> std::result::Result<Value, Failure> {
    let mut value = result.clone();
    for part in path.split('.') {
        value = match (&value, part) {
            (Value::Array(items), "#") => json!(items.len()),
            (Value::Object(map), key) if map.contains_key(key) => map[key].clone(),
            _ => return Err(Failure(format!("result has no {path:?}: {result}"))),
        };
    }
    Ok(value)
}

pub(crate) fn matches(actual: &Value, expected: &Value) -> bool {
    if let Value::Object(m) = expected {
        if m.len() == 1 {
            if let Some(bound) = m.get("lt").and_then(Value::as_f64) {
                return actual.as_f64().is_some_and(|a| a < bound);
            }
            if let Some(bound) = m.get("gt").and_then(Value::as_f64) {
                return actual.as_f64().is_some_and(|a| a > bound);
            }
        }
    }
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => a.as_f64() == e.as_f64(),
        (Value::Array(a), Value::Array(e)) => a.len() == e.len() && a.iter().zip(e).all(|(x, y)| matches(x, y)),
        (Value::Object(a), Value::Object(e)) => a.len() == e.len() && e.iter().all(|(k, v)| a.get(k).is_some_and(|x| matches(x, v))),
        _ => actual == expected,
    }
}

pub(crate) fn check(step: &Value, result: &Value, error: Option<&Error>) -> std::result::Result<(), Failure> {
    if let Some(wanted) = step.get("error").filter(|e| !e.is_null()) {
        let Some(error) = error else {
            return Err(Failure(format!("expected {}, got a result: {result}", wanted["code"])));
        };
        if wanted["code"] != error.code_name() {
            return Err(Failure(format!("expected {}, got {}", wanted["code"], error)));
        }
        if let Some(reason) = wanted.get("reason") {
            if reason != error.reason() {
                return Err(Failure(format!("expected reason {reason}, got {error}")));
            }
        }
        if let Some(field) = wanted.get("field").and_then(Value::as_str) {
            if !error.details().field_violations.contains_key(field) {
                return Err(Failure(format!("expected a violation of {field:?}, got {:?}", error.details().field_violations)));
            }
        }
        return Ok(());
    }
    if let Some(error) = error {
        return Err(Failure(error.to_string()));
    }
    if let Some(Value::Object(expect)) = step.get("expect") {
        for (path, expected) in expect {
            let actual = lookup_path(result, path)?;
            if !matches(&actual, expected) {
                return Err(Failure(format!("{path}: expected {expected}, got {actual} in {result}")));
            }
        }
    }
    Ok(())
}
