"""`banterbox generate` and the CLI's handling of bad input: one line, non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tiny import TinyConfig, random_hf_tensors, write_gguf

from server.cli import main
from server.engine.config import EngineConfig
from server.engine.llm import LLM
from server.engine.types import SamplingParams


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    config = TinyConfig()
    return write_gguf(tmp_path_factory.mktemp("cli") / "m.gguf", config, random_hf_tensors(config))


def test_generate_json_is_greedy_and_complete(model_path, capsys) -> None:
    code = main(
        [
            "generate",
            "--model",
            str(model_path),
            "--prompt",
            "hello there",
            "--max-tokens",
            "9",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"prompt_token_ids", "token_ids", "text", "finish_reason"}
    llm = LLM.load(model_path, EngineConfig(num_threads=1))
    assert result["prompt_token_ids"] == llm.encode_prompt("hello there")
    expected = [
        t
        for o in llm.generate(result["prompt_token_ids"], SamplingParams(max_tokens=9))
        for t in o.new_token_ids
    ]
    assert result["token_ids"] == expected
    assert result["finish_reason"] in ("stop", "length")
    assert len(result["token_ids"]) <= 9


def test_generate_messages_file_streams_text(model_path, tmp_path, capsys) -> None:
    messages = tmp_path / "m.json"
    messages.write_text(
        json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    )
    code = main(
        [
            "generate",
            "--model",
            str(model_path),
            "--messages",
            str(messages),
            "--max-tokens",
            "5",
            "--temperature",
            "0.8",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.endswith("\n")


def test_bad_messages_file(model_path, tmp_path, capsys) -> None:
    messages = tmp_path / "m.json"
    messages.write_text('{"role": "user"}')
    assert main(["generate", "--model", str(model_path), "--messages", str(messages)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a non-empty JSON list" in err


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("case", ["missing", "truncated", "unknown-arch"])
def test_bad_model_is_one_line_without_traceback(case, model_path, tmp_path) -> None:
    path = tmp_path / "m.gguf"
    if case == "truncated":
        path.write_bytes(model_path.read_bytes()[:5000])
    elif case == "unknown-arch":
        config = TinyConfig()
        write_gguf(path, config, random_hf_tensors(config), architecture="gptneox")
    done = _run_cli("generate", "--model", str(path), "--prompt", "x")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("banterbox: error:")
    expected = {
        "missing": "does not exist",
        "truncated": "GGUF",
        "unknown-arch": "unsupported architecture 'gptneox'",
    }[case]
    assert expected in lines[0]


def test_bridge_irc_is_a_subcommand() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "bridge", "irc", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--channel" in done.stdout
