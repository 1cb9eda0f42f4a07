"""`herald trace` over log files written here: which lines make a trigger's story, and how it is
told; and the supervisor's copy of a child's output to its log file and the terminal."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stack.supervisor import Echo, copy_output
from stack.trace import TraceError, render, trace

T, OTHER = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
E, R = "e-ours", "r-ours"


def line(at: str, service: str, event: str, **fields: Any) -> str:
    return json.dumps({"timestamp": f"2026-01-01T00:00:{at}Z", "service": service, "event": event, **fields})


def write(directory: Path, name: str, *lines: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text("\n".join(lines) + "\n")


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    directory = tmp_path / "logs"
    write(
        directory,
        "ingest.log.1",  # the rotated, older file
        line("01.000", "ingest", "rpc.done", trigger_ids=[OTHER, T], event_ids=["e-other", E]),
    )
    write(
        directory,
        "ingest.log",
        "not json at all, naming " + T,
        line("09.000", "ingest", "rpc.done", trigger_id=OTHER, event_id="e-other"),
    )
    write(
        directory,
        "matcher.log",
        line("02.000", "matcher", "match.decided", trigger_id=T, event_id=E, matched=1),
        line("02.500", "matcher", "match.decided", trigger_id=OTHER, event_id="e-other", matched=1),
    )
    write(
        directory,
        "executor.log",
        line("03.000", "executor", "run.started", trigger_id=T, run_id=R, event_id=E),
        line("04.000", "executor", "step.done", run_id=R, step_id="mail", status="sent"),
        line("04.100", "executor", "step.done", run_id="r-other", step_id="mail", status="sent"),
        # A system event of our run starts a trigger of its own: not this story.
        line("04.200", "executor", "run.started", trigger_id=OTHER, run_id="r-other", event_id=E),
    )
    write(
        directory,
        "tracker.log",
        line(
            "05.000",
            "tracker",
            "triggers.moved",
            trigger_ids=[T, OTHER],
            statuses={T: "completed", OTHER: "x"},
        ),
    )
    return directory


def test_the_story_is_the_triggers_lines_and_its_events_and_runs_in_time_order(logs: Path) -> None:
    story = trace(logs, T)

    assert (story.event_ids, story.run_ids) == ({E}, {R})
    assert [(process, entry["event"]) for process, entry in story.lines] == [
        ("ingest", "rpc.done"),
        ("matcher", "match.decided"),
        ("executor", "run.started"),
        ("executor", "step.done"),
        ("tracker", "triggers.moved"),
    ]
    assert story.services == ["ingest", "matcher", "executor", "tracker"]
    assert story.lines[3][1]["run_id"] == R


def test_the_text_shows_only_what_concerns_the_trigger(logs: Path) -> None:
    text = "\n".join(render(trace(logs, f"  {T} ")))

    assert text.startswith(f"Trigger {T}: 5 log lines from ingest, matcher, executor, tracker")
    assert "triggers.moved  status=completed" in text
    assert OTHER not in text and "e-other" not in text
    assert "step_id=mail status=sent" in text


def test_no_line_naming_the_trigger_is_a_clear_error(logs: Path, tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"No log line in .* names trigger 33333333"):
        trace(logs, "33333333-3333-4333-8333-333333333333")
    with pytest.raises(TraceError, match=r"No log directory at .*--logs DIR"):
        trace(tmp_path / "missing", T)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match=r"No log files \(\*\.log\) in"):
        trace(tmp_path / "empty", T)
    with pytest.raises(TraceError, match="Give the trigger id"):
        trace(logs, "")


def test_the_command_reports_a_missing_trigger_with_exit_2(logs: Path) -> None:
    herald = str(Path(sys.executable).parent / "herald")
    answer = subprocess.run(
        [herald, "trace", "nope", "--logs", str(logs)], capture_output=True, text=True, timeout=60
    )
    assert answer.returncode == 2
    assert "herald: No log line in" in answer.stderr and "names trigger nope" in answer.stderr
    listed = subprocess.run(
        [herald, "trace", T, "--logs", str(logs), "--json"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert document["services"] == ["ingest", "matcher", "executor", "tracker"]
    assert document["lines"][0]["process"] == "ingest"


def test_a_childs_output_goes_to_its_file_and_to_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "matcher.log"
    output = (
        line("01.000", "matcher", "match.decided", level="info", trigger_id=T) + "\nplain text\n"
    ).encode()

    copy_output(io.BytesIO(output), path, Echo(console=True))

    assert path.read_bytes() == output
    shown = capsys.readouterr().err.splitlines()
    assert "match.decided" in shown[0] and f"trigger_id={T}" in shown[0] and not shown[0].startswith("{")
    assert shown[1] == "plain text"


def test_a_full_log_file_is_rotated_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ingest.log"
    lines = [f"line {n:03}\n".encode() for n in range(30)]  # 9 bytes each

    copy_output(io.BytesIO(b"".join(lines)), path, Echo(max_bytes=100))

    older, newer = (tmp_path / "ingest.log.1").read_bytes(), path.read_bytes()
    assert len(newer) <= 100 and len(older) <= 100
    assert older + newer == b"".join(lines[-(len(older + newer) // 9) :])
    assert newer.endswith(b"line 029\n")
    assert capsys.readouterr().err.count("line") == 30  # JSON or not, the terminal shows every line
