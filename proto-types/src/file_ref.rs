//! `FileRef`, a typed reference to file-backed data, and the walkers that find it in JSON.
//!
//! On the wire a file reference is a JSON object with the single key `"$file"`:
//!
//! ```json
//! {"$file": {"path": "/dev/shm/plugvisor-0/h-12-ab/w-1/in-3", "size": 1048576,
//!            "media_type": "application/octet-stream"}}
//! ```
//!
//! It may stand anywhere in an input or output, at any depth. Because of the `"$file"` tag it
//! can never be mistaken for an ordinary string, and an object that carries the tag but not a
//! valid body is an error, never silently treated as data.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// The JSON key that marks an object as a file reference.
pub const FILE_REF_TAG: &str = "$file";

/// A reference to a file passed by path instead of by value.
///
/// The receiving side reads the file in place (no copy through the socket). The path must lie
/// inside the transfer directory the worker was given; the worker refuses anything else.
///
/// It serializes to (and only deserializes from) the tagged form `{"$file": {...}}`, so
/// `json!({"file": file_ref})` puts a proper reference into an input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Tagged", from = "Tagged")]
pub struct FileRef {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// Size in bytes when the reference was made.
    pub size: u64,
    /// IANA media type, `application/octet-stream` when unknown.
    pub media_type: String,
}

/// The body inside the tag.
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "FileRefBody"))]
#[serde(deny_unknown_fields)]
struct Body {
    path: PathBuf,
    size: u64,
    #[serde(default = "default_media_type")]
    media_type: String,
}

/// The wire form: `{"$file": Body}`.
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Tagged {
    #[serde(rename = "$file")]
    file: Body,
}

/// The schema of the wire form, `{"$file": {"path", "size", "media_type"?}}`.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for FileRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FileRef".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        Tagged::json_schema(generator)
    }
}

impl From<FileRef> for Tagged {
    fn from(f: FileRef) -> Self {
        Self {
            file: Body {
                path: f.path,
                size: f.size,
                media_type: f.media_type,
            },
        }
    }
}

impl From<Tagged> for FileRef {
    fn from(t: Tagged) -> Self {
        Self {
            path: t.file.path,
            size: t.file.size,
            media_type: t.file.media_type,
        }
    }
}

fn default_media_type() -> String {
    "application/octet-stream".to_owned()
}

impl FileRef {
    /// A reference to `path` of `size` bytes with the default media type.
    pub fn new(path: impl Into<PathBuf>, size: u64) -> Self {
        Self {
            path: path.into(),
            size,
            media_type: default_media_type(),
        }
    }

    /// The same reference with `media_type` set.
    pub fn with_media_type(mut self, media_type: impl Into<String>) -> Self {
        self.media_type = media_type.into();
        self
    }

    /// The tagged JSON form, `{"$file": {...}}`, to put inside an input or output.
    pub fn to_value(&self) -> Value {
        let body = json!({
            "path": self.path,
            "size": self.size,
            "media_type": self.media_type,
        });
        let mut map = Map::with_capacity(1);
        map.insert(FILE_REF_TAG.to_owned(), body);
        Value::Object(map)
    }

    /// Reads a tagged file reference.
    ///
    /// Returns `Ok(None)` when `value` is not tagged as a file reference at all.
    ///
    /// # Errors
    /// A message naming the problem when `value` carries the `"$file"` tag but its body is
    /// not a valid reference (missing path, wrong types, extra keys beside the tag).
    pub fn from_value(value: &Value) -> Result<Option<Self>, String> {
        let Value::Object(map) = value else {
            return Ok(None);
        };
        let Some(body) = map.get(FILE_REF_TAG) else {
            return Ok(None);
        };
        if map.len() != 1 {
            return Err(format!(
                "an object tagged \"{FILE_REF_TAG}\" must have no other keys"
            ));
        }
        serde_json::from_value::<Body>(body.clone())
            .map(|b| Some(Tagged { file: b }.into()))
            .map_err(|e| format!("malformed file reference: {e}"))
    }

    /// The file name, for messages.
    pub fn file_name(&self) -> &Path {
        self.path
            .file_name()
            .map(Path::new)
            .unwrap_or(self.path.as_path())
    }
}

impl From<FileRef> for Value {
    fn from(file: FileRef) -> Self {
        file.to_value()
    }
}

impl From<&FileRef> for Value {
    fn from(file: &FileRef) -> Self {
        file.to_value()
    }
}

