"""Unit tests of file references: confinement to the transfer directory, conversion, outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import plugvisor
from plugvisor import _files
from plugvisor._files import FileRef, MalformedFileRef, TransferDir, check_and_convert_input
from plugvisor._wire import dumps


@pytest.fixture
def xfer(tmp_path):
    d = tmp_path / "xfer"
    d.mkdir()
    (d / "sub").mkdir()
    (d / "sub" / "f").write_bytes(b"inside")
    return d


def refused(t: TransferDir, path: str) -> str:
    with pytest.raises(plugvisor.FileAccessDenied) as caught:
        t.check(path)
    message = caught.value.message
    assert message.startswith(f"{path}: ")
    return message


def test_a_regular_file_inside_is_accepted(xfer):
    t = TransferDir(xfer)
    t.check(str(xfer / "sub" / "f"))
    with os.fdopen(t.open_ref(str(xfer / "sub" / "f")), "rb") as f:
        assert f.read() == b"inside"


def test_lexical_rules(xfer, tmp_path):
    t = TransferDir(xfer)
    assert "not absolute" in refused(t, "sub/f")
    assert "'.' or '..'" in refused(t, f"{xfer}/sub/../sub/f")
    assert "'.' or '..'" in refused(t, f"{xfer}/./sub/f")
    assert "'.' or '..'" in refused(t, f"{xfer}/sub/f/..")
    assert "outside the transfer directory" in refused(t, "/etc/passwd")
    assert "outside the transfer directory" in refused(t, f"{xfer}x/sub/f")
    assert "outside the transfer directory" in refused(t, str(tmp_path))
    assert "the transfer directory itself" in refused(t, str(xfer))
    assert "the transfer directory itself" in refused(t, str(xfer) + "/")


def test_symlinks_anywhere_in_the_path_are_refused(xfer, tmp_path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    os.symlink(outside, xfer / "to-outside")
    os.symlink(xfer / "sub" / "f", xfer / "to-inside")
    os.symlink(xfer / "sub", xfer / "dir-link")
    os.symlink(tmp_path, xfer / "dir-out")
    t = TransferDir(xfer)
    for name in ("to-outside", "to-inside", "dir-link/f", "dir-out/secret"):
        assert "symbolic link" in refused(t, str(xfer / name)), name
    t.check(str(xfer / "sub" / "f"))  # positive control


def test_a_transfer_dir_given_through_a_symlink_is_compared_as_given(xfer, tmp_path):
    link = tmp_path / "xfer-link"
    os.symlink(xfer, link)
    t = TransferDir(link)
    t.check(str(link / "sub" / "f"))
    assert "outside" in refused(t, str(xfer / "sub" / "f")), "not resolved: lexical"


def test_only_regular_files(xfer):
    os.mkfifo(xfer / "fifo")
    t = TransferDir(xfer)
    assert "a directory" in refused(t, str(xfer / "sub"))
    assert "a FIFO" in refused(t, str(xfer / "fifo"))
    assert "no such file" in refused(t, str(xfer / "missing"))
    assert "not a directory" in refused(t, str(xfer / "sub" / "f" / "x"))


def test_tagged_objects_become_file_refs_at_any_depth(xfer):
    t = TransferDir(xfer)
    seen = []

    def check(path):
        seen.append(path)
        t.check(path)

    ref = {"$file": {"path": str(xfer / "sub" / "f"), "size": 6, "media_type": "text/plain"}}
    value = {"a": [1, {"b": ref}], "c": ref, "d": "plain", "e": {"path": "/not/a/ref"}}
    out = check_and_convert_input(value, check)
    assert out["a"][1]["b"] == FileRef(str(xfer / "sub" / "f"), 6, "text/plain")
    assert out["c"].read_bytes() == b"inside"
    assert out["d"] == "plain" and out["e"] == {"path": "/not/a/ref"}
    assert len(seen) == 2


@pytest.mark.parametrize(
    "value",
    [
        {"$file": {"path": "/a"}},
        {"$file": {"size": 1}},
        {"$file": {"path": 1, "size": 1}},
        {"$file": {"path": "/a", "size": -1}},
        {"$file": {"path": "/a", "size": True}},
        {"$file": {"path": "/a", "size": 1, "extra": 1}},
        {"$file": {"path": "/a", "size": 1, "media_type": 3}},
        {"$file": "/a"},
        {"$file": {"path": "/a", "size": 1}, "other": 1},
    ],
)
def test_malformed_references(value):
    with pytest.raises(MalformedFileRef):
        check_and_convert_input({"x": [value]}, lambda p: None)


def test_outputs_become_tagged_references(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGVISOR_OUTPUT_DIR", str(tmp_path))
    with plugvisor.output_file("a b/../c.csv") as out:
        out.write(b"1,2\n")
    name = Path(out.path).name
    assert Path(out.path).parent == tmp_path
    assert name.startswith(f"out-{os.getpid()}-") and name.endswith("-a_b_.._c.csv")
    assert os.stat(out.path).st_mode & 0o777 == 0o600
    wire = dumps({"deep": [out, FileRef("/x/y", 3)]})
    assert wire == (
        b'{"deep":[{"$file":{"path":"%s","size":4,"media_type":"text/csv"}},'
        b'{"$file":{"path":"/x/y","size":3,"media_type":"application/octet-stream"}}]}'
        % out.path.encode()
    )


class Dto:
    def __init__(self, data: bytes, where: Path) -> None:
        self.data, self.where = data, where

    def to_temp_file(self) -> str:
        path = self.where / "dto.bin"
        path.write_bytes(self.data)
        return str(path)


class DtoInDir:
    def to_temp_file(self, directory: str) -> FileRef:
        path = Path(directory) / "made-here"
        path.write_bytes(b"12")
        return FileRef(str(path), 2, "application/x-test")


def test_file_backed_objects_are_moved_into_the_output_area(tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("PLUGVISOR_OUTPUT_DIR", str(out_dir))
    import json

    wire = json.loads(dumps([Dto(b"abc", elsewhere), DtoInDir()]))
    moved = Path(wire[0]["$file"]["path"])
    assert moved.parent == out_dir and moved.read_bytes() == b"abc" and wire[0]["$file"]["size"] == 3
    assert not (elsewhere / "dto.bin").exists(), "the temporary file was moved, not copied"
    assert wire[1]["$file"] == {"path": str(out_dir / "made-here"), "size": 2, "media_type": "application/x-test"}


def test_not_json_values_are_refused():
    with pytest.raises(ValueError):
        dumps(float("nan"))
    with pytest.raises(TypeError):
        dumps(object())


def test_outside_a_worker_references_open_directly_but_not_through_symlinks(tmp_path, monkeypatch):
    monkeypatch.setattr(_files, "_installed", None)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    os.symlink(f, tmp_path / "l")
    assert FileRef(str(f), 1).read_bytes() == b"x"
    with pytest.raises(plugvisor.FileAccessDenied):
        FileRef(str(tmp_path / "l"), 1).open()
