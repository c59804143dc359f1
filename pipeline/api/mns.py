"""MNS-compatible HTTP API (the subset the ``aliyun-mns-sdk`` needs for IMM notifications):
queues (create, delete, list, attributes, send, receive with long polling, delete by receipt
handle, change visibility) and topics (create, delete, list, publish, subscribe, unsubscribe,
list subscriptions). XML bodies, ``x-mns-request-id``, MNS error XML, MNS signatures.

A queue subscription's Endpoint is MNS's QueueEndpoint, ``acs:mns:<region>:<AccountId>:queues/
<name>``; the dispatcher then writes each message into that queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from pipeline import auth, mns_auth
from pipeline.api import rpc, wire
from pipeline.api.services import Services
from pipeline.errors import ImmError, InvalidArgument, MessageNotExist
from pipeline.ids import utcnow
from pipeline.models import Event, Subscription
from pipeline.notify import queues, topics
from pipeline.notify.messages import MNS_XMLNS, RAW_MESSAGE_TYPE, epoch_ms, md5_upper

router = APIRouter()
MAX_XML_BYTES = 1 << 20
MAX_WAIT_SECONDS = 30
MAX_DELAY_SECONDS = 604800
MAX_PRIORITY = 16
MAX_VISIBILITY_SECONDS = 43200
# A receiver sleeping until a message turns visible wakes this much later, so the store (whose
# clock may differ by a few ms) already shows it visible.
VISIBILITY_SLACK_SECONDS = 0.005
T = TypeVar("T")


# IMM error codes → MNS error codes, for requests on the MNS paths.
MNS_CODES = {
    ("ResourceNotFound", "topic"): "TopicNotExist",
    ("ResourceNotFound", "subscription"): "SubscriptionNotExist",
    ("ResourceAlreadyExists", "topic"): "TopicAlreadyExist",
    ("ResourceAlreadyExists", "subscription"): "SubscriptionAlreadyExist",
}


def is_mns_path(path: str) -> bool:
    return path.startswith(("/queues", "/topics"))


def error_response(request: Request, exc: ImmError) -> Response:
    """MNS error XML (what the aliyun-mns-sdk parses) for an error on an MNS path."""
    resource = "subscription" if "subscription" in exc.message else "topic"
    code = getattr(exc, "mns_code", None) or MNS_CODES.get((exc.code, resource), exc.code)
    rid = getattr(request.state, "request_id", "")
    return _reply(
        request,
        exc.http_status,
        xml(
            "Error",
            {
                "Code": code,
                "Message": exc.message,
                "RequestId": rid,
                "HostId": f"{request.url.scheme}://{request.url.netloc}",
            },
        ),
    )


def xml(root: str, fields: dict[str, Any] | None = None, children: str = "") -> str:
    body = "".join(
        f"<{k}>{escape(str(v))}</{k}>"
        for k, v in (fields or {}).items()
        if v is not None and v != ""
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="{MNS_XMLNS}">'
        f"{body}{children}</{root}>"
    )


def parse_xml(body: bytes, root: str) -> dict[str, str]:
    """Flat child elements of ``root``. DTDs and entities are refused (XML bombs)."""
    if not body.strip():
        return {}
    if len(body) > MAX_XML_BYTES or b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise InvalidArgument("The XML body is too large or declares a DTD.", code="InvalidXML")
    try:
        element = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise InvalidArgument(f"The XML body is malformed: {exc}", code="InvalidXML") from None
    if element.tag.rsplit("}", 1)[-1] != root:
        raise InvalidArgument(f"The XML root must be <{root}>.", code="InvalidXML")
    return {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in element}


def _reply(
    request: Request, status: int, content: str = "", headers: dict[str, str] | None = None
) -> Response:
    return Response(
        content,
        status_code=status,
        media_type="text/xml;charset=utf-8" if content else None,
        headers={"x-mns-request-id": request.state.request_id, **(headers or {})},
    )


async def _call(request: Request, func: Callable[..., T], *args: Any) -> tuple[Services, str, T]:
    """Authenticate (MNS signature) and run ``func(services, owner, *args)`` in a thread."""
    services: Services = request.app.state.services
    owner = await _owner(services, request)
    result = await run_in_threadpool(func, services, owner, *args)
    return services, owner, result


async def _body(request: Request) -> bytes:
    """The request body, read only after the checks that need none (Authorization with a
    known key, fresh Date); its size is bounded by ``limits.BodyLimitMiddleware``."""
    services: Services = request.app.state.services
    if auth.anonymous_owner(services.keys, services.settings.dev_mode) is None:
        mns_auth.precheck(
            wire.view(request).headers,
            services.keys,
            now=utcnow(),
            max_skew=services.settings.signature_max_skew_seconds,
        )
    return await request.body()


async def _owner(services: Services, request: Request) -> str:
    anonymous = auth.anonymous_owner(services.keys, services.settings.dev_mode)
    if anonymous is not None:
        return anonymous
    head = wire.view(request)
    skew = services.settings.signature_max_skew_seconds
    owner = mns_auth.verify(
        head.method,
        head.headers,
        head.resource,
        await request.body(),  # read once: Starlette keeps it for the handler
        services.keys,
        now=utcnow(),
        max_skew=skew,
    )
    if head.method == "POST":  # send/publish are not idempotent: each signature counts once
        await rpc.first_use(services, mns_auth.replay_key(head.headers), 2 * skew + 1)
    return owner


def _queue(svc: Services, owner: str, name: str) -> queues.MnsQueue:
    with svc.db.session() as s:
        return queues.get_queue(s, owner, name)


def _url(request: Request, path: str) -> str:
    return f"{request.url.scheme}://{request.url.netloc}{path}"


# ---- queues -------------------------------------------------------------------------------


@router.put("/queues/{name}")
async def create_queue(name: str, request: Request) -> Response:
    if request.query_params.get("metaoverride") == "true":
        raise InvalidArgument("SetQueueAttributes is not supported.", code="NotSupported")
    attrs = parse_xml(await _body(request), "Queue")

    def run(svc: Services, owner: str) -> bool:
        with svc.db.session() as s:
            quota = svc.settings.mns_max_queues_per_owner
            return queues.create_queue(s, owner, name, attrs, quota=quota)

    _, _, created = await _call(request, run)
    return _reply(
        request, 201 if created else 204, headers={"Location": _url(request, f"/queues/{name}")}
    )


@router.delete("/queues/{name}")
async def delete_queue(name: str, request: Request) -> Response:
    def run(svc: Services, owner: str) -> None:
        with svc.db.session() as s:
            queue = s.scalar(
                queues.select(queues.MnsQueue).where(
                    queues.MnsQueue.owner == owner, queues.MnsQueue.name == name
                )
            )
            if queue is not None:
                svc.messages.drop(queue)
                s.delete(queue)

    await _call(request, run)
    return _reply(request, 204)


@router.get("/queues")
async def list_queues(request: Request) -> Response:
    prefix = request.headers.get("x-mns-prefix", "")

    def run(svc: Services, owner: str) -> list[str]:
        with svc.db.session() as s:
            return [q.name for q in queues.list_queues(s, owner, prefix)]

    _, _, names = await _call(request, run)
    items = "".join(
        f"<Queue><QueueURL>{escape(_url(request, '/queues/' + n))}</QueueURL></Queue>"
        for n in names
    )
    return _reply(request, 200, xml("Queues", children=items))


@router.get("/queues/{name}")
async def get_queue_attributes(name: str, request: Request) -> Response:
    def run(svc: Services, owner: str) -> dict[str, Any]:
        with svc.db.session() as s:
            queue = queues.get_queue(s, owner, name)
            active, inactive = svc.messages.counts(queue)
            return {
                **queues.attributes(s, queue),
                "ActiveMessages": active,
                "InactiveMessages": inactive,
                "CreateTime": int(queue.create_time.timestamp()),
                "LastModifyTime": int(queue.create_time.timestamp()),
                "LoggingEnabled": "False",
            }

    _, _, attrs = await _call(request, run)
    return _reply(request, 200, xml("Queue", attrs))


@router.post("/queues/{name}/messages")
async def send_message(name: str, request: Request) -> Response:
    fields = parse_xml(await _body(request), "Message")
    if "MessageBody" not in fields:
        raise InvalidArgument("MessageBody is mandatory.", code="MissingMessageBody")

    raw_delay = fields.get("DelaySeconds")
    delay = queues.bounded("DelaySeconds", raw_delay, 0, MAX_DELAY_SECONDS) if raw_delay else None
    priority = queues.bounded("Priority", fields.get("Priority") or "8", 1, MAX_PRIORITY)

    def run(svc: Services, owner: str) -> tuple[str, str]:
        queue = _queue(svc, owner, name)
        return svc.messages.put(queue, fields["MessageBody"], delay=delay, priority=priority)

    _, _, (message_id, md5) = await _call(request, run)
    return _reply(request, 201, xml("Message", {"MessageId": message_id, "MessageBodyMD5": md5}))


@router.get("/queues/{name}/messages")
async def receive_message(name: str, request: Request) -> Response:
    raw_wait = request.query_params.get("waitseconds", "")
    wait = queues.bounded("waitseconds", raw_wait, 0, MAX_WAIT_SECONDS) if raw_wait else None

    def run(svc: Services, owner: str) -> tuple[Any, Any, queues.Received | None]:
        limit = svc.settings.mns_dead_letter_after
        with svc.db.session() as s:
            queue = queues.get_queue(s, owner, name)
            dead = queues.dead_letter_queue(s, queue) if limit else None
        return queue, dead, svc.messages.receive(queue, dead, limit)

    services, owner, (queue, dead, message) = await _call(request, run)
    wait = queue.polling_wait_seconds if wait is None else wait
    if message is None and wait > 0:
        message = await _long_poll(services, owner, queue, dead, wait)
    if message is None:
        raise MessageNotExist("Message not exist.")
    return _reply(
        request,
        200,
        xml(
            "Message",
            {
                "MessageId": message.message_id,
                "ReceiptHandle": message.receipt_handle,
                "MessageBodyMD5": message.body_md5,
                "MessageBody": message.body,
                "EnqueueTime": epoch_ms(message.enqueue_time),
                "FirstDequeueTime": epoch_ms(message.first_dequeue_time),
                "NextVisibleTime": epoch_ms(message.next_visible_time),
                "DequeueCount": message.dequeue_count,
                "Priority": message.priority,
            },
        ),
    )


async def _long_poll(
    services: Services, owner: str, queue: Any, dead: Any, wait: float
) -> queues.Received | None:
    """Wait up to ``wait`` s for a message. The receiver sleeps until a put wakes it (push),
    until the earliest in-flight or delayed message turns visible, or at most the fallback
    interval; each wake-up costs one store read."""
    settings, store = services.settings, services.messages
    deadline = time.monotonic() + wait

    def check() -> tuple[queues.Received | None, float | None]:
        message = store.receive(queue, dead, settings.mns_dead_letter_after)
        return message, None if message is not None else store.next_visible_in(queue)

    slot = services.long_polls.slot(owner, settings.mns_max_long_polls_per_owner)
    with slot, store.waiting(queue) as waiter:
        while True:
            message, due = await run_in_threadpool(check)
            remaining = deadline - time.monotonic()
            if message is not None or remaining <= 0:
                return message
            sleep = min(remaining, settings.mns_poll_interval_seconds)
            if due is not None:
                sleep = min(sleep, max(due, 0.0) + VISIBILITY_SLACK_SECONDS)
            await waiter.wait(sleep)


@router.delete("/queues/{name}/messages")
async def delete_message(name: str, request: Request) -> Response:
    handle = request.query_params.get("ReceiptHandle", "")

    def run(svc: Services, owner: str) -> None:
        svc.messages.delete(_queue(svc, owner, name), handle)

    await _call(request, run)
    return _reply(request, 204)


@router.put("/queues/{name}/messages")
async def change_visibility(name: str, request: Request) -> Response:
    handle = request.query_params.get("ReceiptHandle", "")
    raw = request.query_params.get("VisibilityTimeout", "")
    if not raw:
        raise InvalidArgument("VisibilityTimeout is required.", code="MissingVisibilityTimeout")
    seconds = queues.bounded("VisibilityTimeout", raw, 1, MAX_VISIBILITY_SECONDS)

    def run(svc: Services, owner: str) -> tuple[str, Any]:
        return svc.messages.change_visibility(_queue(svc, owner, name), handle, seconds)

    _, _, (new_handle, visible) = await _call(request, run)
    return _reply(
        request,
        200,
        xml(
            "ChangeVisibility", {"ReceiptHandle": new_handle, "NextVisibleTime": epoch_ms(visible)}
        ),
    )


# ---- topics -------------------------------------------------------------------------------


@router.put("/topics/{name}")
async def create_topic(name: str, request: Request) -> Response:
    parse_xml(await _body(request), "Topic")

    def run(svc: Services, owner: str) -> None:
        with svc.db.session() as s:
            topics.create_topic(s, owner, name, quota=svc.settings.mns_max_topics_per_owner)

    await _call(request, run)
    return _reply(request, 201, headers={"Location": _url(request, f"/topics/{name}")})


@router.delete("/topics/{name}")
async def delete_topic(name: str, request: Request) -> Response:
    def run(svc: Services, owner: str) -> None:
        with svc.db.session() as s:
            topics.delete_topic(s, owner, name)

    await _call(request, run)
    return _reply(request, 204)


@router.get("/topics")
async def list_topics(request: Request) -> Response:
    def run(svc: Services, owner: str) -> list[str]:
        with svc.db.session() as s:
            return [t.name for t in topics.list_topics(s, owner)]

    _, _, names = await _call(request, run)
    items = "".join(
        f"<Topic><TopicURL>{escape(_url(request, '/topics/' + n))}</TopicURL></Topic>"
        for n in names
    )
    return _reply(request, 200, xml("Topics", children=items))


@router.post("/topics/{name}/messages")
async def publish_message(name: str, request: Request) -> Response:
    fields = parse_xml(await _body(request), "Message")
    body = fields.get("MessageBody", "")

    def run(svc: Services, owner: str) -> str:
        with svc.db.session() as s:
            topics.get_topic(s, owner, name)
            event = Event(
                id=queues.secrets.token_hex(16).upper(),
                owner=owner,
                project_name="",
                type=RAW_MESSAGE_TYPE,
                task_id=None,
                topic=name,
                content={"Message": body},
                created_at=utcnow(),
            )
            s.add(event)
            return event.id

    _, _, event_id = await _call(request, run)
    return _reply(
        request, 201, xml("Message", {"MessageId": event_id, "MessageBodyMD5": md5_upper(body)})
    )


@router.put("/topics/{name}/subscriptions/{sub}")
async def subscribe(name: str, sub: str, request: Request) -> Response:
    fields = parse_xml(await _body(request), "Subscription")

    def run(svc: Services, owner: str) -> None:
        with svc.db.session() as s:
            topic = topics.get_topic(s, owner, name)
            topics.subscribe(
                s,
                topic,
                sub,
                endpoint=fields.get("Endpoint", ""),
                content_format=fields.get("NotifyContentFormat") or "JSON",
                retry=fields.get("NotifyStrategy") or None,
                allow_private=svc.settings.http_allow_private,
                owner=owner,
                quota=svc.settings.mns_max_subscriptions_per_topic,
                account_id=svc.accounts.of(owner),
            )

    await _call(request, run)
    return _reply(
        request, 201, headers={"Location": _url(request, f"/topics/{name}/subscriptions/{sub}")}
    )


@router.delete("/topics/{name}/subscriptions/{sub}")
async def unsubscribe(name: str, sub: str, request: Request) -> Response:
    def run(svc: Services, owner: str) -> None:
        with svc.db.session() as s:
            topics.unsubscribe(s, topics.get_topic(s, owner, name), sub)

    await _call(request, run)
    return _reply(request, 204)


@router.get("/topics/{name}/subscriptions")
async def list_subscriptions(name: str, request: Request) -> Response:
    def run(svc: Services, owner: str) -> list[Subscription]:
        with svc.db.session() as s:
            return list(topics.list_subscriptions(s, topics.get_topic(s, owner, name)))

    _, _, subs = await _call(request, run)
    items = "".join(
        f"<Subscription><SubscriptionURL>"
        f"{escape(_url(request, f'/topics/{name}/subscriptions/{x.name}'))}"
        f"</SubscriptionURL></Subscription>"
        for x in subs
    )
    return _reply(request, 200, xml("Subscriptions", children=items))
