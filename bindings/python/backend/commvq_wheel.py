"""The PEP 517 build backend of the commvq wheel (pyproject.toml names it).

The wheel is the package in commvq/ plus a copy of libcommvq.so beside it,
which the package loads before any installed library. The library is
$COMMVQ_WHEEL_LIBRARY when that names a built file (CMake's own test does
this), else it is built here with CMake from this repository, with
$COMMVQ_CMAKE_ARGS added to the configure step (e.g. -DCOMMVQ_CUDA=OFF).

A backend of its own rather than setuptools: it needs nothing from a package
index (these wheels are built on machines that reach none), writes nothing
into the source tree, and the wheel it writes is byte-for-byte the same for
the same library (sorted entries, fixed timestamps).
"""

import base64
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile

try:
    import tomllib
except ImportError:  # Python < 3.11: pyproject.toml's build requirement
    import tomli as tomllib

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # bindings/python
SOURCE_ROOT = os.path.dirname(os.path.dirname(PACKAGE_DIR))  # the repository
HEADER = os.path.join(SOURCE_ROOT, "include", "commvq", "commvq.h")
BUNDLED_NAME = "libcommvq.so"  # commvq/_api.py looks for this name


# ---- what goes in -------------------------------------------------------------
def _project():
    with open(os.path.join(PACKAGE_DIR, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _version():
    with open(HEADER) as f:
        text = f.read()
    parts = [re.search(rf"#define COMMVQ_VERSION_{part} +(\d+)", text).group(1) for part in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def _tag():
    # ctypes, not the C API of Python: any Python 3 on this platform.
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"py3-none-{platform}"


def _dist_info(project, version):
    name = project["name"]
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: {project['description']}",
        f"Requires-Python: {project['requires-python']}",
    ] + [f"Requires-Dist: {dependency}" for dependency in project.get("dependencies", [])]
    wheel = ["Wheel-Version: 1.0", "Generator: commvq_wheel", "Root-Is-Purelib: false", f"Tag: {_tag()}"]
    return f"{name}-{version}.dist-info", {
        "METADATA": "\n".join(metadata) + "\n",
        "WHEEL": "\n".join(wheel) + "\n",
        "top_level.txt": "commvq\n",
    }


def _package_files():
    """(path in the wheel, file on disk) of the Python package."""
    root = os.path.join(PACKAGE_DIR, "commvq")
    files = []
    for folder, dirs, names in os.walk(root):  # subpackages too (commvq/transformers)
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "commvq/" if rel == "." else f"commvq/{rel}/"
        files += [(prefix + name, os.path.join(folder, name)) for name in names
                  if name.endswith(".py") or name == "py.typed"]
    return sorted(files)


def _build_library(build_dir):
    """Builds libcommvq.so with CMake in build_dir; returns its path."""
    configure = ["cmake", "-S", SOURCE_ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                 "-DCOMMVQ_BUILD_TESTS=OFF", "-DCOMMVQ_BUILD_EXAMPLES=OFF", "-DCOMMVQ_BUILD_BINDINGS=OFF"]
    configure += shlex.split(os.environ.get("COMMVQ_CMAKE_ARGS", ""))
    # pip shows a backend's stdout only on failure or with -v: the build log goes there.
    subprocess.run(configure, check=True, stdout=sys.stdout, stderr=sys.stderr)
    subprocess.run(["cmake", "--build", build_dir, "--target", "commvq"], check=True, stdout=sys.stdout,
                   stderr=sys.stderr)
    return os.path.join(build_dir, "libcommvq.so")


# ---- writing the wheel ----------------------------------------------------------------
def _timestamp():
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))  # 1980-01-01, zip's earliest
    return max((1980, 1, 1, 0, 0, 0), tuple(time.gmtime(epoch)[:6]))


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def _write_wheel(wheel_path, entries):
    """entries: (path in the wheel, bytes, executable); RECORD is added last."""
    date_time = _timestamp()
    record = []
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data, executable in entries:
            info = zipfile.ZipInfo(path, date_time)
            info.external_attr = (0o755 if executable else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
            record.append(_record_line(path, data))
        record_path = entries[-1][0].split("/")[0] + "/RECORD"
        record.append(f"{record_path},,")
        info = zipfile.ZipInfo(record_path, date_time)
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        wheel.writestr(info, "\n".join(record) + "\n")


# ---- PEP 517 hooks -----------------------------------------------------------------------
def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    dist_info, files = _dist_info(_project(), _version())
    os.makedirs(os.path.join(metadata_directory, dist_info), exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(metadata_directory, dist_info, name), "w") as f:
            f.write(text)
    return dist_info


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project, version = _project(), _version()
    dist_info, metadata = _dist_info(project, version)
    build_dir = None
    library = os.environ.get("COMMVQ_WHEEL_LIBRARY")
    if library and not os.path.isfile(library):
        # pip runs this in bindings/python: a relative path is relative to that.
        raise FileNotFoundError(f"COMMVQ_WHEEL_LIBRARY={library}: no such file (seen from {os.getcwd()})")
    if not library:
        build_dir = tempfile.mkdtemp(prefix="commvq-wheel-")
        library = _build_library(build_dir)
    try:
        entries = []
        for path, source in _package_files():
            with open(source, "rb") as f:
                entries.append((path, f.read(), False))
        with open(os.path.realpath(library), "rb") as f:
            entries.append((f"commvq/{BUNDLED_NAME}", f.read(), True))
        entries += [(f"{dist_info}/{name}", text.encode(), False) for name, text in sorted(metadata.items())]
    finally:
        if build_dir:
            shutil.rmtree(build_dir, ignore_errors=True)
    name = f"{project['name']}-{version}-{_tag()}.whl"
    _write_wheel(os.path.join(wheel_directory, name), entries)
    return name
