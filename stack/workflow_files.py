"""Workflows as code: `herald workflows diff -f DIR` and `herald workflows apply -f DIR`.

A directory holds workflow definitions as YAML (`.yaml`, `.yml`; several documents per file are
allowed, separated by `---`) or JSON (`.json`: one workflow or a list of them), in the same
shape as the API. `diff` compares them with the project's latest versions; `apply` PUTs each one
that differs, so a new version is stored only for a real change. Neither deletes a workflow that
is only on the server: `diff` lists it.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from google.protobuf import json_format

from herald.workflow.v1 import workflow_pb2
from kernel.errors import HeraldError, InvalidArgument
from kernel.settings import Settings
from services.matcher.domain import validate_definition
from services.matcher.messages import definition_document, definition_from_proto
from stack.launcher import CREDENTIALS_FILE, STACK_FILE

SUFFIXES = (".yaml", ".yml", ".json")
# What the API answers besides the definition.
OUTPUT_ONLY = ("version", "created_at")


class WorkflowFileError(HeraldError):
    """A workflow file that cannot be read, parsed or validated."""


@dataclass(frozen=True)
class LocalWorkflow:
    source: str  # "path" or "path#n" for the n-th document of a file
    key: str
    document: dict[str, Any]  # normalized as the server stores it


def read_directory(directory: Path) -> list[LocalWorkflow]:
    """Every workflow in `directory` (not recursive), validated and normalized; a problem in any
    file stops everything, naming the file and what to fix."""
    if not directory.is_dir():
        raise WorkflowFileError(f"{directory} is not a directory")
    found: list[LocalWorkflow] = []
    problems: list[str] = []
    for path in sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file()):
        try:
            for source, document in _documents(path):
                found.append(_normalized(source, document))
        except WorkflowFileError as error:
            problems.append(error.message)
    seen: dict[str, str] = {}
    for workflow in found:
        if workflow.key in seen:
            problems.append(
                f"{workflow.source}: key {workflow.key!r} is also defined in {seen[workflow.key]}"
            )
        seen.setdefault(workflow.key, workflow.source)
    if problems:
        raise WorkflowFileError("\n".join(problems))
    if not found:
        raise WorkflowFileError(f"{directory} has no workflow files ({', '.join(SUFFIXES)})")
    return found


def _documents(path: Path) -> Iterator[tuple[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            loaded = json.loads(text)
            documents = loaded if isinstance(loaded, list) else [loaded]
        else:
            documents = [document for document in yaml.safe_load_all(text) if document is not None]
    except json.JSONDecodeError as error:
        raise WorkflowFileError(f"{path}: line {error.lineno}, column {error.colno}: {error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise WorkflowFileError(f"{path}: {where}{getattr(error, 'problem', None) or error}") from None
    for index, document in enumerate(documents):
        yield (f"{path}#{index + 1}" if len(documents) > 1 else str(path)), document


def _normalized(source: str, document: Any) -> LocalWorkflow:
    if not isinstance(document, dict):
        raise WorkflowFileError(f"{source}: a workflow is a mapping with key, name, trigger and steps")
    message = workflow_pb2.Workflow()
    try:
        json_format.ParseDict({k: v for k, v in document.items() if k not in OUTPUT_ONLY}, message)
    except json_format.ParseError as error:
        raise WorkflowFileError(f"{source}: {error}") from None
    try:
        definition = validate_definition(definition_from_proto(message))
    except InvalidArgument as error:
        raise WorkflowFileError(f"{source}: {error.message}") from None
    return LocalWorkflow(source, definition.key, definition_document(definition))


class Api:
    """The project's workflows (and a trigger's account, for `herald trace`) over the REST API."""

    def __init__(self, url: str, api_key: str, team_id: str):
        headers = {"X-API-Key": api_key, "X-Team-ID": team_id}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=30)

    def latest(self) -> dict[str, dict[str, Any]]:
        answer = self._call("GET", "/api/v1/workflows")
        return {item["key"]: item for item in answer.json()["workflows"]}

    def put(self, workflow: LocalWorkflow) -> dict[str, Any]:
        stored: dict[str, Any] = self._call(
            "PUT", f"/api/v1/workflows/{workflow.key}", workflow.document
        ).json()
        return stored

    def trigger_detail(self, trigger_id: str) -> dict[str, Any]:
        """The tracker's account of a trigger: GET /api/v1/triggers/{id}/workflow."""
        answer: dict[str, Any] = self._call("GET", f"/api/v1/triggers/{trigger_id}/workflow").json()
        detail = answer.get("detail", answer)
        return detail if isinstance(detail, dict) else answer

    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        try:
            answer = self._http.request(method, path, json=body)
        except httpx.HTTPError as error:
            raise HeraldError(f"cannot reach the Herald API at {self._http.base_url}: {error}") from None
        if answer.status_code >= 400:
            try:
                message = answer.json().get("message", answer.text)
            except ValueError:
                message = answer.text
            raise HeraldError(f"{method} {path} → {answer.status_code}: {message}")
        return answer


