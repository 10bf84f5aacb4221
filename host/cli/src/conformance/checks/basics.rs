//! Sections 1, 3, 4, 5 and 12: the socket, the handshake line, the bearer token, the shape of
//! request bodies, and the body limit.

use super::Ctx;
use crate::conformance::http::Auth;
use plugvisor_proto::wire::{routes, Handshake, Transport, PROTOCOL_VERSION};
use plugvisor_proto::ErrorKind;
use serde_json::json;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

const S1: &str = "§1 transport";
const S3: &str = "§3 handshake";
const S4: &str = "§4 authentication";
const S5: &str = "§5 requests";
const S12: &str = "§12 limits";

/// The body limit the kit starts workers with (`PLUGVISOR_MAX_BODY`), small so that going
/// over it is cheap.
pub(crate) const KIT_MAX_BODY: u64 = 1024 * 1024;

/// §3: the first stdout line is `plugvisor 1 unix <the socket it was given>`.
pub(crate) fn handshake(ctx: &mut Ctx<'_>) -> bool {
    let line = ctx.worker.handshake.clone();
    let result = Handshake::parse(&line)
        .map_err(|e| e.to_string())
        .and_then(|h| {
            if h.protocol != PROTOCOL_VERSION {
                return Err(format!(
                    "protocol {} announced, the kit speaks 1",
                    h.protocol
                ));
            }
            if h.transport != Transport::Unix(ctx.worker.socket.clone()) {
                return Err(format!(
                    "it announced {line:?}, not the socket it was given ({})",
                    ctx.worker.socket.display()
                ));
            }
            Ok(())
        });
    let ok = result.is_ok();
    ctx.report
        .record(S3, "one line `plugvisor 1 unix <socket>`", result);
    ok
}

/// §1: the socket file exists, is a socket, and has mode 0600.
pub(crate) fn socket_mode(ctx: &mut Ctx<'_>) {
    let result = std::fs::metadata(&ctx.worker.socket)
        .map_err(|e| format!("{}: {e}", ctx.worker.socket.display()))
        .and_then(|m| {
            if !m.file_type().is_socket() {
                return Err("the path is not a socket".to_owned());
            }
            match m.permissions().mode() & 0o777 {
                0o600 => Ok(()),
                mode => Err(format!("socket mode {mode:o}, not 600")),
            }
        });
    ctx.report.record(S1, "socket file has mode 0600", result);
}

