//! Typed configuration for Rust plugins: one serde + schemars type gives a plugin its JSON
//! Schema (secrets `writeOnly`), validation that names the field, and the configuration in
//! force ([`Settings`], and [`typed_config!`](crate::typed_config) to write the three
//! `Plugin` methods).

use plugvisor_proto::{PluginError, Value};
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

/// What a plugin's configuration type must be: read from JSON (serde), written back as JSON
/// (`current_config`), described by a JSON Schema (schemars), with defaults for missing keys.
///
/// Derive it: `#[derive(Default, Deserialize, Serialize, JsonSchema)]` with
/// `#[serde(default, deny_unknown_fields)]`; mark a secret field
/// `#[schemars(extend("writeOnly" = true))]` and the host masks it as `"***"` in every answer
/// and keeps it on a read-modify-write.
pub trait Config:
    DeserializeOwned + Serialize + JsonSchema + Default + Send + Sync + 'static
{
}

impl<T> Config for T where
    T: DeserializeOwned + Serialize + JsonSchema + Default + Send + Sync + 'static
{
}

/// The configuration in force of a plugin whose configuration type is `C`: replaced whole by
/// [`Settings::apply`] (a rejected configuration leaves the previous one in force), read as a
/// snapshot by [`Settings::get`].
///
/// ```
/// use plugvisor_worker::Settings;
/// use schemars::JsonSchema;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
/// #[serde(default, deny_unknown_fields)]
/// struct Greeting {
///     /// Put in front of every answer.
///     prefix: String,
///     /// Sent to the upstream service; never shown back.
///     #[schemars(extend("writeOnly" = true))]
///     api_key: String,
/// }
///
/// let settings = Settings::<Greeting>::default();
/// settings.apply(Some(serde_json::json!({"prefix": "> "}))).unwrap();
/// assert_eq!(settings.get().prefix, "> ");
/// let err = settings.apply(Some(serde_json::json!({"prefix": 5}))).unwrap_err();
/// assert!(err.to_string().contains("prefix: invalid type"), "{err}");
/// assert_eq!(settings.get().prefix, "> ");
/// assert_eq!(settings.schema()["properties"]["api_key"]["writeOnly"], true);
/// ```
pub struct Settings<C> {
    current: RwLock<Arc<C>>,
    schema: OnceLock<Value>,
}

impl<C: Config> Default for Settings<C> {
    fn default() -> Self {
        Self::new(C::default())
    }
}

impl<C: fmt::Debug> fmt::Debug for Settings<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Settings")
            .field("current", &*current)
            .finish_non_exhaustive()
    }
}

impl<C: Config> Settings<C> {
    /// Settings starting with `initial` in force.
    pub fn new(initial: C) -> Self {
        Self {
            current: RwLock::new(Arc::new(initial)),
            schema: OnceLock::new(),
        }
    }

    /// The configuration in force (a snapshot: a later [`Settings::apply`] does not change it).
    pub fn get(&self) -> Arc<C> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads `config` (`None` or `null`: the defaults; missing keys take theirs) and puts it
    /// in force; returns it.
    ///
    /// # Errors
    /// [`PluginError::InvalidConfig`] naming the field and the rule; the previous
    /// configuration stays in force.
    pub fn apply(&self, config: Option<Value>) -> Result<Arc<C>, PluginError> {
        self.apply_checked(config, |_| Ok(()))
    }

    /// [`Settings::apply`] with a rule of the plugin's own that serde cannot say (a range, two
    /// fields that go together): `check` sees the parsed configuration before it is put in
    /// force, and its error rejects it.
    ///
    /// # Errors
    /// As [`Settings::apply`], and `check`'s error.
    pub fn apply_checked(
        &self,
        config: Option<Value>,
        check: impl FnOnce(&C) -> Result<(), PluginError>,
    ) -> Result<Arc<C>, PluginError> {
        let parsed = parse::<C>(config)?;
        check(&parsed)?;
        let parsed = Arc::new(parsed);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&parsed);
        Ok(parsed)
    }

    /// The JSON Schema of `C` (draft 2020-12, subschemas inlined so a form or the host's
    /// secret masking reads every property in place), made once.
    pub fn schema(&self) -> Value {
        self.schema.get_or_init(schema_of::<C>).clone()
    }

    /// The configuration in force as JSON, defaults filled in (secrets included: the host
    /// masks `writeOnly` fields before anyone sees them).
    pub fn current(&self) -> Value {
        serde_json::to_value(&*self.get()).unwrap_or(Value::Null)
    }
}