def api_for(settings: Settings, url: str | None, api_key: str | None, team_id: str | None) -> Api:
    """The API to talk to: --url / HERALD_URL, else the stack running from HERALD_DATA_DIR; the
    key and team from --api-key / HERALD_API_KEY and --team / HERALD_TEAM_ID, else that stack's
    development credentials."""
    credentials = settings.data_dir / CREDENTIALS_FILE
    url = url or os.environ.get("HERALD_URL") or _saved(settings.data_dir / STACK_FILE, "gateway")
    api_key = api_key or os.environ.get("HERALD_API_KEY") or _saved(credentials, "api_key")
    team_id = team_id or os.environ.get("HERALD_TEAM_ID") or _saved(credentials, "team_id")
    if not url:
        raise HeraldError("No Herald API to talk to: pass --url or set HERALD_URL (or run `herald run`)")
    if not api_key:
        raise HeraldError("No API key: pass --api-key or set HERALD_API_KEY")
    if not team_id:
        raise HeraldError("No team: pass --team or set HERALD_TEAM_ID")
    return Api(url, api_key, team_id)


def _saved(path: Path, name: str) -> str | None:
    try:
        value = json.loads(path.read_text()).get(name)
    except (OSError, ValueError):
        return None
    return str(value) if value else None


def _comparable(stored: dict[str, Any]) -> dict[str, Any]:
    """A workflow as the API answers it (every field, defaults included), in the file's form."""
    message = workflow_pb2.Workflow()
    json_format.ParseDict({k: v for k, v in stored.items() if k not in OUTPUT_ONLY}, message)
    return definition_document(definition_from_proto(message))


def _shown(document: dict[str, Any]) -> list[str]:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def diff(local: list[LocalWorkflow], remote: dict[str, dict[str, Any]]) -> tuple[list[str], int]:
    """The report of what `apply` would change, and how many workflows differ."""
    lines: list[str] = []
    changes = 0
    for workflow in local:
        stored = remote.get(workflow.key)
        if stored is None:
            changes += 1
            lines.append(f"+ {workflow.key} (new, from {workflow.source})")
            continue
        before, after = _comparable(stored), workflow.document
        if before == after:
            lines.append(f"= {workflow.key} (unchanged, version {stored.get('version')})")
            continue
        changes += 1
        lines.append(f"~ {workflow.key} (version {stored.get('version')} → {stored.get('version', 0) + 1})")
        lines.extend(
            difflib.unified_diff(
                _shown(before), _shown(after), f"{workflow.key}@server", workflow.source, lineterm=""
            )
        )
    for key in sorted(set(remote) - {workflow.key for workflow in local}):
        lines.append(f"! {key} is only on the server (apply does not delete it)")
    return lines, changes


def apply(local: list[LocalWorkflow], api: Api) -> list[str]:
    """PUT every workflow that differs from the server's latest version; what happened to each."""
    remote = api.latest()
    lines = []
    for workflow in local:
        stored = remote.get(workflow.key)
        if stored is not None and _comparable(stored) == workflow.document:
            lines.append(f"= {workflow.key} unchanged (version {stored.get('version')})")
            continue
        saved = api.put(workflow)
        verb = "created" if stored is None else "updated"
        lines.append(f"{'+' if stored is None else '~'} {workflow.key} {verb}: version {saved['version']}")
    return lines
