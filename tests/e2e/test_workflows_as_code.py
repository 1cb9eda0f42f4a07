"""`herald workflows diff` and `apply` against a running platform: files become versions, an
unchanged file stores nothing, and a bad file changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import RunningStack

HERALD = str(Path(sys.executable).parent / "herald")
FLOW = """\
key: code-onboarding
name: Onboarding
trigger: {event: code.signup}
steps:
  - {id: welcome, type: email, subject: "Welcome {{contact.name}}", body: Hi}
  - {id: wait, type: wait_for_event, event: code.activated, timeout: P3D, on_timeout: nudge}
  - {id: done, type: exit}
  - {id: nudge, type: sms, body: "Come back"}
"""


def herald(running: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    command = [HERALD, "workflows", *args, "--url", running.stack.gateway_url]
    command += ["--api-key", running.credentials.api_key, "--team", running.credentials.team_id]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_files_are_diffed_and_applied_as_new_versions_only_when_they_change(
    running: RunningStack, tmp_path: Path
) -> None:
    (tmp_path / "onboarding.yaml").write_text(FLOW)

    before = herald(running, "diff", "-f", str(tmp_path))
    assert before.returncode == 1, before.stderr
    assert "+ code-onboarding (new, from " in before.stdout
    applied = herald(running, "apply", "-f", str(tmp_path))
    assert applied.returncode == 0, applied.stderr
    assert "+ code-onboarding created: version 1" in applied.stdout
    again = herald(running, "apply", "-f", str(tmp_path))
    assert "= code-onboarding unchanged (version 1)" in again.stdout
    assert herald(running, "diff", "-f", str(tmp_path)).returncode == 0

    (tmp_path / "onboarding.yaml").write_text(FLOW.replace("name: Onboarding", "name: Onboarding v2"))
    changed = herald(running, "diff", "-f", str(tmp_path))
    assert changed.returncode == 1
    assert "~ code-onboarding (version 1 → 2)" in changed.stdout
    assert '+  "name": "Onboarding v2",' in changed.stdout
    assert "updated: version 2" in herald(running, "apply", "-f", str(tmp_path)).stdout
    stored = running.http.get("/api/v1/workflows/code-onboarding", headers=running.credentials.headers)
    assert (stored.json()["name"], stored.json()["version"]) == ("Onboarding v2", 2)


def test_a_bad_file_is_reported_and_nothing_is_applied(running: RunningStack, tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(FLOW.replace("code-onboarding", "code-good"))
    (tmp_path / "bad.yaml").write_text(
        FLOW.replace("code-onboarding", "code-bad").replace("on_timeout: nudge", "on_timeout: welcome")
    )

    refused = herald(running, "apply", "-f", str(tmp_path))

    assert refused.returncode == 2
    assert "bad.yaml: Invalid workflow: steps[1].on_timeout: 'welcome' is not a later step" in refused.stderr
    assert (
        running.http.get("/api/v1/workflows/code-good", headers=running.credentials.headers).status_code
        == 404
    )
    wrong_key = subprocess.run(
        [
            HERALD,
            "workflows",
            "diff",
            "-f",
            str(tmp_path / "nowhere"),
            "--url",
            running.stack.gateway_url,
            "--api-key",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong_key.returncode == 2
    assert "is not a directory" in wrong_key.stderr
