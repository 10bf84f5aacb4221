//! Layered plugin configuration: schema defaults < manifest `[config]` < host config file <
//! environment `PLUGVISOR__<PLUGIN>__<FIELD>` < API/CLI, validated against the plugin's JSON
//! Schema before it reaches the plugin; secret fields masked wherever config is shown.

use serde_json::{Map, Value};

/// What every API shows instead of a secret value.
pub const MASK: &str = "***";

/// The defaults a JSON Schema declares (`default` of each property, recursively).
pub fn schema_defaults(schema: &Value) -> Value {
    if let Some(default) = schema.get("default") {
        return default.clone();
    }
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Value::Object(Map::new());
    };
    let mut out = Map::new();
    for (key, sub) in props {
        let value = schema_defaults(sub);
        let empty = value.as_object().is_some_and(Map::is_empty) && sub.get("default").is_none();
        if !empty {
            out.insert(key.clone(), value);
        }
    }
    Value::Object(out)
}

/// Deep-merges `over` onto `base`: objects merge key by key, anything else replaces.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (key, value) in o {
                merge(b.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (slot, value) => *slot = value.clone(),
    }
}

/// The layer from the environment: `PLUGVISOR__ECHO__MODE=upper` → `{"mode": "upper"}`.
/// Further `__` nest (`PLUGVISOR__ECHO__LIMITS__MAX=3`); values are JSON when they parse as
/// JSON (`3`, `true`, `{"a":1}`), else strings. Field names are lower-cased.
pub fn env_layer(plugin: &str, vars: impl Iterator<Item = (String, String)>) -> Value {
    let prefix = format!("PLUGVISOR__{}__", plugin.to_uppercase().replace('-', "_"));
    let mut out = Value::Object(Map::new());
    for (key, raw) in vars {
        let Some(path) = key.strip_prefix(&prefix) else {
            continue;
        };
        let value = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
        let parts: Vec<&str> = path.split("__").collect();
        let nested = parts.into_iter().rev().fold(value, |inner, part| {
            let mut map = Map::new();
            map.insert(part.to_lowercase(), inner);
            Value::Object(map)
        });
        merge(&mut out, &nested);
    }
    out
}

