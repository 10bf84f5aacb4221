"""File references: `FileRef`, the transfer directory they are confined to, and output files."""

from __future__ import annotations

import errno
import inspect
import io
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple, Union, cast

from ._errors import FileAccessDenied, PluginFailed

__all__ = [
    "FILE_REF_TAG",
    "DEFAULT_MEDIA_TYPE",
    "FileRef",
    "OutputFile",
    "TransferDir",
    "output_file",
    "transfer_dir",
    "install_transfer_dir",
    "check_and_convert_input",
    "to_wire",
    "MalformedFileRef",
]

#: The JSON key that marks an object as a file reference.
FILE_REF_TAG = "$file"
#: The media type of a reference that names none.
DEFAULT_MEDIA_TYPE = "application/octet-stream"
#: Environment variable naming where a (sandboxed) worker creates its output files.
OUTPUT_DIR_ENV = "PLUGVISOR_OUTPUT_DIR"

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _guess_type(name: str) -> Tuple[Optional[str], Optional[str]]:
    import mimetypes  # on first use: it reads the system's type tables

    return mimetypes.guess_type(name)


class MalformedFileRef(ValueError):
    """An object tagged ``$file`` whose body is not a valid reference (a `400 bad_request`)."""


@dataclass(frozen=True)
class FileRef:
    """A reference to file-backed data, passed by path instead of through the socket.

    In an input, every ``{"$file": {...}}`` object arrives as a `FileRef` (already checked to be
    a regular file inside the transfer directory); read it in place with `open()`. In an output,
    a `FileRef` (or an `OutputFile`, or any object with ``to_temp_file()``) is sent back as a
    file reference, which the host adopts.
    """

    #: Absolute path of the file.
    path: str
    #: Size in bytes when the reference was made.
    size: int = 0
    #: IANA media type.
    media_type: str = DEFAULT_MEDIA_TYPE

    @classmethod
    def from_path(cls, path: Union[str, "os.PathLike[str]"], media_type: Optional[str] = None) -> "FileRef":
        """A reference to the existing file at `path`, with its current size."""
        path = os.path.abspath(os.fspath(path))
        media = media_type or _guess_type(path)[0] or DEFAULT_MEDIA_TYPE
        return cls(path, os.stat(path).st_size, media)

    def open(self) -> BinaryIO:
        """Opens the file for reading (binary), with the checks the worker applies to inputs.

        Raises:
            FileAccessDenied: the path lies outside the transfer directory, contains ``.`` or
                ``..``, is or passes through a symbolic link, is missing or not a regular file.
        """
        fd = _open_ref(self.path)
        return cast(BinaryIO, os.fdopen(fd, "rb"))

    def read_bytes(self) -> bytes:
        """The whole file, read through `open()`."""
        with self.open() as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        """The whole file as text, read through `open()`."""
        return self.read_bytes().decode(encoding)

    def to_wire(self) -> Dict[str, Any]:
        """The tagged JSON form, ``{"$file": {"path", "size", "media_type"}}``."""
        return {
            FILE_REF_TAG: {"path": self.path, "size": self.size, "media_type": self.media_type}
        }

    @classmethod
    def from_wire(cls, value: Any) -> Optional["FileRef"]:
        """Reads a tagged reference; `None` when `value` is not tagged ``$file`` at all.

        Raises:
            MalformedFileRef: tagged, but extra keys beside the tag or a body of the wrong shape.
        """
        if not isinstance(value, dict) or FILE_REF_TAG not in value:
            return None
        if len(value) != 1:
            raise MalformedFileRef(f'an object tagged "{FILE_REF_TAG}" must have no other keys')
        body = value[FILE_REF_TAG]
        if not isinstance(body, dict):
            raise MalformedFileRef("malformed file reference: the body must be an object")
        unknown = sorted(set(body) - {"path", "size", "media_type"})
        if unknown:
            raise MalformedFileRef(f"malformed file reference: unknown field `{unknown[0]}`")
        path, size = body.get("path"), body.get("size")
        media = body.get("media_type", DEFAULT_MEDIA_TYPE)
        if not isinstance(path, str):
            raise MalformedFileRef("malformed file reference: `path` must be a string")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise MalformedFileRef("malformed file reference: `size` must be a non-negative integer")
        if not isinstance(media, str):
            raise MalformedFileRef("malformed file reference: `media_type` must be a string")
        return cls(path, size, media)


