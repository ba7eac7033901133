//! A parsed JSON document, read field by field with the JSON path for errors. The configuration
//! is read through it instead of serde derive + serde_path_to_error: one parser instantiation
//! instead of one per field type and wrapper (about 55 KB of the Envoy module). Objects keep
//! their entries in order, so a duplicated field is still refused.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A configuration refused at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending field, e.g. `repository.dev.immutable_tags`.
    pub field: String,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: field `{}`", self.field)?;
        if !self.value.is_empty() {
            write!(f, " = {}", self.value)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

pub enum Json {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Unsigned(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Signed(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Json>()? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Json>()? {
            entries.push(entry);
        }
        Ok(Json::Object(entries))
    }
}

/// Joins a path and a field name (`a.b`); the root has no prefix.
pub fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The error at `at`, worded as serde words it.
fn fail(at: &str, reason: String) -> ConfigError {
    let field = if at.is_empty() { "(root)".to_string() } else { at.to_string() };
    ConfigError { field, value: String::new(), reason }
}

impl Json {
    /// Parses a document; syntax errors name the line and column.
    pub fn parse(bytes: &[u8]) -> Result<Json, ConfigError> {
        serde_json::from_slice(bytes).map_err(|e| fail("", e.to_string()))
    }

    /// A field of an object; `None` if absent or not an object.
    pub fn field(&self, name: &str) -> Option<&Json> {
        let Json::Object(entries) = self else { return None };
        entries.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// An item of an array; `None` if absent or not an array.
    pub fn item(&self, i: usize) -> Option<&Json> {
        let Json::Array(items) = self else { return None };
        items.get(i)
    }

    /// What the value is, for errors (serde's wording: `string "x"`, `integer `5``).
    fn unexpected(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => format!("boolean `{b}`"),
            Json::Unsigned(n) => format!("integer `{n}`"),
            Json::Signed(n) => format!("integer `{n}`"),
            // serde_json's own float printer, not core's (which is ~15 KB of the module).
            Json::Float(f) => format!("floating point `{}`", serde_json::Value::from(*f)),
            Json::Str(s) => format!("string {}", quoted(s)),
            Json::Array(_) => "sequence".into(),
            Json::Object(_) => "map".into(),
        }
    }

    pub fn invalid_type(&self, at: &str, expected: &str) -> ConfigError {
        fail(at, format!("invalid type: {}, expected {expected}", self.unexpected()))
    }

    /// An object whose fields are all in `allowed`, each at most once.
    pub fn fields<'a>(&'a self, at: &str, allowed: &[&str]) -> Result<Fields<'a>, ConfigError> {
        let Json::Object(entries) = self else {
            return Err(self.invalid_type(at, "an object"));
        };
        for (i, (name, _)) in entries.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let expected = match allowed {
                    [] => "there are no fields".to_string(),
                    [one] => format!("expected `{one}`"),
                    [a, b] => format!("expected `{a}` or `{b}`"),
                    _ => format!(
                        "expected one of {}",
                        allowed.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
                    ),
                };
                return Err(fail(&join(at, name), format!("unknown field `{name}`, {expected}")));
            }
            if entries.iter().take(i).any(|(seen, _)| seen == name) {
                return Err(fail(&join(at, name), format!("duplicate field `{name}`")));
            }
        }
        Ok(Fields { at: at.to_string(), entries })
    }

    pub fn string(&self, at: &str) -> Result<String, ConfigError> {
        match self {
            Json::Str(s) => Ok(s.clone()),
            other => Err(other.invalid_type(at, "a string")),
        }
    }

    /// An array of strings; an element of another type is named by its index.
    pub fn strings(&self, at: &str) -> Result<Vec<String>, ConfigError> {
        let Json::Array(items) = self else {
            return Err(self.invalid_type(at, "a sequence"));
        };
        items.iter().enumerate().map(|(i, v)| v.string(&format!("{at}[{i}]"))).collect()
    }
}

/// The fields of one object, checked by `Json::fields`.
pub struct Fields<'a> {
    at: String,
    entries: &'a [(String, Json)],
}

impl<'a> Fields<'a> {
    pub fn at(&self, name: &str) -> String {
        join(&self.at, name)
    }

