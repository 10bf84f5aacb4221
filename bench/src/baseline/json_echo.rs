//! The JSON echo that bare-hyper and P7's tokio+hyper reference answer with: `{"input": …}`
//! in, `{"output": …}` out. It uses nothing of the bench crate, so the standalone
//! `plugvisor-bench-hyper` binary includes this file too (`#[path]`).

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::convert::Infallible;

/// Parses `{"input": …}` and answers `{"output": …}`.
pub async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req.into_body().collect().await.map(|c| c.to_bytes());
    let parsed = body
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let (status, out) = match parsed {
        Some(mut request) => {
            let input = request.get_mut("input").map(Value::take);
            (StatusCode::OK, json!({ "output": input }))
        }
        None => (StatusCode::BAD_REQUEST, json!({"error": "bad json"})),
    };
    let bytes = serde_json::to_vec(&out).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
