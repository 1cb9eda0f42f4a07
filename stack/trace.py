"""`herald trace TRIGGER_ID`: one trigger's story across every service, from their JSON logs.

Every process of `herald run` writes JSON lines to `<data dir>/logs/<process>.log` (rotated into
`<process>.log.1`). A line is about a trigger when it names it (`trigger_id`, or `trigger_ids` for
a line about a batch); the story follows the ids those lines name next to the trigger's (its
`event_id`s and `run_id`s): a line that names one of them, and no other trigger, is part of the
story too (a step's delivery names its run). The lines are told in time order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel.errors import HeraldError

# The scalar ids a line may name, and the lists a line about a batch names them in.
ID_FIELDS = ("trigger_id", "event_id", "run_id")
ID_LISTS = ("trigger_ids", "event_ids", "run_ids")
# Shown in every line's own columns, not among its fields.
COLUMNS = ("timestamp", "level", "service", "event")
# A batch line's maps by id, and the name of one entry (the tracker's triggers.moved).
SINGULAR = {"statuses": "status"}


class TraceError(HeraldError):
    """No story to tell: no log directory, or no line names the trigger."""


@dataclass
class Story:
    trigger_id: str
    event_ids: set[str] = field(default_factory=set)
    run_ids: set[str] = field(default_factory=set)
    # (process, line) in time order.
    lines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def services(self) -> list[str]:
        """The services that logged something about the trigger, in the order they first did."""
        seen: dict[str, None] = {}
        for process, line in self.lines:
            seen.setdefault(str(line.get("service") or process.partition("-")[0]), None)
        return list(seen)

    def document(self) -> dict[str, Any]:
        return {
            "trigger_id": self.trigger_id,
            "event_ids": sorted(self.event_ids),
            "run_ids": sorted(self.run_ids),
            "services": self.services,
            "lines": [{"process": process, **line} for process, line in self.lines],
        }


def log_files(directory: Path) -> list[Path]:
    """The log files of `directory`, each process's older file first."""
    if not directory.is_dir():
        raise TraceError(
            f"No log directory at {directory}: `herald run` writes its processes' logs to "
            "<HERALD_DATA_DIR>/logs; pass --logs DIR to read another one"
        )
    files = sorted(directory.glob("*.log.1")) + sorted(directory.glob("*.log"))
    if not files:
        raise TraceError(f"No log files (*.log) in {directory}")
    return files


def _entries(files: list[Path], wanted: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The JSON lines of `files` that contain one of the `wanted` strings, with their process."""
    for path in files:
        process = path.name.split(".log", 1)[0]
        with path.open(errors="replace") as lines:
            for text in lines:
                if not any(value in text for value in wanted):
                    continue  # most lines: no JSON parsing
                try:
                    entry = json.loads(text)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    yield process, entry


def _names(entry: dict[str, Any], story: Story) -> bool:
    """Whether a log line is part of the story."""
    trigger = entry.get("trigger_id")
    if trigger == story.trigger_id or story.trigger_id in _listed(entry, "trigger_ids"):
        return True
    if trigger:
        return False  # about another trigger (a run's system event starts one of its own)
    if entry.get("event_id") in story.event_ids or entry.get("run_id") in story.run_ids:
        return True
    return bool(
        story.event_ids.intersection(_listed(entry, "event_ids"))
        or story.run_ids.intersection(_listed(entry, "run_ids"))
    )


def _listed(entry: dict[str, Any], name: str) -> list[str]:
    value = entry.get(name)
    return [str(item) for item in value] if isinstance(value, list) else []


def trace(directory: Path, trigger_id: str) -> Story:
    """The story of `trigger_id` in the logs of `directory`."""
    trigger_id = trigger_id.strip()
    if not trigger_id:
        raise TraceError("Give the trigger id to trace (as SendEvent answered it)")
    files = log_files(directory)
    story = Story(trigger_id)
    # First the ids the trigger's own lines name, then every line that names one of them.
    for _, entry in _entries(files, (trigger_id,)):
        if entry.get("trigger_id") == trigger_id:
            for name, ids in (("event_id", story.event_ids), ("run_id", story.run_ids)):
                if isinstance(entry.get(name), str) and entry[name]:
                    ids.add(entry[name])
    wanted = (trigger_id, *story.event_ids, *story.run_ids)
    story.lines = [(process, entry) for process, entry in _entries(files, wanted) if _names(entry, story)]
    if not story.lines:
        raise TraceError(
            f"No log line in {directory} names trigger {trigger_id}: check the id, and that the logs "
            "are those of the platform that accepted it (lines older than the rotated file are gone)"
        )
    story.lines.sort(key=lambda each: str(each[1].get("timestamp", "")))
    return story


def render(story: Story) -> list[str]:
    """The story as text: one line per log line, its time, process, level and what it says."""
    lines = [
        f"Trigger {story.trigger_id}: {len(story.lines)} log lines from {', '.join(story.services)}",
        f"  events: {', '.join(sorted(story.event_ids)) or '-'}",
        f"  runs:   {', '.join(sorted(story.run_ids)) or '-'}",
        "",
    ]
    width = max(len(process) for process, _ in story.lines)
    for process, entry in story.lines:
        fields = " ".join(f"{name}={_value(value)}" for name, value in _shown_fields(entry, story))
        lines.append(
            f"{entry.get('timestamp', '?')}  {process:<{width}}  {entry.get('level', '')!s:<7} "
            f"{entry.get('event', '')}  {fields}".rstrip()
        )
    return lines


def _shown_fields(entry: dict[str, Any], story: Story) -> Iterator[tuple[str, Any]]:
    """A line's fields but its columns and the trigger's own id; of a batch line's lists and
    maps by id, only what concerns this trigger."""
    ours = {story.trigger_id, *story.event_ids, *story.run_ids}
    for name, value in entry.items():
        if name in COLUMNS or value is None or (name == "trigger_id" and value == story.trigger_id):
            continue
        if name in ID_LISTS:
            continue
        if isinstance(value, dict) and ours.intersection(value):
            yield from ((SINGULAR.get(name, name), value[key]) for key in value if key in ours)
            continue
        yield name, value


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 200 else text[:197] + "..."


def render_detail(detail: dict[str, Any]) -> list[str]:
    """The tracker's account of the trigger (GET /api/v1/triggers/{id}/workflow), briefly."""
    trigger = detail.get("trigger", {})
    summary = trigger.get("summary", {})
    lines = [
        "",
        f"Tracker: {trigger.get('status', '?')} (event {detail.get('event_name') or '?'}; "
        f"created {trigger.get('created_at', '?')}, completed {trigger.get('completed_at') or '-'}); "
        f"contacts {summary.get('total_contacts', 0)}, sent {summary.get('sent', 0)}, "
        f"failed {summary.get('failed', 0)}, filtered {summary.get('filtered', 0)}",
    ]
    for workflow in detail.get("workflows", []):
        head = (
            f"  {workflow.get('workflow_key')} v{workflow.get('workflow_version')}: {workflow.get('outcome')}"
        )
        if workflow.get("outcome") == "filtered":
            lines.append(f"{head} ({workflow.get('reason', '')})")
            continue
        lines.append(f"{head}, run {workflow.get('run_id', '?')} {workflow.get('run_status', '')}")
        for step in workflow.get("steps", []):
            lines.append(
                f"    {step.get('step_id')} ({step.get('type')}): {step.get('status')}, "
                f"{step.get('attempts', 0)} attempt(s) {step.get('detail', '')}".rstrip()
            )
    if detail.get("note"):
        lines.append(f"  {detail['note']}")
    return lines
