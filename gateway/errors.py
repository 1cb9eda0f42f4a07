"""The one place where an error becomes an HTTP answer: `{"statusCode", "message", "error"}`."""

from __future__ import annotations

import grpc
from aiohttp import web

from kernel.errors import (
    HTTP_STATUS_KEY,
    HTTP_STATUS_OF_CODE,
    HeraldError,
    error_info,
    http_phrase,
    http_status_of,
)


def error_body(status: int, message: str) -> dict[str, object]:
    return {"statusCode": status, "message": message, "error": http_phrase(status)}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(status, message), status=status, headers=headers)


def from_herald_error(error: HeraldError) -> web.Response:
    return error_response(http_status_of(error), error.message)


def from_rpc_error(error: grpc.aio.AioRpcError, service: str) -> web.Response:
    """The HTTP answer for a failed call to `service`."""
    info = error_info(error)
    code = error.code()
    if info is None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return error_response(HTTP_STATUS_OF_CODE[code], f"{service} is not answering; try again shortly")
    status = HTTP_STATUS_OF_CODE.get(code, 500)
    if info is not None and HTTP_STATUS_KEY in info.metadata:
        status = int(info.metadata[HTTP_STATUS_KEY])
    message = error.details() or code.name
    if status >= 500 and info is None:
        message = "Internal server error"
    return error_response(status, message)