/// §4: every way of not presenting the token is `401 unauthorized` with
/// `WWW-Authenticate: Bearer`, before routing.
pub(crate) async fn authentication(ctx: &mut Ctx<'_>) {
    let token = ctx.worker.wire.token().to_owned();
    let wrong = format!("Bearer {}", "0".repeat(token.len()));
    let longer = format!("Bearer {token}x");
    let shorter = format!("Bearer {}", &token[..token.len() - 1]);
    let bare = token.clone();
    let lower = format!("bearer {token}");
    let cases: [(&str, &str, &str, Auth<'_>); 8] = [
        (
            "no Authorization on GET /v1/health",
            "GET",
            routes::HEALTH,
            Auth::Missing,
        ),
        (
            "no Authorization on POST /v1/execute",
            "POST",
            routes::EXECUTE,
            Auth::Missing,
        ),
        ("a wrong token", "GET", routes::INFO, Auth::Value(&wrong)),
        (
            "the token with a byte more",
            "GET",
            routes::HEALTH,
            Auth::Value(&longer),
        ),
        (
            "the token with a byte less",
            "GET",
            routes::HEALTH,
            Auth::Value(&shorter),
        ),
        (
            "the token without `Bearer `",
            "GET",
            routes::HEALTH,
            Auth::Value(&bare),
        ),
        (
            "`bearer` in lower case",
            "GET",
            routes::HEALTH,
            Auth::Value(&lower),
        ),
        (
            "before routing (unknown path)",
            "GET",
            "/v1/no-such-route",
            Auth::Missing,
        ),
    ];
    for (name, method, path, auth) in cases {
        let body = (method == "POST").then_some(&b"{\"input\": null}"[..]);
        let result = match ctx.send(method, path, auth, body).await {
            Err(e) => Err(e),
            Ok(answer) => ctx
                .expect_error(&answer, ErrorKind::Unauthorized)
                .and_then(|_| match answer.header("www-authenticate") {
                    Some(v) if v.trim().starts_with("Bearer") => Ok(()),
                    other => Err(format!(
                        "401 without `WWW-Authenticate: Bearer` (got {other:?})"
                    )),
                }),
        };
        ctx.report.record(S4, &format!("401 for {name}"), result);
    }
    probe(ctx).await;
}

/// §4, §7: `GET /v1/probe` is the one route answered without the token, and says only
/// `{"status": "pass"}` while the worker serves.
async fn probe(ctx: &mut Ctx<'_>) {
    let result = match ctx.send("GET", routes::PROBE, Auth::Missing, None).await {
        Err(e) => Err(e),
        Ok(answer) if answer.status != 200 => Err(format!("got {}", answer.brief())),
        Ok(answer) => answer.json().and_then(|body| match body {
            v if v == json!({"status": "pass"}) => Ok(()),
            other => Err(format!("body {other}, not {{\"status\":\"pass\"}}")),
        }),
    };
    let name = "GET /v1/probe without a token: 200 {\"status\":\"pass\"}";
    ctx.report.record(S4, name, result);
}

/// §5: bodies that are not the expected JSON object are `400 bad_request`, never 5xx; an
/// empty body reads as `{}`.
pub(crate) async fn bodies(ctx: &mut Ctx<'_>) {
    let unknown = ctx
        .call(
            "POST",
            routes::EXECUTE,
            Some(br#"{"input": 1, "inptu": 2}"#),
        )
        .await
        .and_then(|a| ctx.expect_error(&a, ErrorKind::BadRequest))
        .and_then(|body| {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            if message.contains("inptu") {
                Ok(())
            } else {
                Err(format!(
                    "the message does not name the field `inptu`: {message:?}"
                ))
            }
        });
    ctx.report
        .record(S5, "unknown field is 400 bad_request naming it", unknown);
    let cases: [(&str, &[u8]); 5] = [
        ("an array", b"[1]"),
        ("null", b"null"),
        ("a string", b"\"input\""),
        ("not JSON", b"{\"input\": "),
        ("no `input`", b"{}"),
    ];
    for (what, body) in cases {
        let result = ctx
            .call("POST", routes::EXECUTE, Some(body))
            .await
            .and_then(|a| ctx.expect_error(&a, ErrorKind::BadRequest).map(drop));
        ctx.report.record(
            S5,
            &format!("execute body that is {what} is 400 bad_request"),
            result,
        );
    }
    let empty = ctx
        .call("POST", routes::INITIALIZE, Some(b""))
        .await
        .and_then(|a| ctx.expect_json(&a, 200, "ConfigResponse").map(drop));
    ctx.report
        .record(S5, "empty initialize body reads as {} (200)", empty);
    let wrong_shape = ctx
        .post(routes::INITIALIZE, &json!({"config": {}, "extra": 1}))
        .await
        .and_then(|a| ctx.expect_error(&a, ErrorKind::BadRequest).map(drop));
    ctx.report.record(
        S5,
        "unknown field in initialize is 400 bad_request",
        wrong_shape,
    );
}

/// §5: bytes that are not HTTP/1.1 get a bare `400` from the HTTP layer (never a 5xx), and
/// the connection is closed.
pub(crate) async fn not_http(ctx: &mut Ctx<'_>) {
    let wire = ctx.worker.wire.clone();
    let result = wire
        .raw(b"this is not HTTP\r\n\r\n".to_vec(), Vec::new())
        .await
        .map_err(|e| format!("{e:#}"))
        .and_then(|a| match (a.status, a.closed) {
            (400, true) => Ok(()),
            (400, false) => Err("400 without closing the connection".to_owned()),
            _ => Err(format!("expected a bare 400, got {}", a.brief())),
        });
    ctx.report.record(
        S5,
        "bytes that are not HTTP/1.1 are 400, then close",
        result,
    );
}

/// §5 and §12: a body over the limit is `413 payload_too_large` with `Connection: close`,
/// from `Content-Length` before reading, and while reading a chunked body.
pub(crate) async fn body_limit(ctx: &mut Ctx<'_>) {
    let wire = ctx.worker.wire.clone();
    let over = KIT_MAX_BODY + 1;
    let mut head = wire.head("POST", routes::EXECUTE, Auth::Token);
    head.push_str(&format!("content-length: {over}\r\n\r\n"));
    let declared = wire.raw(head.into_bytes(), Vec::new()).await;
    let result = declared
        .map_err(|e| format!("Content-Length {over} and no body sent: {e:#}"))
        .and_then(|a| {
            ctx.remember("POST /v1/execute (Content-Length over the limit)", &a);
            ctx.expect_error(&a, ErrorKind::PayloadTooLarge)?;
            a.closed
                .then_some(())
                .ok_or_else(|| "413 without closing the connection".to_owned())
        });
    ctx.report.record(
        S12,
        "Content-Length over the limit is 413 before the body, then close",
        result,
    );
    let mut head = wire.head("POST", routes::EXECUTE, Auth::Token);
    head.push_str("transfer-encoding: chunked\r\n\r\n");
    let chunk = vec![b' '; 64 * 1024];
    let mut rest = b"{\"input\": \"".to_vec();
    rest.splice(0..0, format!("{:x}\r\n", rest.len()).into_bytes());
    rest.extend_from_slice(b"\r\n");
    let chunks = usize::try_from(over).unwrap_or(usize::MAX) / chunk.len() + 2;
    for _ in 0..chunks {
        rest.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        rest.extend_from_slice(&chunk);
        rest.extend_from_slice(b"\r\n");
    }
    let chunked = wire.raw(head.into_bytes(), rest).await;
    let result = chunked
        .map_err(|e| format!("a chunked body over the limit: {e:#}"))
        .and_then(|a| {
            ctx.remember("POST /v1/execute (chunked over the limit)", &a);
            ctx.expect_error(&a, ErrorKind::PayloadTooLarge).map(drop)
        });
    ctx.report
        .record(S12, "chunked body over the limit is 413", result);
}
