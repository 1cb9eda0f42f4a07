"""ExecutorService over gRPC: runs and their steps, in-app feeds, dead letters, channels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import grpc

from herald.executor.v1 import devmail_pb2, devmail_pb2_grpc, executor_pb2, executor_pb2_grpc
from kernel.auth import Authenticator
from kernel.clients import CALL_TIMEOUT_SECONDS, forwarded_metadata
from kernel.clock import isoformat_ms
from kernel.cursors import encode_cursor
from kernel.errors import Unavailable
from kernel.retention import ContactNames, LifecycleUnitOfWork, erase_contact
from services.executor import handlers
from services.executor.domain import (
    DeadLetter,
    FeedItem,
    OutgoingText,
    ProviderSettings,
    Run,
    Timer,
    waiting,
)

Context = grpc.aio.ServicerContext[Any, Any]
MAX_INT32 = 2**31 - 1


def run_to_proto(run: Run, timers: Sequence[Timer] = ()) -> executor_pb2.Run:
    """The run and its steps; with `timers`, each waiting step says what it waits for."""
    message = executor_pb2.Run(
        id=str(run.id),
        trigger_id=str(run.trigger_id),
        event_id=str(run.event_id),
        workflow_key=run.workflow_key,
        workflow_version=run.workflow_version,
        contact_id=run.contact_id,
        status=run.status,
        created_at=isoformat_ms(run.created_at) if run.created_at else "",
    )
    if run.finished_at:
        message.finished_at = isoformat_ms(run.finished_at)
    for step in run.steps:
        proto_step = message.steps.add(
            step_id=step.spec.id,
            type=step.spec.type,
            status=step.status,
            attempts=step.attempts,
            detail=step.detail,
        )
        if step.finished_at:
            proto_step.finished_at = isoformat_ms(step.finished_at)
        waiting_for, until = waiting(step, timers)
        proto_step.waiting_for = waiting_for
        if until is not None:
            proto_step.waiting_until = isoformat_ms(until)
    return message


def feed_item_to_proto(item: FeedItem) -> executor_pb2.FeedItem:
    message = executor_pb2.FeedItem(
        id=str(item.id),
        title=item.title,
        body=item.body,
        url=item.url,
        created_at=isoformat_ms(item.created_at),
        run_id=str(item.run_id),
        step_id=item.step_id,
    )
    if item.read_at:
        message.read_at = isoformat_ms(item.read_at)
    return message


def dead_letter_to_proto(letter: DeadLetter) -> executor_pb2.DeadLetter:
    message = executor_pb2.DeadLetter(
        id=str(letter.id),
        run_id=str(letter.run_id),
        trigger_id=str(letter.trigger_id),
        step_id=letter.step_id,
        channel=letter.channel,
        error=letter.error,
        attempts=letter.attempts,
        failed_at=isoformat_ms(letter.failed_at),
        status=letter.status,
        replays=letter.replays,
    )
    if letter.replayed_at:
        message.replayed_at = isoformat_ms(letter.replayed_at)
    return message


def provider_to_proto(provider: ProviderSettings) -> executor_pb2.ChannelProvider:
    """The provider with its header values masked: they usually hold credentials."""
    return executor_pb2.ChannelProvider(
        url=provider.url,
        headers={name: _masked(value) for name, value in provider.headers.items()},
        updated_at=isoformat_ms(provider.updated_at) if provider.updated_at else "",
    )


def _masked(value: str) -> str:
    return "****" + value[-4:] if len(value) > 12 else "****"


def dev_message_to_proto(message: OutgoingText, at: datetime) -> executor_pb2.DevMessage:
    return executor_pb2.DevMessage(
        id=message.idempotency_key,
        channel=message.channel,
        to=message.to,
        title=message.title,
        body=message.body,
        url=message.url,
        created_at=isoformat_ms(at),
    )


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        unit_of_work: Callable[[], handlers.ExecutorUnitOfWork],
        lifecycle: Callable[[], LifecycleUnitOfWork],
        devmail: devmail_pb2_grpc.DevMailServiceAsyncStub | None = None,
    ):
        self._auth = authenticator
        self._uow = unit_of_work
        self._lifecycle = lifecycle
        # The development capture inbox, when email goes there (no HERALD_SMTP_URL).
        self._devmail = devmail

    async def GetRun(
        self, request: executor_pb2.GetRunRequest, context: Context
    ) -> executor_pb2.GetRunResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        run, timers = await handlers.describe_run(team.id, request.run_id, self._uow())
        return executor_pb2.GetRunResponse(run=run_to_proto(run, timers))

    async def ListFeed(
        self, request: executor_pb2.ListFeedRequest, context: Context
    ) -> executor_pb2.ListFeedResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        items = await handlers.list_feed(
            team.id, request.external_id, request.limit, request.unread_only, self._uow()
        )
        return executor_pb2.ListFeedResponse(items=[feed_item_to_proto(item) for item in items])

    async def MarkFeedRead(
        self, request: executor_pb2.MarkFeedReadRequest, context: Context
    ) -> executor_pb2.MarkFeedReadResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        marked = await handlers.mark_feed_read(team.id, request.external_id, list(request.ids), self._uow())
        return executor_pb2.MarkFeedReadResponse(marked=marked)

    async def ListDeadLetters(
        self, request: executor_pb2.ListDeadLettersRequest, context: Context
    ) -> executor_pb2.ListDeadLettersResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        page = await handlers.list_dead_letters(
            team.id,
            request.limit,
            self._uow(),
            status=request.status,
            channel=request.channel,
            cursor=request.cursor,
        )
        return executor_pb2.ListDeadLettersResponse(
            dead_letters=[dead_letter_to_proto(letter) for letter in page.letters],
            next_cursor=encode_cursor(page.next_after[0], str(page.next_after[1])) if page.next_after else "",
            total=min(page.total, MAX_INT32),
        )

    async def GetDeadLetter(
        self, request: executor_pb2.GetDeadLetterRequest, context: Context
    ) -> executor_pb2.GetDeadLetterResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        letter = await handlers.get_dead_letter(team.id, request.id, self._uow())
        return executor_pb2.GetDeadLetterResponse(dead_letter=dead_letter_to_proto(letter))

    async def ReplayDeadLetter(
        self, request: executor_pb2.ReplayDeadLetterRequest, context: Context
    ) -> executor_pb2.ReplayDeadLetterResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        letter = await handlers.replay_dead_letter(team.id, request.id, self._uow())
        return executor_pb2.ReplayDeadLetterResponse(dead_letter=dead_letter_to_proto(letter))

    async def GetChannels(
        self, request: executor_pb2.GetChannelsRequest, context: Context
    ) -> executor_pb2.GetChannelsResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        settings = await handlers.channel_settings(team.id, self._uow())
        response = executor_pb2.GetChannelsResponse(
            webhook=executor_pb2.WebhookChannel(signing_secret=settings.webhook_secret)
        )
        if settings.sms:
            response.sms.CopyFrom(provider_to_proto(settings.sms))
        if settings.push:
            response.push.CopyFrom(provider_to_proto(settings.push))
        return response

    async def PutChannelProvider(
        self, request: executor_pb2.PutChannelProviderRequest, context: Context
    ) -> executor_pb2.PutChannelProviderResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        provider = await handlers.put_provider(
            team.id, request.channel, request.provider.url, dict(request.provider.headers), self._uow()
        )
        return executor_pb2.PutChannelProviderResponse(provider=provider_to_proto(provider))

    async def SetWebhookSecret(
        self, request: executor_pb2.SetWebhookSecretRequest, context: Context
    ) -> executor_pb2.SetWebhookSecretResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        secret = await handlers.set_webhook_secret(team.id, request.signing_secret.strip(), self._uow())
        return executor_pb2.SetWebhookSecretResponse(signing_secret=secret)

    async def ListDevMessages(
        self, request: executor_pb2.ListDevMessagesRequest, context: Context
    ) -> executor_pb2.ListDevMessagesResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        found = await handlers.list_dev_messages(team.id, request.channel, request.limit, self._uow())
        return executor_pb2.ListDevMessagesResponse(
            messages=[dev_message_to_proto(message, at) for message, at in found]
        )

    async def EraseContact(
        self, request: executor_pb2.EraseContactRequest, context: Context
    ) -> executor_pb2.EraseContactResponse:
        metadata = context.invocation_metadata()
        team = await self._auth.authenticate(metadata)
        names = ContactNames.of(request)
        erased = await erase_contact(team.id, names, self._lifecycle())
        if self._devmail is not None:
            try:
                answer = await self._devmail.EraseDevMail(
                    devmail_pb2.EraseDevMailRequest(values=names.identifiers),
                    metadata=forwarded_metadata(metadata),
                    timeout=CALL_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError as error:
                raise Unavailable(
                    f"The development capture inbox could not erase the contact's mail ({error.details()})",
                    reason="ERASURE_INCOMPLETE",
                    metadata={"service": "devmail"},
                ) from error
            erased["devmail.messages"] = answer.erased
        return executor_pb2.EraseContactResponse(erased=erased)
