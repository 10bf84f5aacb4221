"""A remote worker's private transfer directory: made at start, removed when it stops.

A worker started for remote use (``--listen tcp://…``, no ``PLUGVISOR_WATCH_STDIN=1``, no
``--transfer-dir``) shares no filesystem with its hosts: files they stream to it, and the
output files it makes, need a place of its own (`docs/PROTOCOL.md` §14). It is
``$TMPDIR/plugvisor-worker-<pid>-<random>``, mode 0700, as the Rust runtime names it
(`worker/src/cli.rs`), so that either runtime removes the directories the other left when
SIGKILLed.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat

__all__ = ["PREFIX", "temp_dir", "make_private_dir", "remove_abandoned", "remove_private_dir"]

_log = logging.getLogger("plugvisor")

#: How every private transfer directory's name starts; the owner's pid follows.
PREFIX = "plugvisor-worker-"


def temp_dir() -> str:
    """``$TMPDIR``, else ``/tmp``: where Rust's `std::env::temp_dir` looks, so both runtimes
    (and the tests looking for leftovers) agree on the place."""
    return os.environ.get("TMPDIR") or "/tmp"


def make_private_dir() -> str:
    """A new directory of mode 0700 in `temp_dir`, for this worker's files; the ones workers
    killed before they could remove theirs left are removed first.

    Raises:
        OSError: it cannot be created.
    """
    tmp = temp_dir()
    remove_abandoned(tmp)
    path = os.path.join(tmp, f"{PREFIX}{os.getpid()}-{secrets.randbits(64):x}")
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)  # whatever the umask
    return path


def remove_abandoned(tmp: str) -> None:
    """Removes ``plugvisor-worker-<pid>-*`` directories in `tmp` that are ours (same owner)
    and whose worker no longer runs (no ``/proc/<pid>``): what a SIGKILLed remote worker
    leaves behind. Links are never followed: a symbolic link of that name is left alone."""
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    uid = os.geteuid()
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        path = os.path.join(tmp, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
            continue
        if os.path.exists(f"/proc/{int(pid)}"):
            continue
        _log.info("removing a dead worker's transfer directory dir=%s", path)
        shutil.rmtree(path, ignore_errors=True)


def remove_private_dir(path: str) -> None:
    """Removes this worker's private directory and everything in it (uploads, outputs)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        _log.warning("could not remove the transfer directory dir=%s error=%s", path, e)
