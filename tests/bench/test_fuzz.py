"""`bench fuzz`: the frame generator is a pure function of (seed, step), the report adds up,
and both modes run end to end against a real server on the tiny model."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import msgpack
import pytest
from server_harness import running_server, url_of, write_tiny_model

from bench.__main__ import main
from bench.fuzz import LEAK_GAUGES, After, StormPlan, failures, fuzz_results, parse_metrics
from bench.fuzz_frames import SYNC_TYPES, Expect, FrameGenerator, clean_id
from bench.fuzz_run import Incident, Tally
from protocol import Limits


def test_a_step_is_a_function_of_seed_and_index() -> None:
    limits = Limits(max_frame_bytes=65536)
    first = FrameGenerator(7, limits=limits, vocab_size=259)
    again = FrameGenerator(7, limits=limits, vocab_size=259)
    other = FrameGenerator(8, limits=limits, vocab_size=259)
    indices = [0, 1, 2, 500, 9999]
    assert [first.step(i) for i in indices] == [again.step(i) for i in reversed(indices)][::-1]
    assert [first.step(i) for i in indices] != [other.step(i) for i in indices]
    steps = [first.step(i) for i in range(600)]
    kinds = {shot.label.split(":")[0] for step in steps for shot in step.shots}
    assert {"valid", "mutated", "extreme", "surrogate", "nested", "garbage", "session"} <= kinds
    assert any(step.fresh for step in steps) and any(not step.fresh for step in steps)
    encodings = {type(shot.data) for step in steps for shot in step.shots}
    assert encodings == {bytes, str}


def test_only_ids_the_server_can_read_and_echo_are_clean() -> None:
    assert clean_id("f1.0", max_chars=64) == "f1.0"
    for bad in ("", "x" * 65, "a\x00", "\ud800", 7, None):
        assert clean_id(bad, max_chars=64) is None
    generator = FrameGenerator(3, limits=Limits(), vocab_size=259)
    num_clean = 0
    for index in range(2000):
        for shot in generator.step(index).shots:
            if shot.label.startswith("cancel:own"):
                assert shot.expect is Expect.MAYBE or shot.streams
            if shot.request_id is None:
                continue
            num_clean += 1
            # The id the answers will echo is the one the server decodes: a parseable frame
            # (no invalid UTF-8, no NaN, within the frame limit), never a hello.
            assert len(shot.data) <= Limits().max_frame_bytes
            if isinstance(shot.data, str):
                view = json.loads(shot.data, parse_constant=lambda name: pytest.fail(name))
            else:
                view = msgpack.unpackb(shot.data, raw=False, strict_map_key=False)
            assert view["id"] == shot.request_id and view.get("type") != "hello"
            frame_type = view.get("type")
            assert shot.streams == (not isinstance(frame_type, str) or frame_type not in SYNC_TYPES)
    assert num_clean > 1000


def test_storm_plans_are_deterministic_and_varied() -> None:
    plans = [StormPlan.of(1, i) for i in range(200)]
    assert plans == [StormPlan.of(1, i) for i in range(200)]
    assert 40 < sum(p.session_id is not None for p in plans) < 120
    assert 60 < sum(p.abort for p in plans) < 140
    assert {p.num_deltas for p in plans} == set(range(13))


def test_parse_metrics_reads_unlabelled_samples() -> None:
    text = (
        "# HELP banterbox_queue_depth Requests waiting\n# TYPE banterbox_queue_depth gauge\n"
        "banterbox_queue_depth 0.0\nbanterbox_kv_usage_ratio 0.25\n"
        'banterbox_errors_total{code="malformed_frame"} 3.0\nbanterbox_connections 2.0\n'
    )
    assert parse_metrics(text) == {
        "banterbox_queue_depth": 0.0,
        "banterbox_kv_usage_ratio": 0.25,
        "banterbox_connections": 2.0,
    }


def test_the_report_adds_up_and_names_every_failure() -> None:
    tally = Tally(num_frames=10, num_steps=8, num_probes=7, num_connections=3, duration_s=1.26)
    tally.answers.update({"delta": 5, "done": 2, "error:invalid_field": 4})
    tally.closes.update({"1008": 2})
    tally.incidents += [Incident(kind="dropped", detail="1006", step="step 3")] * 2
    tally.num_untyped = 1
    gauges = {"banterbox_running_sequences": 0.0, "banterbox_kv_blocks_pinned_by_sessions": 3.0}
    after = After(readyz_status=200, normal_turn_error=None, gauges=gauges)
    results = fuzz_results(tally, after, num_restarts=2)
    assert results["answers_total"] == 11 and results["frames_sent"] == 10
    assert results["incidents"] == {"dropped": 2} and len(results["first_incidents"]) == 2
    assert results["engine_deaths"] == 2 and results["duration_s"] == 1.3
    assert results["leaked"]["kv_blocks_pinned_by_sessions"] == 3
    assert results["leaked"]["queue_depth"] is None  # absent from /metrics: not a zero
    assert failures(results) == [
        "1 untyped answers",
        "2 engine deaths",
        "queue_depth missing from /metrics",
        "kv_blocks_pinned_by_sessions = 3 once idle",
        "kv_usage_ratio missing from /metrics",
        "active_sessions missing from /metrics",
        "2 incidents of kind dropped",
    ]
    clean = Tally(num_frames=1)
    zeros = dict.fromkeys(LEAK_GAUGES, 0.0)
    idle = After(readyz_status=200, normal_turn_error=None, gauges=zeros)
    assert failures(fuzz_results(clean, idle)) == []
    dead = After(readyz_status=503, normal_turn_error="no welcome", gauges=zeros)
    assert failures(fuzz_results(clean, dead)) == [
        "/readyz answered 503 after the run",
        "normal turn after the run: no welcome",
    ]


async def test_fuzz_and_storm_end_to_end_write_reports_without_paths(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path)
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    async with running_server(model) as server:
        url = url_of(server)
        fuzz_json, storm_json = tmp_path / "fuzz.json", tmp_path / "storm.json"
        common = ["fuzz", "--url", url, "--model", str(model), "--seed", "5"]
        code = await asyncio.to_thread(main, [*common, "--frames", "300", "--json", str(fuzz_json)])
        assert code == 0
        storm = [*common, "--storm", "24", "--storm-concurrency", "6", "--json", str(storm_json)]
        assert await asyncio.to_thread(main, storm) == 0
    for path in (fuzz_json, storm_json):
        text = path.read_text()
        assert str(tmp_path) not in text
        report = json.loads(text)
        assert report["model"] == {"name": "tiny-test-model", "sha256": sha256}
        assert report["failures"] == [] and report["results"]["untyped_answers"] == 0
    fuzz = json.loads(fuzz_json.read_text())["results"]
    assert fuzz["frames_sent"] >= 300 and fuzz["answers"]["error:unknown_request"] > 0
    storm = json.loads(storm_json.read_text())["results"]
    assert storm["connections"] == 24
    assert storm["cut_mid_stream"] + storm["ended_before_the_cut"] == 24
