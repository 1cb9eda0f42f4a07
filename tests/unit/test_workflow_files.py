"""Workflows as code without a server: reading a directory of YAML and JSON files, and the diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.workflow_files import WorkflowFileError, diff, read_directory

WELCOME_YAML = """\
key: welcome
name: Welcome
trigger: {event: user_signup}
steps:
  - type: email
    subject: "Hi {{contact.name}}"
    body: Hello
"""


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text, encoding="utf-8")


def test_yaml_and_json_files_are_read_and_normalized_as_the_server_stores_them(tmp_path: Path) -> None:
    write(tmp_path, "welcome.yaml", WELCOME_YAML)
    write(
        tmp_path,
        "more.yml",
        WELCOME_YAML.replace("welcome", "second") + "---\n" + WELCOME_YAML.replace("welcome", "third"),
    )
    write(
        tmp_path,
        "hooks.json",
        '[{"key": "hook", "name": "Hook", "trigger": {"event": "a.b"}, '
        '"steps": [{"type": "webhook", "url": "https://example.com", "method": "post"}]}]',
    )
    write(tmp_path, "notes.txt", "ignored")

    found = read_directory(tmp_path)

    assert [(w.key, w.source.rsplit("/", 1)[-1]) for w in found] == [
        ("hook", "hooks.json"),
        ("second", "more.yml#1"),
        ("third", "more.yml#2"),
        ("welcome", "welcome.yaml"),
    ]
    welcome = found[-1].document
    assert welcome["active"] is True
    assert welcome["steps"] == [
        {"id": "step-1", "type": "email", "subject": "Hi {{contact.name}}", "body": "Hello"}
    ]
    assert found[0].document["steps"][0]["method"] == "POST"


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("bad.yaml", "key: [unclosed", "bad.yaml: line 1, column 15"),
        ("bad.json", '{"key": ', "bad.json: line 1, column 9: Expecting value"),
        ("list.yaml", "- a\n- b\n", "list.yaml: a workflow is a mapping"),
        (
            "unknown.yaml",
            WELCOME_YAML + "colour: red\n",
            'unknown.yaml: Message type "herald.workflow.v1.Workflow" has no field named "colour"',
        ),
        (
            "invalid.yaml",
            WELCOME_YAML.replace("user_signup", "Bad Name"),
            "invalid.yaml: Invalid workflow: trigger.event:",
        ),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_place(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    write(tmp_path, name, text)

    with pytest.raises(WorkflowFileError) as raised:
        read_directory(tmp_path)

    assert problem in raised.value.message


def test_a_key_defined_twice_and_an_empty_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkflowFileError, match="has no workflow files"):
        read_directory(tmp_path)
    write(tmp_path, "a.yaml", WELCOME_YAML)
    write(tmp_path, "b.yaml", WELCOME_YAML)
    with pytest.raises(WorkflowFileError, match=r"b\.yaml: key .welcome. is also defined in .*a\.yaml"):
        read_directory(tmp_path)
    with pytest.raises(WorkflowFileError, match="is not a directory"):
        read_directory(tmp_path / "a.yaml")


def test_the_diff_shows_new_changed_unchanged_and_server_only_workflows(tmp_path: Path) -> None:
    write(tmp_path, "welcome.yaml", WELCOME_YAML)
    write(tmp_path, "new.yaml", WELCOME_YAML.replace("welcome", "brand-new"))
    [new, welcome] = read_directory(tmp_path)
    stored = {**welcome.document, "version": 2, "created_at": "2026-11-23T10:00:00.000Z"}

    lines, changes = diff([new, welcome], {"welcome": stored, "old": {"key": "old", "version": 1}})
    assert changes == 1
    assert lines[0].startswith("+ brand-new (new, from ")
    assert lines[1:] == [
        "= welcome (unchanged, version 2)",
        "! old is only on the server (apply does not delete it)",
    ]

    changed = {**stored, "name": "Old name"}
    lines, changes = diff([welcome], {"welcome": changed})
    assert changes == 1
    assert lines[0] == "~ welcome (version 2 → 3)"
    assert '-  "name": "Old name",' in lines
    assert '+  "name": "Welcome",' in lines