/// Reads a configuration of type `C` from JSON: `None` or `null` is `C::default()`; anything
/// else must be an object.
///
/// # Errors
/// [`PluginError::InvalidConfig`] with the path of the offending field first
/// (`limits.max: invalid type: string "x", expected u32`; `config: …` for the whole value).
pub fn parse<C: DeserializeOwned + Default>(config: Option<Value>) -> Result<C, PluginError> {
    let value = match config {
        None | Some(Value::Null) => return Ok(C::default()),
        Some(value @ Value::Object(_)) => value,
        Some(other) => {
            return Err(PluginError::invalid_config(format!(
                "config: must be an object, got {other}"
            )))
        }
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." { "config" } else { &path };
        PluginError::invalid_config(format!("{at}: {}", e.inner()))
    })
}

/// The JSON Schema of `C` as [`Settings::schema`] makes it: draft 2020-12, subschemas
/// inlined, and a unit-variant enum written as `enum` (schemars writes a `oneOf` of `const`s
/// when its variants have doc comments; forms and error messages read `enum` better).
pub fn schema_of<C: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<C>().to_value();
    consts_to_enums(&mut schema);
    schema
}

/// Rewrites every `{"oneOf": [{"const": a, "type": t}, …]}` (each branch only a `const`, a
/// `type` and a `description`) as `{"type": t, "enum": [a, …]}`, at any depth.
fn consts_to_enums(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(values) = map.get("oneOf").and_then(const_branches) {
                map.remove("oneOf");
                map.insert("enum".to_owned(), Value::Array(values.0));
                if let Some(kind) = values.1 {
                    map.entry("type").or_insert(kind);
                }
            }
            map.values_mut().for_each(consts_to_enums);
        }
        Value::Array(items) => items.iter_mut().for_each(consts_to_enums),
        _ => {}
    }
}

/// The constants of a `oneOf` whose every branch is a documented `const` of one `type`.
fn const_branches(one_of: &Value) -> Option<(Vec<Value>, Option<Value>)> {
    let branches = one_of.as_array()?;
    let mut kind = None;
    let mut values = Vec::with_capacity(branches.len());
    for branch in branches {
        let branch = branch.as_object()?;
        let plain = branch
            .keys()
            .all(|k| matches!(k.as_str(), "const" | "type" | "description"));
        if !plain || (kind.is_some() && kind.as_ref() != branch.get("type")) {
            return None;
        }
        kind = branch.get("type").cloned();
        values.push(branch.get("const")?.clone());
    }
    (!values.is_empty()).then_some((values, kind))
}

