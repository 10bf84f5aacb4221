//! Section 10: file references are confined to the transfer directory (outside, `..`,
//! symbolic links, directories, FIFOs, relative paths refused; malformed ones are `400`), inputs
//! are left as they were, and output files land in `PLUGVISOR_OUTPUT_DIR`.

use super::Ctx;
use plugvisor_proto::wire::routes;
use plugvisor_proto::ErrorKind;
use serde_json::{json, Value};
use std::path::Path;

const S10: &str = "§10 file references";

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