/// A value that can write itself to a file so it travels by path, not through the socket.
///
/// The host calls [`FileBacked::to_temp_file`] with the worker's transfer directory and puts the
/// returned [`FileRef`] into the call's input. A worker that returns file-backed output does the
/// same with its own transfer directory.
pub trait FileBacked {
    /// Writes the data to a new file inside `dir` and returns a reference to it.
    ///
    /// # Errors
    /// Any I/O error writing the file; no reference is returned and nothing is left behind.
    fn to_temp_file(&self, dir: &Path) -> std::io::Result<FileRef>;
}

/// Calls `visit` on every file reference in `value`, depth first.
///
/// # Errors
/// The first malformed reference (see [`FileRef::from_value`]), or the first error `visit`
/// returns; the walk stops there.
pub fn visit_file_refs<E>(
    value: &Value,
    visit: &mut dyn FnMut(FileRef) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<String>,
{
    if let Some(file) = FileRef::from_value(value)? {
        return visit(file);
    }
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| visit_file_refs(v, visit)),
        Value::Object(map) => map.values().try_for_each(|v| visit_file_refs(v, visit)),
        _ => Ok(()),
    }
}

/// Replaces every file reference in `value` with what `rewrite` returns for it, depth first.
///
/// # Errors
/// The first malformed reference, or the first error `rewrite` returns; references after it
/// are left as they were.
pub fn rewrite_file_refs<E>(
    value: &mut Value,
    rewrite: &mut dyn FnMut(FileRef) -> Result<FileRef, E>,
) -> Result<(), E>
where
    E: From<String>,
{
    if let Some(file) = FileRef::from_value(value)? {
        *value = rewrite(file)?.to_value();
        return Ok(());
    }
    match value {
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|v| rewrite_file_refs(v, rewrite)),
        Value::Object(map) => map
            .values_mut()
            .try_for_each(|v| rewrite_file_refs(v, rewrite)),
        _ => Ok(()),
    }
}

/// True when `value` holds at least one file reference (well-formed or not).
pub fn contains_file_refs(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            map.contains_key(FILE_REF_TAG) || map.values().any(contains_file_refs)
        }
        Value::Array(items) => items.iter().any(contains_file_refs),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_through_the_tagged_form() {
        let file = FileRef::new("/tmp/x", 3).with_media_type("text/plain");
        assert_eq!(file.to_value()["$file"]["media_type"], "text/plain");
        let value = file.to_value();
        assert_eq!(value["$file"]["path"], "/tmp/x");
        assert_eq!(FileRef::from_value(&value).unwrap(), Some(file));
    }

    #[test]
    fn serde_uses_the_tagged_form() {
        let file = FileRef::new("/tmp/x", 3);
        let value = json!({ "f": file });
        assert_eq!(value["f"], file.to_value());
        let back: FileRef = serde_json::from_value(value["f"].clone()).unwrap();
        assert_eq!(back, file);
        assert!(serde_json::from_value::<FileRef>(json!({"path": "/tmp/x", "size": 1})).is_err());
    }

    #[test]
    fn plain_strings_and_objects_are_not_file_refs() {
        assert_eq!(FileRef::from_value(&json!("/tmp/x")).unwrap(), None);
        assert_eq!(
            FileRef::from_value(&json!({"path": "/tmp/x"})).unwrap(),
            None
        );
        assert!(!contains_file_refs(&json!({"a": ["/tmp/x", {"path": 1}]})));
    }

    #[test]
    fn a_tagged_object_with_a_bad_body_is_an_error() {
        assert!(FileRef::from_value(&json!({"$file": {"size": 1}})).is_err());
        assert!(FileRef::from_value(&json!({"$file": {"path": "/a", "size": 1}, "x": 1})).is_err());
    }

    #[test]
    fn finds_and_rewrites_refs_at_any_depth() {
        let mut value = json!({
            "top": FileRef::new("/a", 1).to_value(),
            "list": [1, {"deep": [FileRef::new("/b", 2).to_value()]}],
        });
        let mut seen = Vec::new();
        visit_file_refs::<String>(&value, &mut |f| {
            seen.push(f.path);
            Ok(())
        })
        .unwrap();
        seen.sort();
        assert_eq!(seen, [PathBuf::from("/a"), PathBuf::from("/b")]);

        rewrite_file_refs::<String>(&mut value, &mut |mut f| {
            f.path = PathBuf::from("/x").join(f.file_name());
            Ok(f)
        })
        .unwrap();
        assert_eq!(value["list"][1]["deep"][0]["$file"]["path"], "/x/b");
        assert_eq!(value["top"]["$file"]["path"], "/x/a");
    }
}