class TransferDir:
    """The one directory file references may point into, opened once.

    A reference is accepted only when its path is absolute, has no ``.`` or ``..`` component,
    lies lexically inside the directory (as given, not resolved) and names a regular file
    reached without following any symbolic link: it is opened one component at a time relative
    to a descriptor of the directory, each with ``O_NOFOLLOW`` (docs/PROTOCOL.md §10, rule 4's
    fallback, which gives the same guarantee as ``openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)``).
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        """Closes the directory's descriptor."""
        os.close(self.fd)

    def open_ref(self, path: str) -> int:
        """A read-only descriptor of the regular file `path`, after every check.

        Raises:
            FileAccessDenied: ``<path>: <reason>``.
        """
        rel = _relative_inside(self.path, path)
        try:
            fd = _open_beneath(self.fd, rel)
        except OSError as e:
            raise _denied(path, _errno_reason(e)) from None
        return _regular_file(fd, path)

    def check(self, path: str) -> None:
        """Checks `path` as `open_ref` does and closes the file again."""
        os.close(self.open_ref(path))

    def create(self, name_hint: str) -> Tuple[int, str]:
        """A new, uniquely named file (mode 0600, ``O_EXCL``) in the directory: fd and path."""
        return _create_unique(self.fd, self.path, name_hint)


_installed: Optional[TransferDir] = None
_install_lock = threading.Lock()


def install_transfer_dir(path: Union[str, "os.PathLike[str]"]) -> TransferDir:
    """Makes `path` this process's transfer directory (the first one installed wins)."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = TransferDir(path)
        return _installed


def transfer_dir() -> Optional[str]:
    """The worker's transfer directory, once `plugvisor.run` has set it up; else `None`."""
    return _installed.path if _installed is not None else None


def _relative_inside(directory: str, path: str) -> str:
    """The part of `path` below `directory`, or `FileAccessDenied` saying why not."""
    if not path.startswith("/"):
        raise _denied(path, "the path is not absolute")
    if any(part in (".", "..") for part in path.split("/")):
        raise _denied(path, "the path contains a '.' or '..' component")
    try:
        from pathlib import PurePosixPath

        rel = PurePosixPath(path).relative_to(PurePosixPath(directory))
    except ValueError:
        raise _denied(path, f"the path is outside the transfer directory {directory}") from None
    if not rel.parts:
        raise _denied(path, "the path names the transfer directory itself")
    return str(rel)


