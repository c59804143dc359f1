"""A minimal MNS queue client over openimm's MNS-compatible API (for the demo and scripts).

It signs exactly as the aliyun-mns-sdk does (``pipeline.mns_auth``, Content-MD5 as base64 of
the hex MD5), so what it does the SDK does too; it exists so that ``openimm demo`` needs no
SDK installed. Only what a consumer of IMM notifications needs: create, receive, delete."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate
from xml.etree import ElementTree

import httpx

from pipeline import mns_auth
from pipeline.notify.messages import MNS_XMLNS

MNS_VERSION = "2015-06-06"
NOT_FOUND = 404  # an empty queue after the wait answers MessageNotExist


class MnsError(Exception):
    """An MNS error reply (its XML ``Code`` and ``Message``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code = status, code
        super().__init__(f"{status} {code}: {message}")


@dataclass(frozen=True)
class QueueMessage:
    body: str
    receipt_handle: str
    message_id: str


class MnsQueues:
    """Queues of one owner at ``endpoint`` (``http://host:port``)."""

    def __init__(
        self,
        endpoint: str,
        key: tuple[str, str],
        *,
        timeout: float = 40.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.key = key
        self.http = http or httpx.Client(base_url=endpoint, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def create(self, queue: str) -> None:
        """Create ``queue`` (no error if it exists with the same attributes)."""
        self._request("PUT", f"/queues/{queue}", _element("Queue", {}))

    def receive(self, queue: str, wait_seconds: int = 10) -> QueueMessage | None:
        """One message, long-polling up to ``wait_seconds``; None when the queue stays empty."""
        reply = self._request(
            "GET", f"/queues/{queue}/messages?waitseconds={wait_seconds}", allow=(NOT_FOUND,)
        )
        if reply.status_code == NOT_FOUND:
            return None
        root = ElementTree.fromstring(reply.content)
        return QueueMessage(
            body=_text(root, "MessageBody"),
            receipt_handle=_text(root, "ReceiptHandle"),
            message_id=_text(root, "MessageId"),
        )

    def delete(self, queue: str, receipt_handle: str) -> None:
        self._request("DELETE", f"/queues/{queue}/messages?ReceiptHandle={receipt_handle}")

    def _request(
        self, method: str, resource: str, body: bytes = b"", allow: tuple[int, ...] = ()
    ) -> httpx.Response:
        headers = {"date": formatdate(usegmt=True), "x-mns-version": MNS_VERSION}
        if body:
            headers["content-md5"] = mns_auth.content_md5_forms(body)[0]  # the SDK's form
            headers["content-type"] = "text/xml;charset=UTF-8"
        signature = mns_auth.sign(self.key[1], method, headers, resource)
        headers["authorization"] = f"MNS {self.key[0]}:{signature}"
        reply = self.http.request(method, resource, content=body, headers=headers)
        if reply.status_code >= 400 and reply.status_code not in allow:
            root = ElementTree.fromstring(reply.content)
            raise MnsError(reply.status_code, _text(root, "Code"), _text(root, "Message"))
        return reply


def _element(root: str, fields: dict[str, str]) -> bytes:
    children = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
    head = '<?xml version="1.0" encoding="UTF-8"?>'
    return f'{head}<{root} xmlns="{MNS_XMLNS}">{children}</{root}>'.encode()


def _text(root: ElementTree.Element, tag: str) -> str:
    node = root.find(f"{{{MNS_XMLNS}}}{tag}")
    return node.text or "" if node is not None else ""
