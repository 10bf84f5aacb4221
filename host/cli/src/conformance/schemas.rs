//! Every answer the kit receives is validated against the published JSON Schema of its body
//! (`plugvisor_proto::schema`, the same schemas as `docs/schemas/`).

use plugvisor_proto::schema;
use serde_json::Value;
use std::collections::BTreeMap;

/// The compiled schemas, by body name.
pub(crate) struct Schemas {
    validators: BTreeMap<&'static str, jsonschema::Validator>,
}

impl Schemas {
    /// Compiles every published schema.
    ///
    /// # Errors
    /// A schema that does not compile (a bug in the wire types' derivation).
    pub(crate) fn new() -> anyhow::Result<Self> {
        let mut validators = BTreeMap::new();
        for body in schema::all() {
            let validator = jsonschema::validator_for(&body.schema)
                .map_err(|e| anyhow::anyhow!("schema {} does not compile: {e}", body.name))?;
            validators.insert(body.name, validator);
        }
        Ok(Self { validators })
    }

    /// Checks `value` against the schema `name`.
    ///
    /// # Errors
    /// The first violations, each with its JSON pointer, naming the schema.
    pub(crate) fn check(&self, name: &str, value: &Value) -> Result<(), String> {
        let Some(validator) = self.validators.get(name) else {
            return Err(format!("no schema called {name}"));
        };
        let problems: Vec<String> = validator
            .iter_errors(value)
            .take(3)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() {
                    "(root)".to_owned()
                } else {
                    at
                };
                format!("{at}: {e}")
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "does not match docs/schemas/{name}.schema.json: {} (body {})",
                problems.join("; "),
                truncate(&value.to_string(), 300)
            ))
        }
    }
}

/// At most `max` bytes of `text`, on a character boundary, with `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_wrong_shape_is_named_with_its_place() {
        let s = Schemas::new().unwrap();
        assert!(s
            .check(
                "HealthResponse",
                &json!({"status": "ok", "in_flight": 0, "calls_total": 0, "pid": 1})
            )
            .is_ok());
        let err = s
            .check("HealthResponse", &json!({"status": "ok"}))
            .unwrap_err();
        assert!(err.contains("HealthResponse"), "{err}");
    }
}