/// Validates `config` against `schema`.
///
/// # Errors
/// Every violation, each naming the field (a JSON pointer; `(root)` for the whole object)
/// and the rule, e.g. `mode: "shout" is not one of ["identity","upper","lower"] (rule: enum)`.
pub fn validate(schema: &Value, config: &Value) -> Result<(), Vec<String>> {
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| vec![format!("the plugin's config schema is invalid: {e}")])?;
    let problems: Vec<String> = validator
        .iter_errors(config)
        .map(|e| {
            let field = e.instance_path().to_string();
            let field = field.trim_start_matches('/').replace('/', ".");
            let field = if field.is_empty() {
                "(root)".to_owned()
            } else {
                field
            };
            let message = mask_in_message(schema, &e.to_string(), config);
            format!(
                "{field}: {message} (rule: {})",
                rule_of(e.schema_path().to_string())
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn rule_of(schema_path: String) -> String {
    schema_path
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("schema")
        .to_owned()
}

/// Keeps secret values out of validation messages.
fn mask_in_message(schema: &Value, message: &str, config: &Value) -> String {
    let mut out = message.to_owned();
    for secret in secret_values(schema, config) {
        if !secret.is_empty() {
            out = out.replace(&secret, MASK);
        }
    }
    out
}

fn secret_values(schema: &Value, config: &Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_secrets(schema, config, &mut found);
    found
}

fn collect_secrets(schema: &Value, config: &Value, found: &mut Vec<String>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, sub) in props {
        let Some(value) = config.get(key) else {
            continue;
        };
        if is_secret(sub) {
            found.push(match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        } else {
            collect_secrets(sub, value, found);
        }
    }
}

/// True when a property schema marks its value secret (`writeOnly` or `x-secret`).
pub fn is_secret(property: &Value) -> bool {
    let flag = |k: &str| property.get(k).and_then(Value::as_bool).unwrap_or(false);
    flag("writeOnly") || flag("x-secret")
}

/// `config` with every secret field (per `schema`) replaced by `"***"`.
pub fn mask_secrets(schema: &Value, config: &Value) -> Value {
    let mut out = config.clone();
    mask_in_place(schema, &mut out);
    out
}

fn mask_in_place(schema: &Value, config: &mut Value) {
    let (Some(props), Value::Object(map)) =
        (schema.get("properties").and_then(Value::as_object), config)
    else {
        return;
    };
    for (key, sub) in props {
        if let Some(value) = map.get_mut(key) {
            if is_secret(sub) {
                *value = Value::String(MASK.to_owned());
            } else {
                mask_in_place(sub, value);
            }
        }
    }
}

/// Gives every secret field (per `schema`) of `update` whose value is the mask `"***"` the
/// value `current` holds there, or removes it when `current` has none (the layers below then
/// show through): a configuration read back masked and sent again keeps its secrets.
pub fn keep_masked_secrets(schema: &Value, update: &mut Value, current: &Value) {
    let (Some(props), Value::Object(map)) =
        (schema.get("properties").and_then(Value::as_object), update)
    else {
        return;
    };
    for (key, sub) in props {
        let kept = current.get(key);
        let Some(value) = map.get_mut(key) else {
            continue;
        };
        if !is_secret(sub) {
            keep_masked_secrets(sub, value, kept.unwrap_or(&Value::Null));
        } else if value.as_str() == Some(MASK) {
            match kept {
                Some(real) => *value = real.clone(),
                None => {
                    map.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "api_key": {"type": "string", "writeOnly": true},
                "limits": {"type": "object", "properties": {"max": {"type": "integer", "default": 3}}}
            },
            "additionalProperties": false
        })
    }

    #[test]
    fn defaults_come_from_the_schema() {
        assert_eq!(
            schema_defaults(&schema()),
            json!({"mode": "a", "limits": {"max": 3}})
        );
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        let mut config = schema_defaults(&schema());
        merge(&mut config, &json!({"mode": "b"}));
        merge(&mut config, &json!({"limits": {"max": 5}}));
        let env = env_layer(
            "my-plugin",
            [
                (
                    "PLUGVISOR__MY_PLUGIN__LIMITS__MAX".to_owned(),
                    "7".to_owned(),
                ),
                ("PLUGVISOR__MY_PLUGIN__MODE".to_owned(), "a".to_owned()),
                ("PLUGVISOR__OTHER__MODE".to_owned(), "b".to_owned()),
            ]
            .into_iter(),
        );
        merge(&mut config, &env);
        assert_eq!(config, json!({"mode": "a", "limits": {"max": 7}}));
    }

    #[test]
    fn violations_name_the_field_and_the_rule() {
        let errors =
            validate(&schema(), &json!({"mode": "c", "limits": {"max": "x"}})).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("mode: ") && e.ends_with("(rule: enum)")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("limits.max: ") && e.ends_with("(rule: type)")),
            "{errors:?}"
        );
        let extra = validate(&schema(), &json!({"nope": 1})).unwrap_err();
        assert!(extra[0].contains("additionalProperties"), "{extra:?}");
        assert!(validate(&schema(), &json!({"mode": "b"})).is_ok());
    }

    #[test]
    fn secrets_are_masked_and_kept_out_of_messages() {
        let config = json!({"mode": "a", "api_key": "hunter2"});
        assert_eq!(mask_secrets(&schema(), &config)["api_key"], json!(MASK));
        let strict = json!({"type": "object", "properties": {"api_key": {"type": "string", "x-secret": true, "minLength": 10}}});
        let errors = validate(&strict, &json!({"api_key": "hunter2"})).unwrap_err();
        assert!(!errors[0].contains("hunter2"), "{errors:?}");
    }

    #[test]
    fn a_masked_secret_keeps_the_current_value() {
        let schema = json!({"type": "object", "properties": {
            "api_key": {"type": "string", "writeOnly": true},
            "db": {"type": "object", "properties": {"password": {"type": "string", "x-secret": true}}}
        }});
        let current = json!({"api_key": "hunter2", "db": {"password": "pw"}});
        let mut update = json!({"api_key": MASK, "db": {"password": MASK}, "mode": MASK});
        keep_masked_secrets(&schema, &mut update, &current);
        assert_eq!(
            update,
            json!({"api_key": "hunter2", "db": {"password": "pw"}, "mode": MASK})
        );
        let mut fresh = json!({"api_key": MASK, "db": {"password": "new"}});
        keep_masked_secrets(&schema, &mut fresh, &json!({}));
        assert_eq!(fresh, json!({"db": {"password": "new"}}));
    }
}
