//! JSON Schemas of every body of `docs/PROTOCOL.md`, derived from the wire types with
//! `schemars` (feature `schema`); published under `docs/schemas/` and checked against it by a
//! test, so the documents cannot drift from the types.

use crate::error::WireError;
use crate::file_ref::FileRef;
use crate::wire::{
    AfterResponse, BeforeAction, CleanupResponse, ConfigResponse, ConfigSchemaResponse, ErrorBody,
    EventDelivery, ExecuteRequest, ExecuteResponse, HealthReport, HealthResponse, HookRequest,
    HookResponse, InfoResponse, InitializeRequest, ServiceCall, ServiceInfo, ShutdownResponse,
    StreamFrame,
};
use schemars::JsonSchema;
use serde_json::Value;

/// One published schema: the body it describes and where the protocol defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct BodySchema {
    /// The Rust type's name, also the file's stem: `docs/schemas/<name>.schema.json`.
    pub name: &'static str,
    /// The section of `docs/PROTOCOL.md` that defines the body, e.g. `"7"`.
    pub section: &'static str,
    /// The JSON Schema (draft 2020-12).
    pub schema: Value,
}

impl BodySchema {
    /// The file name it is published under: `<name>.schema.json`.
    pub fn file_name(&self) -> String {
        format!("{}.schema.json", self.name)
    }

    /// The published text: pretty JSON with a final newline.
    pub fn text(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.schema).unwrap_or_default();
        text.push('\n');
        text
    }
}

fn body<T: JsonSchema>(name: &'static str, section: &'static str) -> BodySchema {
    let mut schema = schemars::schema_for!(T).to_value();
    if let Some(map) = schema.as_object_mut() {
        // The title is the Rust type's, generics included; name it after the body instead.
        map.insert("title".to_owned(), Value::String(name.to_owned()));
        map.insert(
            "$id".to_owned(),
            Value::String(format!(
                "https://plugvisor.invalid/schemas/{name}.schema.json"
            )),
        );
    }
    BodySchema {
        name,
        section,
        schema,
    }
}

/// Every body of the protocol, in the order `docs/PROTOCOL.md` introduces them.
pub fn all() -> Vec<BodySchema> {
    vec![
        body::<ErrorBody>("ErrorBody", "6"),
        body::<WireError>("WireError", "6"),
        body::<HealthResponse>("HealthResponse", "7"),
        body::<InfoResponse>("InfoResponse", "7"),
        body::<ConfigResponse>("ConfigResponse", "7"),
        body::<ConfigSchemaResponse>("ConfigSchemaResponse", "7"),
        body::<InitializeRequest>("InitializeRequest", "7"),
        body::<ExecuteRequest>("ExecuteRequest", "7"),
        body::<ExecuteResponse>("ExecuteResponse", "7"),
        body::<HealthReport>("HealthReport", "7"),
        body::<EventDelivery>("EventDelivery", "7"),
        body::<CleanupResponse>("CleanupResponse", "7"),
        body::<ShutdownResponse>("ShutdownResponse", "7"),
        body::<HookRequest>("HookRequest", "7"),
        body::<BeforeAction>("BeforeAction", "7"),
        body::<AfterResponse>("AfterResponse", "7"),
        body::<HookResponse>("HookResponse", "7"),
        body::<StreamFrame>("StreamFrame", "8"),
        body::<FileRef>("FileRef", "10"),
        body::<ServiceCall>("ServiceCall", "13"),
        body::<ServiceInfo>("ServiceInfo", "13"),
    ]
}

/// The schema called `name` (see [`BodySchema::name`]).
pub fn named(name: &str) -> Option<BodySchema> {
    all().into_iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_is_an_object_with_its_title() {
        for s in all() {
            assert_eq!(s.schema["title"], s.name, "{}", s.name);
            assert!(s.text().ends_with("}\n"));
        }
        assert!(named("StreamFrame").is_some() && named("Nope").is_none());
    }
}
