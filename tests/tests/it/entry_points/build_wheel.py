"""Builds a wheel (PEP 427) of a pure-Python project from its pyproject.toml, with the standard library only.

    python build_wheel.py PROJECT_DIR OUT_DIR       # prints the wheel's path

The entry-points test installs packages into a virtual environment with real pip, offline.
`pip install --no-build-isolation` cannot build them there: the venv's bundled setuptools (65)
has no `bdist_wheel` without the `wheel` package, which is not installed and not fetched. So
this script does what a build backend does for a pure-Python project: it reads `[project]`
(`name`, `version`, `entry-points`) with `tomllib` and zips the packages under `src/` (or the
project root: every directory with an `__init__.py`, as `[tool.setuptools.packages.find]`
finds them) with the `.dist-info` files a wheel carries (METADATA, WHEEL, entry_points.txt,
RECORD with sha256 digests). pip then installs that wheel as it installs any other.
"""

import base64
import hashlib
import os
import re
import sys
import tomllib
import zipfile


def _digest(data: bytes) -> str:
    raw = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _package_files(root: str):
    for top in sorted(os.listdir(root)):
        package = os.path.join(root, top)
        if not os.path.isfile(os.path.join(package, "__init__.py")):
            continue
        for directory, dirs, files in os.walk(package):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".pyc"):
                    continue
                path = os.path.join(directory, name)
                yield os.path.relpath(path, root).replace(os.sep, "/"), path


def _entry_points(project: dict) -> str:
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {value}" for name, value in entries.items())
        lines.append("")
    return "\n".join(lines)


def build(project_dir: str, out_dir: str) -> str:
    with open(os.path.join(project_dir, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    name, version = project["name"], project["version"]
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    src = os.path.join(project_dir, "src")
    root = src if os.path.isdir(src) else project_dir
    members = [(arc, open(path, "rb").read()) for arc, path in _package_files(root)]
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    members.append((f"{info}/METADATA", metadata.encode()))
    wheel = "Wheel-Version: 1.0\nGenerator: build_wheel.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    members.append((f"{info}/WHEEL", wheel.encode()))
    if project.get("entry-points"):
        members.append((f"{info}/entry_points.txt", _entry_points(project).encode()))
    record = "".join(f"{arc},{_digest(data)},{len(data)}\n" for arc, data in members)
    members.append((f"{info}/RECORD", (record + f"{info}/RECORD,,\n").encode()))
    target = os.path.join(out_dir, f"{dist}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as whl:
        for arc, data in members:
            whl.writestr(arc, data)
    return target


if __name__ == "__main__":
    print(build(sys.argv[1], sys.argv[2]))
