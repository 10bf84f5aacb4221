//! Sections 2, 3, 6 and 11 over the worker's whole life: the usage error without a listen
//! address, stdout silence after the handshake, the audit of every error answer, and the
//! three shutdown triggers (`POST /v1/shutdown`, end of stdin, SIGTERM).

use super::Ctx;
use crate::conformance::launch::{run_bare, Target, Worker};
use crate::conformance::report::Report;
use plugvisor_proto::wire::routes;
use std::time::Duration;

const S2: &str = "§2 starting";
const S3: &str = "§3 handshake";
const S6: &str = "§6 errors";
const S11: &str = "§11 shutdown";

/// How long a worker may take to exit after a trigger: the watchdog's 3 s, and a margin.
const EXIT_WITHIN: Duration = Duration::from_millis(3500);

/// §2: without a listen address the worker says how to run it on stderr and exits with 2,
/// without waiting for input.
pub(crate) async fn usage(target: &Target, report: &mut Report) {
    let result = match run_bare(&target.spec, Duration::from_secs(5)).await {
        Err(e) => Err(format!("{e:#}")),
        Ok((None, _)) => {
            Err("still running 5 s after starting without a listen address".to_owned())
        }
        Ok((Some(status), stderr)) => match status.code() {
            Some(2) if !stderr.trim().is_empty() => Ok(()),
            Some(2) => Err("exit status 2 but nothing on stderr".to_owned()),
            _ => Err(format!(
                "{status} (expected exit status 2); stderr: {}",
                stderr.trim()
            )),
        },
    };
    report.record(
        S2,
        "no listen address: a usage line on stderr, exit 2",
        result,
    );
}

/// §6: every error answer of the session had an `ErrorBody` and the status of its kind.
pub(crate) fn error_audit(ctx: &mut Ctx<'_>) {
    let mut problems = Vec::new();
    for (request, answer) in &ctx.errors {
        let checked = answer
            .json()
            .and_then(|body| ctx.schemas.check("ErrorBody", &body).map(|()| body))
            .and_then(|body| super::status_matches_kind(answer.status, &body));
        if let Err(e) = checked {
            problems.push(format!("{request}: {e}"));
        }
    }
    let n = ctx.errors.len();
    let result = match problems.first() {
        None if n == 0 => Err("the session produced no error answer to audit".to_owned()),
        None => Ok(()),
        Some(first) => Err(format!(
            "{} of {n} error answers are wrong; first: {first}",
            problems.len()
        )),
    };
    ctx.report.record(
        S6,
        &format!("every error answer ({n}) is an ErrorBody with its kind's status"),
        result,
    );
}

/// §11 by request: `202 {"status": "stopping"}`, then exit status 0 with the socket removed;
/// then §3: nothing was printed on stdout after the handshake, all session long.
pub(crate) async fn shutdown_request(ctx: &mut Ctx<'_>) {
    let result = ctx
        .call("POST", routes::SHUTDOWN, Some(b""))
        .await
        .and_then(|a| ctx.expect_json(&a, 202, "ShutdownResponse").map(drop));
    ctx.report
        .record(S11, "POST /v1/shutdown (202 ShutdownResponse)", result);
    let exited = exits_cleanly(ctx.worker).await;
    ctx.report.record(
        S11,
        "after POST /v1/shutdown: exit 0, socket removed",
        exited,
    );
    stdout_silence(ctx.worker, ctx.report).await;
}

/// §3: nothing on stdout after the handshake line.
pub(crate) async fn stdout_silence(worker: &mut Worker, report: &mut Report) {
    let after = worker.stdout_after(Duration::from_secs(1)).await;
    let result = if after.is_empty() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&after[..after.len().min(200)]).into_owned();
        Err(format!(
            "{} bytes on stdout after the handshake: {text:?}",
            after.len()
        ))
    };
    report.record(
        S3,
        "nothing else on stdout after the handshake line",
        result,
    );
}

async fn exits_cleanly(worker: &mut Worker) -> Result<(), String> {
    let status = worker.wait_exit(EXIT_WITHIN).await.ok_or_else(|| {
        format!(
            "still running {EXIT_WITHIN:?} after the trigger{}",
            worker.stderr_tail()
        )
    })?;
    if status.code() != Some(0) {
        return Err(format!(
            "{status}, not exit status 0{}",
            worker.stderr_tail()
        ));
    }
    if worker.socket.exists() {
        return Err(format!(
            "the socket {} was left behind",
            worker.socket.display()
        ));
    }
    Ok(())
}

/// §11 by end of stdin, and by SIGTERM: each on a fresh worker, exit 0 with the socket
/// removed.
pub(crate) async fn other_triggers(target: &Target, report: &mut Report) {
    for trigger in ["end of stdin", "SIGTERM"] {
        let name = format!("{trigger}: exit 0, socket removed");
        let mut worker = match Worker::start(target).await {
            Ok(w) => w,
            Err(e) => {
                report.record(
                    S11,
                    &name,
                    Err(format!("could not start a fresh worker: {e:#}")),
                );
                continue;
            }
        };
        report.pids.push(worker.pid);
        if trigger == "SIGTERM" {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(worker.pid).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        } else {
            worker.close_stdin();
        }
        let result = exits_cleanly(&mut worker).await;
        report.record(S11, &name, result);
        worker.stop().await;
    }
}
