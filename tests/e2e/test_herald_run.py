"""`herald run` (what `make run` starts): embedded PostgreSQL and NATS, every process, the printed
credentials, the capture inbox, a clean Ctrl-C, and data that survives a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from stack.embedded import free_port, port_is_free
from tests.e2e.support import SENDMATOR_EXAMPLE_1, WELCOME_WORKFLOW, eventually

HERALD = str(Path(sys.executable).parent / "herald")
SERVICES = ("INGEST", "MATCHER", "EXECUTOR", "TRACKER", "DEVMAIL")


def run_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HERALD_")}
    env.update({
        "HERALD_DATA_DIR": str(data_dir),
        "HERALD_HTTP_PORT": str(free_port()),
        "HERALD_DEVMAIL_SMTP_PORT": str(free_port()),
        "HERALD_LOG_FORMAT": "json",
        **{f"HERALD_{name}_ADDR": f"127.0.0.1:{free_port()}" for name in SERVICES},
        **{f"HERALD_{name}_METRICS_ADDR": f"127.0.0.1:{free_port()}" for name in SERVICES},
        **extra,
    })  # fmt: skip
    return env


def ports_of(env: dict[str, str]) -> list[int]:
    ports = [int(env["HERALD_HTTP_PORT"]), int(env["HERALD_DEVMAIL_SMTP_PORT"])]
    ports += [int(env[f"HERALD_{name}_ADDR"].rsplit(":", 1)[1]) for name in SERVICES]
    return ports + [int(env[f"HERALD_{name}_METRICS_ADDR"].rsplit(":", 1)[1]) for name in SERVICES]


@contextmanager
def herald_run(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`herald run` until its summary is printed; yields the process and the summary."""
    with log.open("a") as errors:
        process = subprocess.Popen([HERALD, "run"], env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
    assert process.stdout is not None
    summary: list[str] = []
    deadline = time.monotonic() + 120
    try:
        for line in process.stdout:
            summary.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert any("Press Ctrl-C" in line for line in summary), log.read_text()[-3000:]
        yield process, "".join(summary)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                raise


def story_of(env: dict[str, str], trigger_id: str, awaited: str) -> dict[str, Any] | None:
    """`herald trace --json` of the trigger, once its story has an `awaited` line."""
    answer = subprocess.run(
        [HERALD, "trace", trigger_id, "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert answer.returncode == 0, answer.stderr
    story: dict[str, Any] = json.loads(answer.stdout)
    return story if awaited in {line["event"] for line in story["lines"]} else None


def credentials(summary: str) -> dict[str, str]:
    team = re.search(r"X-Team-ID: (\S+)", summary)
    key = re.search(r"X-API-Key: (\S+)", summary)
    assert team and key, summary
    return {"X-Team-ID": team.group(1), "X-API-Key": key.group(1)}


def stop_with_ctrl_c(process: subprocess.Popen[str], env: dict[str, str], data_dir: Path) -> None:
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    assert all(port_is_free(port) for port in ports_of(env))
    leftovers = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True).stdout.split()
    assert leftovers == []


def test_herald_run_serves_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "herald-data"
    env = run_environment(data_dir)
    gateway = f"http://127.0.0.1:{env['HERALD_HTTP_PORT']}"
    log = tmp_path / "herald-run.log"

    with herald_run(env, log) as (process, summary):
        assert f"Gateway (REST):   {gateway}" in summary
        for name in SERVICES:
            assert env[f"HERALD_{name}_ADDR"] in summary
        assert "(embedded)" in summary
        headers = credentials(summary)
        with httpx.Client(base_url=gateway, headers=headers, timeout=30) as http:
            assert http.post("/api/v1/workflows", json=WELCOME_WORKFLOW).status_code == 201
            sent = http.post(
                "/api/v1/events/send", json={**SENDMATOR_EXAMPLE_1, "variables": {"user_name": "J"}}
            )
            assert sent.status_code == 201, sent.text
            mail = eventually(lambda: http.get("/api/v1/dev/mail").json()["messages"])
            assert mail[0]["subject"] == "Welcome, John Doe"
            assert mail[0]["rcpt_to"] == ["john.doe@example.com"]
            assert mail[0]["text"].strip() == "Hello J"
            trigger_id = sent.json()["trigger_id"]
            eventually(lambda: http.get(f"/api/v1/triggers/{trigger_id}").json()["status"] == "completed")
        # Every process's /metrics is listed and answers; its log lines are in files `herald trace` reads.
        for name in SERVICES:
            url = f"http://{env[f'HERALD_{name}_METRICS_ADDR']}/metrics"
            assert url in summary
            assert "herald_grpc_requests_total" in httpx.get(url, timeout=5).text
        assert "herald_http_requests_total" in httpx.get(f"{gateway}/metrics", timeout=5).text
        assert f"Logs:             {data_dir.resolve() / 'logs'}" in summary
        assert {"ingest.log", "matcher.log", "executor.log", "tracker.log", "gateway.log"} <= {
            path.name for path in (data_dir / "logs").iterdir()
        }
        story = eventually(lambda: story_of(env, trigger_id, "step.done"))
        # Each service told its part (in which order they first did depends on who was quicker: the
        # tracker may report the acceptance before the executor starts the run).
        assert {"ingest", "matcher", "executor", "tracker"} <= set(story["services"])
        stop_with_ctrl_c(process, env, data_dir)

    with herald_run(env, log) as (process, summary):
        assert credentials(summary) == headers
        with httpx.Client(base_url=gateway, headers=headers, timeout=30) as http:
            assert http.get("/api/v1/workflows/welcome-email").json()["version"] == 1
            trigger = http.get(f"/api/v1/triggers/{sent.json()['trigger_id']}").json()
            assert trigger["status"] == "completed"
            assert len(http.get("/api/v1/dev/mail").json()["messages"]) == 1
        stop_with_ctrl_c(process, env, data_dir)


def test_development_credentials_come_from_the_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "herald-data"
    env = run_environment(
        data_dir, HERALD_DEV_TEAM_ID="acme", HERALD_DEV_API_KEY="hk_fixed_development_key_123"
    )
    with herald_run(env, tmp_path / "herald-run.log") as (process, summary):
        assert credentials(summary) == {"X-Team-ID": "acme", "X-API-Key": "hk_fixed_development_key_123"}
        gateway = f"http://127.0.0.1:{env['HERALD_HTTP_PORT']}"
        answer = httpx.get(f"{gateway}/api/v1/workflows", headers=credentials(summary), timeout=30)
        assert answer.status_code == 200
        assert answer.json() == {"workflows": []}
        stop_with_ctrl_c(process, env, data_dir)


def test_a_busy_port_is_reported_clearly(tmp_path: Path) -> None:
    env = run_environment(tmp_path / "herald-data")
    with socket.socket() as occupied:
        occupied.bind(("127.0.0.1", int(env["HERALD_HTTP_PORT"])))
        occupied.listen()
        result = subprocess.run([HERALD, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"port {env['HERALD_HTTP_PORT']} (HERALD_HTTP_PORT) already in use" in result.stderr
