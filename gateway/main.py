"""The gateway process: serve the REST API until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from gateway.app import create_app
from kernel.heap import settle_heap
from kernel.logs import configure_logging
from kernel.settings import Settings

log = structlog.get_logger(__name__)


async def serve(settings: Settings) -> None:
    runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    settle_heap()
    log.info("gateway.started", url=f"http://{settings.http_host}:{settings.http_port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("gateway.stopping")
    await runner.cleanup()


def main() -> None:
    settings = Settings.from_env()
    configure_logging("gateway", log_format=settings.log_format, level=settings.log_level)
    asyncio.run(serve(settings))
