"""The REST routes, read from the `google.api.http` annotations of Herald's service descriptors.

The proto is the one source of truth for both APIs: each annotated RPC becomes one route, with
its path template, the request field its body fills (`body`), the response field that becomes the
HTTP body (`response_body`), its success status (`herald.api.v1.http_success_status`) and how
long the gateway waits for it (`herald.api.v1.call_timeout_seconds`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor

from herald.api.v1 import options_pb2
from herald.executor.v1 import devmail_pb2, executor_pb2
from herald.ingest.v1 import ingest_pb2
from herald.matcher.v1 import matcher_pb2
from herald.tracker.v1 import tracker_pb2

# Each public service, and the Herald process that serves it (a key of Settings.service_addresses).
SERVICES: tuple[tuple[ServiceDescriptor, str], ...] = (
    (ingest_pb2.DESCRIPTOR.services_by_name["IngestService"], "ingest"),
    (ingest_pb2.DESCRIPTOR.services_by_name["ContactService"], "ingest"),
    (ingest_pb2.DESCRIPTOR.services_by_name["ProjectService"], "ingest"),
    (matcher_pb2.DESCRIPTOR.services_by_name["MatcherService"], "matcher"),
    (executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"], "executor"),
    (tracker_pb2.DESCRIPTOR.services_by_name["TrackerService"], "tracker"),
    (devmail_pb2.DESCRIPTOR.services_by_name["DevMailService"], "devmail"),
)
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
PATH_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    http_method: str
    path: str
    method: MethodDescriptor
    process: str
    body: str
    response_body: str
    success_status: int
    # Seconds the gateway waits for the call; None: the gateway's default.
    timeout: float | None = None

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def path_variables(self) -> list[str]:
        return PATH_VARIABLE.findall(self.path)


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    assert field.message_type is not None, f"{field.full_name} is not a message field"
    return field.message_type


def is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and bool(message_of(field).GetOptions().map_entry)


def _bindings(rule: http_pb2.HttpRule) -> list[http_pb2.HttpRule]:
    return [rule, *rule.additional_bindings]


def routes() -> list[Route]:
    found = []
    for service, process in SERVICES:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            status = options.Extensions[options_pb2.http_success_status] or 200
            timeout = options.Extensions[options_pb2.call_timeout_seconds] or None
            for binding in _bindings(options.Extensions[annotations_pb2.http]):
                verb = binding.WhichOneof("pattern")
                if verb not in HTTP_METHODS:
                    raise ValueError(f"{method.full_name}: unsupported HTTP pattern {verb!r}")
                path = getattr(binding, verb)
                for variable in PATH_VARIABLE.findall(path):
                    if variable not in method.input_type.fields_by_name:
                        raise ValueError(
                            f"{method.full_name}: path variable {variable!r} is not a request field"
                        )
                found.append(
                    Route(
                        verb.upper(),
                        path,
                        method,
                        process,
                        binding.body,
                        binding.response_body,
                        status,
                        float(timeout) if timeout else None,
                    )
                )
    return found