/// Writes a plugin's `initialize`, `config_schema` and `current_config` from a
/// [`Settings`] field: `typed_config!(settings);` inside `impl Plugin for …`.
///
/// `typed_config!(settings; without initialize)` writes only `config_schema` and
/// `current_config`, for a plugin whose own `initialize` does more than
/// `self.settings.apply(config)`.
///
/// ```
/// use plugvisor_proto::{Plugin, PluginError, Value};
/// use plugvisor_worker::{typed_config, Settings};
/// use schemars::JsonSchema;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
/// #[serde(default, deny_unknown_fields)]
/// struct Config {
///     /// Times to repeat the input.
///     times: u32,
/// }
///
/// #[derive(Default)]
/// struct Repeat {
///     settings: Settings<Config>,
/// }
///
/// impl Plugin for Repeat {
///     fn name(&self) -> &str { "repeat" }
///     fn version(&self) -> &str { "1.0.0" }
///     typed_config!(settings);
///     async fn execute(&self, input: Value) -> Result<Value, PluginError> {
///         let times = self.settings.get().times as usize;
///         Ok(Value::Array(vec![input; times]))
///     }
/// }
/// ```
#[macro_export]
macro_rules! typed_config {
    ($field:ident) => {
        fn initialize(
            &self,
            config: ::core::option::Option<$crate::__private::Value>,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<(), $crate::__private::PluginError>,
        > + Send {
            let applied = self.$field.apply(config).map(drop);
            async move { applied }
        }
        $crate::typed_config!($field; without initialize);
    };
    ($field:ident; without initialize) => {
        fn config_schema(&self) -> $crate::__private::Value {
            self.$field.schema()
        }
        fn current_config(&self) -> $crate::__private::Value {
            self.$field.current()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize, Serialize, JsonSchema)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        /// As given.
        #[default]
        Plain,
        /// Upper case.
        Loud,
    }

    #[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
    #[serde(default, deny_unknown_fields)]
    struct Limits {
        max: u32,
    }

    /// A configuration with an enum, a nested object and a secret.
    #[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        /// How to answer.
        mode: Mode,
        limits: Limits,
        #[schemars(extend("writeOnly" = true))]
        token: String,
    }

    #[test]
    fn errors_name_the_field_and_keep_the_old_config() {
        let settings = Settings::<Sample>::default();
        settings
            .apply(Some(json!({"mode": "loud", "limits": {"max": 3}})))
            .unwrap();
        let cases = [
            (json!({"mode": "shout"}), "mode: unknown variant `shout`"),
            (json!({"limits": {"max": "x"}}), "limits.max: invalid type"),
            (json!({"volume": 11}), "unknown field `volume`"),
            (json!([1]), "config: must be an object, got [1]"),
        ];
        for (config, want) in cases {
            let err = settings.apply(Some(config)).unwrap_err();
            assert!(matches!(err, PluginError::InvalidConfig(_)), "{err:?}");
            assert!(
                err.to_string().contains(want),
                "{err} should contain {want}"
            );
        }
        assert_eq!(settings.get().mode, Mode::Loud);
        assert_eq!(settings.get().limits.max, 3);
    }

    #[test]
    fn a_failed_check_keeps_the_old_config() {
        let settings = Settings::<Limits>::default();
        let at_most_10 = |l: &Limits| {
            (l.max <= 10)
                .then_some(())
                .ok_or_else(|| PluginError::invalid_config("max: at most 10"))
        };
        settings
            .apply_checked(Some(json!({"max": 7})), at_most_10)
            .unwrap();
        let err = settings
            .apply_checked(Some(json!({"max": 11})), at_most_10)
            .unwrap_err();
        assert!(err.to_string().contains("max: at most 10"), "{err}");
        assert_eq!(settings.get().max, 7);
    }

    #[test]
    fn only_plain_const_branches_become_an_enum() {
        let mut mixed = json!({"oneOf": [{"const": "a", "type": "string"},
                                         {"type": "object", "properties": {}}]});
        let before = mixed.clone();
        consts_to_enums(&mut mixed);
        assert_eq!(mixed, before);
        let mut plain = json!({"x": {"oneOf": [{"const": 1, "type": "integer"},
                                               {"const": 2, "type": "integer"}]}});
        consts_to_enums(&mut plain);
        assert_eq!(plain, json!({"x": {"enum": [1, 2], "type": "integer"}}));
    }

    #[test]
    fn none_and_null_mean_the_defaults() {
        let settings = Settings::<Sample>::default();
        settings.apply(Some(json!({"mode": "loud"}))).unwrap();
        settings.apply(None).unwrap();
        assert_eq!(settings.get().mode, Mode::Plain);
        settings.apply(Some(json!({"mode": "loud"}))).unwrap();
        settings.apply(Some(Value::Null)).unwrap();
        assert_eq!(settings.get().mode, Mode::Plain);
    }

    #[test]
    fn the_schema_is_inlined_with_defaults_descriptions_and_secrets() {
        let schema = Settings::<Sample>::default().schema();
        assert!(schema.get("$defs").is_none(), "{schema}");
        let props = &schema["properties"];
        assert_eq!(props["mode"]["enum"], json!(["plain", "loud"]), "{schema}");
        assert_eq!(props["mode"]["type"], "string", "{schema}");
        assert!(props["mode"].get("oneOf").is_none(), "{schema}");
        assert_eq!(props["mode"]["description"], "How to answer.");
        assert_eq!(props["limits"]["properties"]["max"]["type"], "integer");
        assert_eq!(props["token"]["writeOnly"], true);
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(props["mode"]["default"], "plain", "{schema}");
    }

    #[test]
    fn current_is_the_config_with_defaults_filled_in() {
        let settings = Settings::<Sample>::default();
        settings.apply(Some(json!({"token": "s3"}))).unwrap();
        assert_eq!(
            settings.current(),
            json!({"mode": "plain", "limits": {"max": 0}, "token": "s3"})
        );
    }
}
