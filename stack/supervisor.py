"""A small process supervisor: start Herald's processes, watch them, stop them in order.

A child's output goes to our stderr, or to its log file, or (with an `Echo`) to both: a thread
copies each line to the file, rotated at LOG_MAX_BYTES (one older file, `<name>.log.1`, is kept),
and to our stderr, as console lines when that is a terminal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import structlog

from stack.embedded import die_with_parent, stop_process

log = structlog.get_logger(__name__)
RESTART_BACKOFF_SECONDS = (0.5, 1, 2, 5, 10)
LOG_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Echo:
    """Copy a child's output to its log file and to our stderr; `console`: show JSON lines there
    as structlog's console lines."""

    console: bool = False
    max_bytes: int = LOG_MAX_BYTES


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path | None = None
    echo: Echo | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float | None = None
    started_at: float = 0.0


@dataclass
class Supervisor:
    """Owns child processes by name; `check()` restarts the ones that died, when asked to."""

    restart_crashed: bool = True
    children: dict[str, Child] = field(default_factory=dict)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path | None = None,
        echo: Echo | None = None,
    ) -> Child:
        """Start `argv` as `name`; its output goes to `log_path` (appended) or to ours, or to
        both with `echo`."""
        child = self.children.get(name) or Child(name, argv, env)
        child.argv, child.env, child.log_path, child.echo = argv, env, log_path, echo
        self.children[name] = child
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        echoing = child.echo is not None and child.log_path is not None
        output = child.log_path.open("ab") if child.log_path is not None and not echoing else None
        try:
            child.process = subprocess.Popen(
                list(child.argv),
                env=dict(child.env),
                start_new_session=True,
                stdout=subprocess.PIPE if echoing else output,
                stderr=subprocess.STDOUT if output or echoing else None,
                preexec_fn=lambda: die_with_parent(signal.SIGTERM),
            )
        finally:
            if output is not None:
                output.close()
        if echoing:
            assert child.process.stdout is not None and child.log_path is not None and child.echo is not None
            threading.Thread(
                target=copy_output,
                args=(child.process.stdout, child.log_path, child.echo),
                name=f"output-{child.name}",
                daemon=True,
            ).start()
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("process.started", process=child.name, pid=child.process.pid)

    def pid(self, name: str) -> int | None:
        child = self.children.get(name)
        return child.process.pid if child and child.process and child.process.poll() is None else None

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would: nothing is flushed or closed."""
        child = self.children[name]
        if child.process is not None:
            child.process.kill()
            child.process.wait()
            child.process = None

    def stop(self, name: str, timeout: float = 15.0) -> None:
        child = self.children[name]
        if child.process is not None:
            stop_process(child.process, signal.SIGTERM, timeout)
            child.process = None

    def restart(self, name: str) -> None:
        self._spawn(self.children[name])

    def stop_all(self, order: Sequence[str] | None = None) -> None:
        names = list(order or reversed(list(self.children)))
        for name in names:
            child = self.children.get(name)
            if child is not None and child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for name in names:
            if name in self.children:
                self.stop(name)

    def check(self) -> list[str]:
        """Names of children that died since the last check; restarted with backoff if enabled."""
        died = []
        now = time.monotonic()
        for child in self.children.values():
            if child.process is not None and child.process.poll() is not None:
                code = child.process.returncode
                died.append(child.name)
                log.warning("process.exited", process=child.name, code=code)
                child.process = None
                if self.restart_crashed:
                    if now - child.started_at > 60:
                        child.restarts = 0
                    delay = RESTART_BACKOFF_SECONDS[min(child.restarts, len(RESTART_BACKOFF_SECONDS) - 1)]
                    child.restarts += 1
                    child.restart_at = now + delay
            elif child.process is None and child.restart_at is not None and now >= child.restart_at:
                self._spawn(child)
        return died


def copy_output(source: IO[bytes], path: Path, echo: Echo) -> None:
    """Each line of `source` to `path` (rotated at `echo.max_bytes`) and to our stderr, until
    the child closes its output. Whichever of the two fails is left out from then on: the
    child's output is always read, so the child never blocks on a full pipe."""
    renderer = structlog.dev.ConsoleRenderer(colors=False) if echo.console else None
    target: IO[bytes] | None = path.open("ab")
    showing = True
    try:
        for line in source:
            if target is not None:
                try:
                    if target.tell() + len(line) > echo.max_bytes:
                        target.close()
                        path.replace(path.with_name(path.name + ".1"))
                        target = path.open("ab")
                    target.write(line)
                    target.flush()
                except (OSError, ValueError):
                    target = None
            if showing:
                try:
                    sys.stderr.write(_shown(line, renderer))
                    sys.stderr.flush()
                except (OSError, ValueError):
                    showing = False
    finally:
        if target is not None:
            target.close()
        source.close()


def _shown(line: bytes, renderer: structlog.dev.ConsoleRenderer | None) -> str:
    text = line.decode(errors="replace")
    if renderer is None or not text.startswith("{"):
        return text
    try:
        entry = json.loads(text)
    except ValueError:
        return text
    if not isinstance(entry, dict):
        return text
    return str(renderer(None, str(entry.get("level", "info")), entry)) + "\n"