def _open_beneath(dir_fd: int, rel: str) -> int:
    """Opens `rel` below `dir_fd` one component at a time, never following a symbolic link."""
    parts = [p for p in rel.split("/") if p]
    current = dir_fd
    try:
        for i, part in enumerate(parts):
            flags = _READ_FLAGS if i + 1 == len(parts) else _DIR_FLAGS
            try:
                opened = os.open(part, flags, dir_fd=current)
            except NotADirectoryError:
                # O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR; say what it really is.
                if stat.S_ISLNK(os.stat(part, dir_fd=current, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                raise
            if current != dir_fd:
                os.close(current)
            current = opened
    except BaseException:
        if current != dir_fd:
            os.close(current)
        raise
    return current


def _regular_file(fd: int, path: str) -> int:
    """`fd` if it is a regular file (now in blocking mode); else closed and refused."""
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _denied(path, f"not a regular file ({_kind_of(mode)})")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "a device"
    return "not a plain file"


def _errno_reason(e: OSError) -> str:
    code = e.errno
    if code == errno.ELOOP:
        return "the path is or passes through a symbolic link"
    if code == errno.ENOENT:
        return "no such file"
    if code == errno.EXDEV:
        return "the path escapes the transfer directory"
    if code == errno.ENOTDIR:
        return "a path component is not a directory"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot open: {os.strerror(code) if code else e}"


def _denied(path: str, reason: str) -> FileAccessDenied:
    return FileAccessDenied(f"{path}: {reason}")


def _open_ref(path: str) -> int:
    """Opens an input reference: beneath the transfer directory, or (no worker) directly."""
    if _installed is not None:
        return _installed.open_ref(path)
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as e:
        raise _denied(path, _errno_reason(e)) from None
    return _regular_file(fd, path)


# ----------------------------------------------------------------------------- output files

_seq = 0
_seq_lock = threading.Lock()


def _sanitize_hint(hint: str) -> str:
    """Keeps ``[A-Za-z0-9._-]`` (others become ``_``), at most 64, never a leading dot."""
    allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
    clean = "".join(c if c in allowed else "_" for c in hint)[:64].lstrip(".")
    return clean or "file"


def _create_unique(dir_fd: int, dir_path: str, name_hint: str) -> Tuple[int, str]:
    """Creates ``out-<pid>-<nanos>-<seq>-<hint>`` with ``O_EXCL``, mode 0600, in the directory."""
    global _seq
    hint = _sanitize_hint(name_hint)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(64):
        with _seq_lock:
            seq = _seq
            _seq += 1
        name = f"out-{os.getpid()}-{time.time_ns() % 1_000_000_000}-{seq}-{hint}"
        try:
            return os.open(name, flags, 0o600, dir_fd=dir_fd), os.path.join(dir_path, name)
        except FileExistsError:
            continue
        except OSError as e:
            raise _denied(os.path.join(dir_path, name), _errno_reason(e)) from None
    raise PluginFailed("could not find a free output file name")


def _output_area() -> Tuple[int, str, bool]:
    """Where output files go: descriptor, path, and whether the descriptor is ours to close."""
    out = os.environ.get(OUTPUT_DIR_ENV)
    if not out and _installed is not None:
        return _installed.fd, _installed.path, False
    path = os.path.abspath(out or _tempdir())
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path, True
    except OSError as e:
        raise _denied(path, _errno_reason(e)) from None


def _tempdir() -> str:
    import tempfile

    return tempfile.gettempdir()


class OutputFile(io.BufferedWriter):
    """A new output file in the transfer area, open for writing (binary).

    Write to it, then return it (or `ref()`) anywhere in the output: the host adopts the file.
    Use `plugvisor.output_file()` to make one::

        with plugvisor.output_file("report.csv", media_type="text/csv") as out:
            out.write(b"a,b\\n")
        return {"report": out}
    """

    def __init__(self, fd: int, path: str, media_type: str) -> None:
        super().__init__(io.FileIO(fd, "wb", closefd=True))
        #: Absolute path of the file.
        self.path = path
        #: Its media type in the reference.
        self.media_type = media_type

    def ref(self) -> FileRef:
        """A reference to the file with its size now (flushes what is written so far)."""
        if not self.closed:
            self.flush()
        return FileRef(self.path, os.stat(self.path).st_size, self.media_type)

    def __repr__(self) -> str:
        return f"OutputFile({self.path!r})"


def output_file(name_hint: str = "file", media_type: Optional[str] = None) -> OutputFile:
    """Creates a new output file (mode 0600, a unique name ending in `name_hint`).

    It is created in the worker's output area: ``PLUGVISOR_OUTPUT_DIR`` when the host sets it
    (a sandboxed worker), else the transfer directory, else (outside a worker) the system's
    temporary directory. Return it, or its `ref()`, in the output; the host adopts the file.

    Raises:
        FileAccessDenied: the file cannot be created there.
    """
    dir_fd, dir_path, owned = _output_area()
    try:
        fd, path = _create_unique(dir_fd, dir_path, name_hint)
    finally:
        if owned:
            os.close(dir_fd)
    media = media_type or _guess_type(name_hint)[0] or DEFAULT_MEDIA_TYPE
    return OutputFile(fd, path, media)


# ----------------------------------------------------------------------------- walking values


def check_and_convert_input(value: Any, check: Callable[[str], None]) -> Any:
    """`value` with every ``{"$file": …}`` replaced by a `FileRef`, each passed to `check`.

    Raises:
        MalformedFileRef: a tagged object with a bad body (the call is a `400 bad_request`).
        FileAccessDenied: `check` refused a path (`403`); the plugin is not called.
    """
    if isinstance(value, dict):
        file = FileRef.from_wire(value)
        if file is not None:
            check(file.path)
            return file
        return {k: check_and_convert_input(v, check) for k, v in value.items()}
    if isinstance(value, list):
        return [check_and_convert_input(v, check) for v in value]
    return value


def to_wire(value: Any) -> Any:
    """`value` with every file-backed object replaced by its tagged reference, at any depth.

    A `FileRef`, an `OutputFile`, or any object with a ``to_temp_file()`` method (seed 004's
    ``FileBackedDTO``) becomes ``{"$file": …}``; tuples become lists. Other values are left to
    the JSON encoder.
    """
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    wire = file_backed_wire(value)
    return value if wire is None else wire


def file_backed_wire(value: Any) -> Optional[Dict[str, Any]]:
    """The tagged reference of one file-backed object (a `FileRef`, an `OutputFile`, which is
    closed first, or anything with ``to_temp_file()``); `None` for any other value."""
    if isinstance(value, FileRef):
        return value.to_wire()
    if isinstance(value, OutputFile):
        ref = value.ref()
        if not value.closed:
            value.close()
        return ref.to_wire()
    if callable(getattr(value, "to_temp_file", None)):
        return file_backed_ref(value).to_wire()
    return None


def contains_file_backed(value: Any) -> bool:
    """True when `value` holds something `to_wire` would rewrite (a cheap pre-check)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return False
    if isinstance(value, dict):
        return any(contains_file_backed(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_file_backed(v) for v in value)
    return True


def file_backed_ref(obj: Any) -> FileRef:
    """The reference for a ``FileBackedDTO``: it writes itself with ``to_temp_file()``.

    ``to_temp_file`` may take the output directory as its one required argument (then it
    should create its file there), or none (seed 004's form: it returns the path of a temporary file of its
    own). It returns a path or a `FileRef`. A file made outside the output area is moved in
    (renamed, or copied and removed), so the host can adopt it.
    """
    dir_fd, dir_path, owned = _output_area()
    if owned:
        os.close(dir_fd)
    method = obj.to_temp_file
    made = method(dir_path) if _takes_an_argument(method) else method()
    if isinstance(made, FileRef):
        src, media = made.path, made.media_type
    else:
        src = os.path.abspath(os.fspath(made))
        media = getattr(obj, "media_type", None) or _guess_type(src)[0] or DEFAULT_MEDIA_TYPE
    if os.path.dirname(src) != dir_path:
        src = _adopt(src)
    return FileRef(src, os.stat(src).st_size, media)


def _takes_an_argument(method: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    # Only a required first parameter is the directory: `to_temp_file(self, suffix=".jpg")`
    # keeps its default.
    return bool(params) and params[0].kind in positional and params[0].default is params[0].empty


def _adopt(src: str) -> str:
    """Moves the file at `src` into the output area under a fresh name; returns the new path."""
    out = output_file(os.path.basename(src))
    try:
        try:
            os.rename(src, out.path)
        except OSError:
            with open(src, "rb") as f:
                import shutil

                shutil.copyfileobj(f, out)
            os.unlink(src)
    finally:
        out.close()
    return out.path


def file_refs_in(value: Any) -> List[FileRef]:
    """Every `FileRef` in an (already converted) value, depth first."""
    found: List[FileRef] = []

    def walk(v: Any) -> None:
        if isinstance(v, FileRef):
            found.append(v)
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)

    walk(value)
    return found
