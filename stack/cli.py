"""The `herald` command: run the whole platform, one service, migrations, API keys, and
workflows as code."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from kernel.database import create_engine, session_factory
from kernel.errors import HeraldError
from kernel.logs import configure_logging
from kernel.migrations import upgrade_all
from kernel.settings import Settings
from kernel.tenancy import ensure_team, issue_key, list_keys, revoke_key
from stack import trace as tracing
from stack import workflow_files
from stack.embedded import EmbeddedServerError
from stack.launcher import MODULES, STACK_FILE, Stack, StackError

WATCH_INTERVAL_SECONDS = 0.5
# Under the data directory: one JSON-lines file per process (`herald trace` reads them).
LOGS_DIRECTORY = "logs"


def run(settings: Settings, options: argparse.Namespace) -> int:
    """Start everything, print where it is, keep it running until Ctrl-C or SIGTERM."""
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    stack = Stack(settings, log_directory=settings.data_dir / LOGS_DIRECTORY, echo_logs=True)
    print("Starting Herald…", file=sys.stderr)
    try:
        stack.start()
    except KeyboardInterrupt:
        return 130
    signal.signal(signal.SIGINT, request_stop)
    print(stack.summary(), flush=True)
    try:
        while not stopping.wait(WATCH_INTERVAL_SECONDS):
            stack.watch()
    finally:
        print("Stopping Herald…", file=sys.stderr)
        stack.stop()
    print("Herald stopped.", file=sys.stderr)
    return 0


def serve(settings: Settings, options: argparse.Namespace) -> int:
    import runpy

    sys.argv = [MODULES[options.service]]
    runpy.run_module(MODULES[options.service], run_name="__main__", alter_sys=True)
    return 0


def database_url(settings: Settings) -> str:
    """HERALD_DATABASE_URL, or the database of the stack running from HERALD_DATA_DIR."""
    if settings.database_url:
        return settings.database_url
    stack_file = settings.data_dir / STACK_FILE
    if not stack_file.exists():
        raise HeraldError(
            f"No running stack found in {settings.data_dir} and HERALD_DATABASE_URL is not set: "
            "start one with `herald run` or set HERALD_DATABASE_URL"
        )
    return str(json.loads(stack_file.read_text())["database_url"])


def migrate(settings: Settings, options: argparse.Namespace) -> int:
    upgrade_all(database_url(settings))
    print("Migrations applied.")
    return 0


async def _keys(settings: Settings, options: argparse.Namespace) -> int:
    engine = create_engine(database_url(settings), pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            if options.keys_command == "create":
                team = await ensure_team(session, options.team, name=options.name)
                issued = await issue_key(session, team.id, label=options.label)
                print(f"Created an API key for team {team.id} (shown once; store it now):")
                print(issued.secret)
            elif options.keys_command == "list":
                for key in await list_keys(session, options.team):
                    state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
                    print(f"{key.id}  {key.team_id:<24} {key.display_prefix}…  {state:<24} {key.label}")
            else:
                key = await revoke_key(session, options.key)
                print(f"Revoked key {key.id} ({key.display_prefix}…) of team {key.team_id}.")
    finally:
        await engine.dispose()
    return 0


def keys(settings: Settings, options: argparse.Namespace) -> int:
    return asyncio.run(_keys(settings, options))


def workflows(settings: Settings, options: argparse.Namespace) -> int:
    """`diff` exits 1 when something differs (like diff(1)); `apply` exits 0 once all is stored."""
    local = workflow_files.read_directory(Path(options.directory))
    api = workflow_files.api_for(settings, options.url, options.api_key, options.team)
    if options.workflows_command == "diff":
        lines, changes = workflow_files.diff(local, api.latest())
        print("\n".join(lines))
        return 1 if changes else 0
    print("\n".join(workflow_files.apply(local, api)))
    return 0


def trace(settings: Settings, options: argparse.Namespace) -> int:
    """One trigger's story from the processes' log files; with --url or --api-key, the
    tracker's account of it too."""
    directory = Path(options.logs) if options.logs else settings.data_dir / LOGS_DIRECTORY
    story = tracing.trace(directory, options.trigger_id)
    detail = None
    if options.url or options.api_key:
        api = workflow_files.api_for(settings, options.url, options.api_key, options.team)
        detail = api.trigger_detail(story.trigger_id)
    if options.json:
        document = story.document()
        if detail is not None:
            document["tracker"] = detail
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    lines = tracing.render(story)
    if detail is not None:
        lines += tracing.render_detail(detail)
    print("\n".join(lines))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="herald", description="Herald: event-triggered messaging workflows.")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start the whole platform (embedded PostgreSQL and NATS by default)")
    serve_parser = commands.add_parser("serve", help="run one service in the foreground")
    serve_parser.add_argument("service", choices=sorted(MODULES))
    commands.add_parser("migrate", help="apply database migrations")
    keys_parser = commands.add_parser("keys", help="manage API keys")
    keys_commands = keys_parser.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="create a key (and the team, if new); prints it once")
    create.add_argument("--team", required=True, help="team id: letters, digits, '_' or '-'")
    create.add_argument("--name", help="the team's display name, when the team is new")
    create.add_argument("--label", default="", help="a note on what the key is for")
    listing = keys_commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--team")
    revoke = keys_commands.add_parser("revoke", help="revoke a key by its secret, id or prefix")
    revoke.add_argument("key")
    workflows_parser = commands.add_parser("workflows", help="workflows as code: YAML or JSON files")
    workflows_commands = workflows_parser.add_subparsers(dest="workflows_command", required=True)
    for name, text in (
        ("diff", "show what apply would change (exit 1 when something differs)"),
        ("apply", "store every workflow of the directory that differs as a new version"),
    ):
        command = workflows_commands.add_parser(name, help=text)
        command.add_argument("-f", "--directory", required=True, help="directory of .yaml/.yml/.json files")
        command.add_argument("--url", help="the API (default HERALD_URL, else the running `herald run`)")
        command.add_argument("--api-key", help="default HERALD_API_KEY, else the development key")
        command.add_argument("--team", help="the team id (default HERALD_TEAM_ID, else the development team)")
    trace_parser = commands.add_parser(
        "trace", help="print one trigger's story across every service, from their log files"
    )
    trace_parser.add_argument("trigger_id", help="the trigger id SendEvent answered")
    trace_parser.add_argument(
        "--logs", help="directory of the processes' *.log files (default HERALD_DATA_DIR/logs)"
    )
    trace_parser.add_argument("--json", action="store_true", help="print the story as one JSON document")
    trace_parser.add_argument("--url", help="also ask the tracker API at this URL (default HERALD_URL)")
    trace_parser.add_argument("--api-key", help="also ask the tracker API with this key")
    trace_parser.add_argument("--team", help="the team id, with --url/--api-key (default HERALD_TEAM_ID)")
    return root


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "run": run,
    "serve": serve,
    "migrate": migrate,
    "keys": keys,
    "workflows": workflows,
    "trace": trace,
}


def main(argv: Sequence[str] | None = None) -> None:
    options = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging("herald", log_format=settings.log_format, level=settings.log_level)
        sys.exit(COMMANDS[options.command](settings, options))
    except HeraldError as error:
        print(f"herald: {error.message}", file=sys.stderr)
        sys.exit(2)
    except (StackError, EmbeddedServerError) as error:
        print(f"herald: {error} (its log lines are above)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
