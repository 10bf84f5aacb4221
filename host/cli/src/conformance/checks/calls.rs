//! Sections 8, 9 and 10: stream framing and the terminal frame, cancellation by closing the
//! connection, and the confinement of file references to the transfer directory.

use super::Ctx;
use crate::conformance::http::{Answer, Auth};
use crate::conformance::schemas::Schemas;
use plugvisor_proto::wire::{routes, NDJSON};
use plugvisor_proto::ErrorKind;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const S8: &str = "§8 streams";
const S9: &str = "§9 cancellation";
const S10: &str = "§10 file references";

/// `POST /v1/execute_stream`: a typed error before the stream, or NDJSON frames ending with
/// exactly one terminal frame whose count is the number of items.
pub(crate) async fn stream(ctx: &mut Ctx<'_>) {
    if !ctx.has("stream") {
        ctx.report.skip(
            S8,
            "NDJSON frames and one terminal frame",
            "/v1/info does not declare the `stream` capability",
        );
        return;
    }
    let input = ctx
        .inputs
        .stream_input
        .clone()
        .unwrap_or_else(|| ctx.inputs.input.clone());
    let result = ctx
        .post(routes::EXECUTE_STREAM, &json!({"input": input}))
        .await
        .and_then(|a| {
            if a.status == 200 {
                frames(ctx.schemas, &a)
            } else {
                ctx.expect_answer(&a, "ErrorBody")
                    .map(|()| "a typed error before the stream".to_owned())
            }
        });
    let name = "NDJSON frames and one terminal frame";
    match result {
        Ok(what) => ctx.report.record(S8, &format!("{name} ({what})"), Ok(())),
        Err(e) => ctx.report.record(S8, name, Err(e)),
    }
    let bad = ctx
        .call(
            "POST",
            routes::EXECUTE_STREAM,
            Some(br#"{"input": 1, "inptu": 2}"#),
        )
        .await
        .and_then(|a| ctx.expect_error(&a, ErrorKind::BadRequest).map(drop));
    ctx.report
        .record(S8, "a bad body is a 400 error answer, not a stream", bad);
}

/// Checks a 200 stream answer; says how many items it had.
fn frames(schemas: &Schemas, answer: &Answer) -> Result<String, String> {
    let media = answer.header("content-type").unwrap_or_default();
    if !media.starts_with(NDJSON) {
        return Err(format!("content-type {media:?}, not {NDJSON}"));
    }
    let framing = answer.header("transfer-encoding").unwrap_or_default();
    if !framing.contains("chunked") {
        return Err(format!("transfer-encoding {framing:?}, not chunked"));
    }
    if !answer.body.ends_with(b"\n") {
        return Err("the body does not end with a newline (a cut frame)".to_owned());
    }
    let text = std::str::from_utf8(&answer.body).map_err(|e| format!("not UTF-8: {e}"))?;
    let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
    let mut items = 0u64;
    for (i, line) in lines.iter().enumerate() {
        let frame: Value = serde_json::from_str(line)
            .map_err(|e| format!("line {}: not JSON ({e}): {line:?}", i + 1))?;
        schemas
            .check("StreamFrame", &frame)
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        let last = i + 1 == lines.len();
        if frame.get("item").is_some() {
            if last {
                return Err(format!(
                    "no terminal frame: the stream ended after {} items",
                    items + 1
                ));
            }
            items += 1;
        } else if !last {
            return Err(format!(
                "a terminal frame on line {} is followed by more",
                i + 1
            ));
        } else if let Some(end) = frame.get("end") {
            if end["count"] != items {
                return Err(format!("end count {} after {items} items", end["count"]));
            }
        } else {
            schemas.check("ErrorBody", &frame)?;
            if super::kind_of(&frame).is_none() {
                return Err(format!("error frame with a kind not in section 6: {line}"));
            }
        }
    }
    Ok(format!("{items} items"))
}

/// §9: closing a streaming call's connection drops it: `in_flight` goes back down.
pub(crate) async fn cancellation(ctx: &mut Ctx<'_>) {
    let name = "closing the connection drops the call (in_flight back to 0)";
    let Some(input) = ctx.inputs.slow_input.clone() else {
        ctx.report.skip(
            S9,
            name,
            "needs an input whose stream lasts a while: give --slow-input JSON",
        );
        return;
    };
    if !ctx.has("stream") {
        ctx.report.skip(
            S9,
            name,
            "/v1/info does not declare the `stream` capability",
        );
        return;
    }
    let result = cancel_stream(ctx, &input).await;
    ctx.report.record(S9, name, result);
}

async fn cancel_stream(ctx: &mut Ctx<'_>, input: &Value) -> Result<(), String> {
    let wire = ctx.worker.wire.clone();
    let body = json!({"input": input}).to_string();
    let mut head = wire.head("POST", routes::EXECUTE_STREAM, Auth::Token);
    head.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    let mut stream = wire.connect().await.map_err(|e| format!("{e:#}"))?;
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first))
        .await
        .map_err(|_| "the stream sent nothing within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&first[..n]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "the slow input did not start a stream: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    let busy = in_flight(ctx).await?;
    if busy < 1 {
        return Err(format!("in_flight is {busy} while the stream runs"));
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = in_flight(ctx).await?;
        if now == busy - 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "in_flight still {now} 2 s after the connection closed"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn in_flight(ctx: &mut Ctx<'_>) -> Result<u64, String> {
    let a = ctx.call("GET", routes::HEALTH, None).await?;
    let v = ctx.expect_json(&a, 200, "HealthResponse")?;
    v["in_flight"]
        .as_u64()
        .ok_or_else(|| "no in_flight".to_owned())
}

/// §10: references outside the transfer directory, through a symbolic link, to a
/// directory or a FIFO, relative or with `..`, are `403 file_access_denied` naming the
/// path; malformed ones `400`; a good one reaches the plugin and is left as it was.
pub(crate) async fn file_references(ctx: &mut Ctx<'_>) {
    let dir = ctx.worker.transfer_dir.clone();
    let Ok(places) = Places::make(&dir) else {
        ctx.report.skip(
            S10,
            "refused references",
            "could not prepare files in the transfer directory",
        );
        return;
    };
    let refused: [(&str, String); 7] = [
        ("outside the transfer directory", places.outside.clone()),
        (
            "with a `..` component",
            format!("{}/../transfer/{}", dir.display(), places.good_name),
        ),
        ("a symbolic link", places.link.clone()),
        ("a directory", places.subdir.clone()),
        ("a FIFO", places.fifo.clone()),
        ("a relative path", format!("transfer/{}", places.good_name)),
        ("the transfer directory itself", dir.display().to_string()),
    ];
    for (what, path) in refused {
        let input = json!({"nested": [{"file": {"$file": {"path": path, "size": 3}}}]});
        let result = ctx
            .post(routes::EXECUTE, &json!({"input": input}))
            .await
            .and_then(|a| ctx.expect_error(&a, ErrorKind::FileAccessDenied))
            .and_then(|body| names_path(&body, &path));
        ctx.report
            .record(S10, &format!("{what} is 403 file_access_denied"), result);
    }
    let malformed = [
        (
            "with another key beside `$file`",
            json!({"$file": {"path": places.good, "size": 3}, "x": 1}),
        ),
        (
            "whose body lacks `size`",
            json!({"$file": {"path": places.good}}),
        ),
        (
            "whose body has an unknown key",
            json!({"$file": {"path": places.good, "size": 3, "mode": 1}}),
        ),
    ];
    for (what, file) in malformed {
        let result = ctx
            .post(routes::EXECUTE, &json!({"input": {"file": file}}))
            .await
            .and_then(|a| ctx.expect_error(&a, ErrorKind::BadRequest).map(drop));
        ctx.report.record(
            S10,
            &format!("a reference {what} is 400 bad_request"),
            result,
        );
    }
    let reference = json!({"$file": {"path": places.good, "size": 3}});
    let input = match &ctx.inputs.input {
        Value::Object(map) => {
            let mut map = map.clone();
            map.insert("file".to_owned(), reference);
            Value::Object(map)
        }
        _ => json!({"file": reference}),
    };
    let answer = ctx.post(routes::EXECUTE, &json!({"input": input})).await;
    let result = answer.as_ref().map_err(Clone::clone).and_then(|a| {
        if let Some(kind) = a.json().ok().as_ref().and_then(super::kind_of) {
            if matches!(kind, ErrorKind::FileAccessDenied | ErrorKind::BadRequest) {
                return Err(format!(
                    "a reference inside the transfer directory was refused: {}",
                    a.brief()
                ));
            }
        }
        ctx.expect_answer(a, "ExecuteResponse")?;
        match std::fs::read(&places.good) {
            Ok(data) if data == b"abc" => Ok(()),
            Ok(_) => Err("the worker modified its input file".to_owned()),
            Err(e) => Err(format!(
                "the input file is gone ({e}): a worker MUST NOT delete inputs"
            )),
        }
    });
    ctx.report.record(
        S10,
        "a reference inside the transfer directory is accepted and left intact",
        result,
    );
    let output = answer
        .ok()
        .filter(|a| a.status == 200)
        .and_then(|a| a.json().ok());
    output_files(ctx, output.as_ref(), &places.good);
}

/// §10: file references the worker made for an output lie in `PLUGVISOR_OUTPUT_DIR` and are
/// regular files.
///
/// A reference to the call's own input (`input`) may come back as is, as the host allows.
fn output_files(ctx: &mut Ctx<'_>, output: Option<&Value>, input: &str) {
    let name = "output references are regular files in PLUGVISOR_OUTPUT_DIR";
    let mut paths = Vec::new();
    if let Some(output) = output {
        collect_refs(&output["output"], &mut paths);
    }
    paths.retain(|p| p != input);
    if paths.is_empty() {
        ctx.report.skip(S10, name, "no output carried a file reference of its own (an --input object that makes one gets the kit's file as `file`)");
        return;
    }
    let out_dir = ctx
        .worker
        .transfer_dir
        .join(plugvisor_proto::wire::OUTPUT_SUBDIR);
    let result = paths.iter().try_for_each(|path| {
        let p = Path::new(path);
        if !p.starts_with(&out_dir)
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!("{path} is not in {}", out_dir.display()));
        }
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_file() => Ok(()),
            Ok(_) => Err(format!("{path} is not a regular file")),
            Err(e) => Err(format!("{path}: {e}")),
        }
    });
    ctx.report.record(S10, name, result);
}