    /// The field's value; absent and `null` are both `None` (as serde's `Option`).
    pub fn get(&self, name: &str) -> Option<&'a Json> {
        self.present(name).filter(|v| !matches!(v, Json::Null))
    }

    /// The field's value when present, `null` included (for fields that default when absent).
    pub fn present(&self, name: &str) -> Option<&'a Json> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        self.get(name).map(|v| bool_of(v, &self.at(name))).transpose()
    }

    /// A `bool` that is `false` when absent (`null` is refused, as serde's `#[serde(default)]`).
    pub fn bool_or_false(&self, name: &str) -> Result<bool, ConfigError> {
        self.present(name).map_or(Ok(false), |v| bool_of(v, &self.at(name)))
    }

    pub fn opt_string(&self, name: &str) -> Result<Option<String>, ConfigError> {
        self.get(name).map(|v| v.string(&self.at(name))).transpose()
    }

    /// An unsigned integer of at most `max` (`ty` names the type in errors: `u32`, `u64`, `usize`).
    pub fn opt_uint(&self, name: &str, ty: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        match v {
            Json::Unsigned(n) if *n <= max => Ok(Some(*n)),
            Json::Unsigned(_) | Json::Signed(_) => {
                Err(fail(&self.at(name), format!("invalid value: {}, expected {ty}", v.unexpected())))
            }
            other => Err(other.invalid_type(&self.at(name), ty)),
        }
    }

    /// An array of strings that is empty when absent.
    pub fn strings_or_empty(&self, name: &str) -> Result<Vec<String>, ConfigError> {
        self.present(name).map_or(Ok(Vec::new()), |v| v.strings(&self.at(name)))
    }
}

fn bool_of(v: &Json, at: &str) -> Result<bool, ConfigError> {
    match v {
        Json::Bool(b) => Ok(*b),
        other => Err(other.invalid_type(at, "a boolean")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn doc(s: &str) -> Json {
        Json::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn fields_refuse_unknown_and_duplicate_names() {
        let d = doc(r#"{"a": 1, "b": true}"#);
        let e = d.fields("x", &["a"]).err().unwrap();
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("x.b", "unknown field `b`, expected `a`"));
        // The hint reads as English for every number of allowed names.
        for (allowed, hint) in [
            (&[][..], "there are no fields"),
            (&["a", "c"][..], "expected `a` or `c`"),
            (&["a", "c", "d"][..], "expected one of `a`, `c`, `d`"),
        ] {
            let e = d.fields("x", allowed).err().unwrap();
            assert_eq!(
                e.reason,
                format!("unknown field `{}`, {hint}", if allowed.is_empty() { "a" } else { "b" })
            );
        }
        let e = doc(r#"{"a": 1, "a": 2}"#).fields("", &["a", "b"]).err().unwrap();
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("a", "duplicate field `a`"));
        let e = doc("[]").fields("", &["a"]).err().unwrap();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("(root)", "invalid type: sequence, expected an object")
        );
    }

    #[test]
    fn values_are_named_in_errors() {
        let d = doc(r#"{"n": -1, "f": 1.5, "s": "yes", "big": 5000000000, "b": null, "l": ["a", 2]}"#);
        let f = d.fields("", &["n", "f", "s", "big", "b", "l"]).unwrap();
        assert_eq!(
            f.opt_uint("n", "u64", u64::MAX).unwrap_err().reason,
            "invalid value: integer `-1`, expected u64"
        );
        assert_eq!(
            f.opt_uint("f", "u64", u64::MAX).unwrap_err().reason,
            "invalid type: floating point `1.5`, expected u64"
        );
        assert_eq!(
            f.opt_uint("big", "u32", u32::MAX.into()).unwrap_err().reason,
            "invalid value: integer `5000000000`, expected u32"
        );
        assert_eq!(f.opt_bool("s").unwrap_err().reason, "invalid type: string \"yes\", expected a boolean");
        assert_eq!(f.opt_bool("b").unwrap(), None, "null is absent for an optional field");
        assert_eq!(f.bool_or_false("b").unwrap_err().field, "b", "but not for a defaulted one");
        assert!(!f.bool_or_false("missing").unwrap());
        assert_eq!(f.strings_or_empty("l").unwrap_err().field, "l[1]");
        assert!(Json::parse(b"{\"a\": }").err().unwrap().reason.contains("line 1 column"));
    }
}
