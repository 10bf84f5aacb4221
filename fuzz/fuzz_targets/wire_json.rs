//! Fuzzes the JSON wire types (request and answer bodies, `StreamFrame`, `WireError` /
//! `ErrorBody`, `CrashReport`, `FileRef` in its tagged `{"$file": {...}}` form) and the
//! file-reference walkers of `plugvisor_proto::file_ref` on arbitrary bytes: no panic, typed
//! values survive a serialize/parse round trip, serde's `FileRef` agrees with
//! `FileRef::from_value`, and `contains_file_refs`, `visit_file_refs` and `rewrite_file_refs`
//! agree with each other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugvisor_proto::file_ref::{contains_file_refs, rewrite_file_refs, visit_file_refs};
use plugvisor_proto::wire::{
    ConfigResponse, ConfigSchemaResponse, ErrorBody, ExecuteRequest, ExecuteResponse,
    HealthResponse, InfoResponse, InitializeRequest, StreamFrame,
};
use plugvisor_proto::{
    CrashCause, CrashReport, ErrorKind, ExitReason, FileRef, PluginError, Value, WireError,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// Parses `data` as `T`; when that works, serializes it and checks it reads back the same.
fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let value: T = serde_json::from_slice(data).ok()?;
    let text = serde_json::to_vec(&value).expect("a parsed wire value serializes");
    let back: T = serde_json::from_slice(&text).expect("a serialized wire value parses");
    assert_eq!(
        back,
        value,
        "round trip through {}",
        String::from_utf8_lossy(&text)
    );
    Some(value)
}

/// Parses `data` as `T` (a type without `PartialEq`) and serializes it again.
fn parse_only<T: DeserializeOwned + Serialize>(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        serde_json::to_vec(&value).expect("a parsed wire value serializes");
    }
}

/// The file references `visit_file_refs` finds in `value`, or its error.
fn visited(value: &Value) -> Result<Vec<FileRef>, String> {
    let mut found = Vec::new();
    visit_file_refs::<String>(value, &mut |file| {
        found.push(file);
        Ok(())
    })?;
    Ok(found)
}

fn check_walkers(value: &Value) {
    let contains = contains_file_refs(value);
    let found = visited(value);
    // `contains_file_refs` counts malformed references too: exactly when the walk found one
    // or stopped at a malformed one.
    let walk_saw_a_ref = match &found {
        Ok(files) => !files.is_empty(),
        Err(_) => true,
    };
    assert_eq!(contains, walk_saw_a_ref, "contains vs visit on {value}");

    // Rewriting every reference to itself: the same error as the walk, else the same
    // references, and a second rewrite changes nothing.
    let mut rewritten = value.clone();
    let mut seen = Vec::new();
    let result = rewrite_file_refs::<String>(&mut rewritten, &mut |file| {
        seen.push(file.clone());
        Ok(file)
    });
    match (&found, result) {
        (Err(walk), Err(rewrite)) => assert_eq!(walk, &rewrite),
        (Ok(files), Ok(())) => {
            assert_eq!(files, &seen);
            assert_eq!(visited(&rewritten).as_ref(), Ok(files));
            if files.is_empty() {
                assert_eq!(
                    &rewritten, value,
                    "a rewrite without references changed the value"
                );
            }
            let mut twice = rewritten.clone();
            rewrite_file_refs::<String>(&mut twice, &mut |file| Ok(file))
                .expect("a rewritten value rewrites again");
            assert_eq!(twice, rewritten);
        }
        (walk, rewrite) => panic!("visit gave {walk:?}, rewrite {rewrite:?} on {value}"),
    }

    // serde's `FileRef` reads exactly the tagged references `from_value` reads.
    let by_serde = serde_json::from_value::<FileRef>(value.clone()).ok();
    match FileRef::from_value(value) {
        Ok(Some(file)) => {
            assert_eq!(by_serde.as_ref(), Some(&file), "serde refused {value}");
            assert_eq!(
                serde_json::to_value(&file).expect("serializes"),
                file.to_value()
            );
            let _ = file.file_name();
        }
        Ok(None) | Err(_) => assert_eq!(by_serde, None, "serde read {value} as a file"),
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<HealthResponse>(data);
    round_trip::<InfoResponse>(data);
    round_trip::<StreamFrame>(data);
    round_trip::<FileRef>(data);
    round_trip::<CrashReport>(data);
    round_trip::<ExitReason>(data);
    round_trip::<ErrorKind>(data);
    round_trip::<CrashCause>(data);
    if let Some(body) = round_trip::<ErrorBody>(data) {
        let _ = PluginError::from(body.error).to_string();
    }
    if let Some(wire) = round_trip::<WireError>(data) {
        // The kind decides the status; the error survives the trip to a `PluginError`.
        let status = wire.kind.http_status();
        assert!((400..600).contains(&status), "{:?} -> {status}", wire.kind);
        let err = PluginError::from(wire);
        let _ = WireError::from(&err);
        let _ = err.to_string();
    }
    parse_only::<InitializeRequest>(data);
    parse_only::<ExecuteRequest>(data);
    parse_only::<ExecuteResponse>(data);
    parse_only::<ConfigResponse>(data);
    parse_only::<ConfigSchemaResponse>(data);

    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        check_walkers(&value);
        // Every nested value is also a candidate reference on its own.
        if let Value::Object(map) = &value {
            for inner in map.values() {
                check_walkers(inner);
            }
        }
    }
});