/// Every `$file` path in `value`, at any depth.
fn collect_refs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => match map.get("$file") {
            Some(body) => into.push(body["path"].as_str().unwrap_or_default().to_owned()),
            None => map.values().for_each(|v| collect_refs(v, into)),
        },
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, into)),
        _ => {}
    }
}

fn names_path(body: &Value, path: &str) -> Result<(), String> {
    let message = body["error"]["message"].as_str().unwrap_or_default();
    if message.contains(path) || message.contains(path.trim_end_matches('/')) {
        Ok(())
    } else {
        Err(format!(
            "the message does not name the path {path:?}: {message:?}"
        ))
    }
}

/// Files the §10 checks point at.
struct Places {
    good: String,
    good_name: String,
    outside: String,
    link: String,
    subdir: String,
    fifo: String,
}

impl Places {
    fn make(dir: &Path) -> std::io::Result<Self> {
        let parent = dir.parent().unwrap_or(dir);
        let outside = parent.join("outside.txt");
        std::fs::write(&outside, b"abc")?;
        let good_name = "in-conformance.txt".to_owned();
        let good = dir.join(&good_name);
        std::fs::write(&good, b"abc")?;
        let link = dir.join("link.txt");
        std::os::unix::fs::symlink(&outside, &link)?;
        let subdir = dir.join("sub");
        std::fs::create_dir(&subdir)?;
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(std::io::Error::from)?;
        let s = |p: &Path| p.display().to_string();
        Ok(Self {
            good: s(&good),
            good_name,
            outside: s(&outside),
            link: s(&link),
            subdir: s(&subdir),
            fifo: s(&fifo),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(body: &str) -> Answer {
        Answer {
            status: 200,
            headers: vec![
                ("content-type".into(), NDJSON.into()),
                ("transfer-encoding".into(), "chunked".into()),
            ],
            body: body.as_bytes().to_vec(),
            closed: false,
        }
    }

    #[test]
    fn streams_without_one_last_terminal_frame_fail() {
        let s = Schemas::new().unwrap();
        let good = "{\"item\":1}\n{\"item\":2}\n{\"end\":{\"count\":2}}\n";
        assert_eq!(frames(&s, &stream(good)).unwrap(), "2 items");
        let failed = "{\"item\":1}\n{\"error\":{\"kind\":\"plugin_failed\",\"message\":\"m\"}}\n";
        assert!(frames(&s, &stream(failed)).is_ok());
        for (bad, why) in [
            ("{\"item\":1}\n", "no terminal frame"),
            ("{\"item\":1}\n{\"end\":{\"count\":2}}\n", "end count"),
            (
                "{\"end\":{\"count\":0}}\n{\"item\":1}\n",
                "followed by more",
            ),
            ("{\"item\":1}\n{\"end\":{\"count\":1}}", "newline"),
            (
                "{\"item\":1,\"x\":2}\n{\"end\":{\"count\":1}}\n",
                "StreamFrame",
            ),
            (
                "{\"error\":{\"kind\":\"oops\",\"message\":\"m\"}}\n",
                "StreamFrame",
            ),
        ] {
            let err = frames(&s, &stream(bad)).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let mut unframed = stream(good);
        unframed.headers.pop();
        assert!(frames(&s, &unframed).unwrap_err().contains("chunked"));
    }
}
