//! Sections 8 and 9: stream framing and the terminal frame, and cancellation by closing the
//! connection.

use super::Ctx;
use crate::conformance::http::{Answer, Auth};
use crate::conformance::schemas::Schemas;
use plugvisor_proto::wire::{routes, NDJSON};
use plugvisor_proto::ErrorKind;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const S8: &str = "§8 streams";
const S9: &str = "§9 cancellation";

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
