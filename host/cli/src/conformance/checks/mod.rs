//! The checks, one function per rule of `docs/PROTOCOL.md`, grouped by section, and what
//! they share: [`Ctx`], the worker under test with its client, the schemas, the report and
//! the inputs to use.

pub(crate) mod basics;
pub(crate) mod calls;
pub(crate) mod extensions;
pub(crate) mod files;
pub(crate) mod lifecycle;
pub(crate) mod routes;
pub(crate) mod transfer;

use super::http::{Answer, Auth};
use super::launch::Worker;
use super::report::Report;
use super::schemas::Schemas;
use plugvisor_proto::wire::InfoResponse;
use plugvisor_proto::ErrorKind;
use serde_json::Value;

/// Inputs for checks that need plugin-specific values.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inputs {
    /// The input of `execute` and named methods (`--input`, default `null`).
    pub(crate) input: Value,
    /// The input of `execute_stream` (`--stream-input`, default: `input`).
    pub(crate) stream_input: Option<Value>,
    /// An input whose stream lasts at least a second (`--slow-input`), for cancellation.
    pub(crate) slow_input: Option<Value>,
    /// The configuration to initialize with (a manifest's `[config]`, `--config`).
    pub(crate) config: Option<Value>,
}

/// One worker under test and everything a check needs.
pub(crate) struct Ctx<'a> {
    pub(crate) worker: &'a mut Worker,
    pub(crate) schemas: &'a Schemas,
    pub(crate) report: &'a mut Report,
    pub(crate) inputs: &'a Inputs,
    /// What `/v1/info` said, once read.
    pub(crate) info: Option<InfoResponse>,
    /// Every error answer seen (request, answer), for the §6 audit.
    pub(crate) errors: Vec<(String, Answer)>,
}

impl Ctx<'_> {
    /// Sends a request with the right token (see [`Ctx::send`]).
    pub(crate) async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, String> {
        self.send(method, path, Auth::Token, body).await
    }

    /// `POST path` with a JSON body.
    pub(crate) async fn post(&mut self, path: &str, body: &Value) -> Result<Answer, String> {
        let body = body.to_string();
        self.call("POST", path, Some(body.as_bytes())).await
    }

    /// Sends a request, remembering error answers for the §6 audit.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        body: Option<&[u8]>,
    ) -> Result<Answer, String> {
        let answer = self
            .worker
            .wire
            .send(method, path, auth, &[], body)
            .await
            .map_err(|e| {
                let why = format!("{method} {path}: {e:#}");
                match self.worker.exited() {
                    Some(status) => format!(
                        "{why} (the worker has exited: {status}{})",
                        self.worker.stderr_tail()
                    ),
                    None => why,
                }
            })?;
        self.remember(&format!("{method} {path}"), &answer);
        Ok(answer)
    }

    /// Keeps `answer` for the §6 audit when it is an error.
    pub(crate) fn remember(&mut self, request: &str, answer: &Answer) {
        if answer.status >= 400 {
            self.errors.push((request.to_owned(), answer.clone()));
        }
    }

    /// Whether `/v1/info` lists `capability`.
    pub(crate) fn has(&self, capability: &str) -> bool {
        self.info
            .as_ref()
            .is_some_and(|i| i.capabilities.iter().any(|c| c == capability))
    }

    /// The answer's JSON body when it has `status` and matches the schema `schema`.
    pub(crate) fn expect_json(
        &self,
        answer: &Answer,
        status: u16,
        schema: &str,
    ) -> Result<Value, String> {
        if answer.status != status {
            return Err(format!("expected status {status}, got {}", answer.brief()));
        }
        let value = answer.json()?;
        self.schemas.check(schema, &value)?;
        Ok(value)
    }

    /// Checks that `answer` is the typed error `kind` with that kind's status.
    pub(crate) fn expect_error(&self, answer: &Answer, kind: ErrorKind) -> Result<Value, String> {
        let want = kind.http_status();
        if answer.status != want {
            return Err(format!(
                "expected {want} {}, got {}",
                kind.as_str(),
                answer.brief()
            ));
        }
        let body = answer.json()?;
        self.schemas.check("ErrorBody", &body)?;
        if body["error"]["kind"] != kind.as_str() {
            return Err(format!(
                "expected kind {}, got {}",
                kind.as_str(),
                body["error"]["kind"]
            ));
        }
        Ok(body)
    }

    /// A success with `schema`, or any well-formed typed error whose kind is a plugin's
    /// (the plugin may reject the kit's input): for calls whose input the kit had to guess.
    pub(crate) fn expect_answer(&self, answer: &Answer, schema: &str) -> Result<(), String> {
        if (200..300).contains(&answer.status) {
            return self.expect_json(answer, answer.status, schema).map(drop);
        }
        let body = answer.json()?;
        self.schemas.check("ErrorBody", &body)?;
        let kind = kind_of(&body);
        if matches!(kind, Some(ErrorKind::BadRequest)) {
            return Err(format!(
                "a well-formed request was refused: {}",
                answer.brief()
            ));
        }
        status_matches_kind(answer.status, &body)
    }
}

/// The error kind of an error body, if it is one this version knows.
pub(crate) fn kind_of(body: &Value) -> Option<ErrorKind> {
    serde_json::from_value::<ErrorKind>(body["error"]["kind"].clone())
        .ok()
        .filter(|k| *k != ErrorKind::Unknown)
}

/// §6: the status an error answer has is the one its kind decides.
pub(crate) fn status_matches_kind(status: u16, body: &Value) -> Result<(), String> {
    let Some(kind) = kind_of(body) else {
        return Err(format!(
            "kind {} is not in the table of section 6",
            body["error"]["kind"]
        ));
    };
    if kind.http_status() != status {
        return Err(format!(
            "kind {} travels with status {}, not {status}",
            kind.as_str(),
            kind.http_status()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_error_status_must_be_its_kinds() {
        let body = |kind: &str| json!({"error": {"kind": kind, "message": "m"}});
        assert!(status_matches_kind(404, &body("not_found")).is_ok());
        assert!(status_matches_kind(500, &body("not_found")).is_err());
        assert!(status_matches_kind(500, &body("quota_exceeded")).is_err());
    }
}
