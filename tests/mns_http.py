"""A minimal signed MNS client for in-process tests: requests signed exactly as the
aliyun-mns-sdk signs them (``pipeline.mns_auth``), with Content-MD5 as the SDK sends it."""

from __future__ import annotations

import base64
import hashlib
from email.utils import formatdate
from typing import Any
from xml.etree import ElementTree

import httpx
from fastapi.testclient import TestClient

from pipeline import mns_auth
from pipeline.notify.messages import MNS_XMLNS


class MnsHttp:
    def __init__(self, http: TestClient | httpx.Client, key: tuple[str, str]) -> None:
        self.http, self.key = http, key

    def headers(
        self,
        method: str,
        resource: str,
        body: bytes = b"",
        *,
        date: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> dict[str, str]:
        headers = {"date": date or formatdate(usegmt=True), "x-mns-version": "2015-06-06"}
        if body:
            md5 = hashlib.md5(body).hexdigest().encode()
            headers["content-md5"] = base64.b64encode(md5).decode()
            headers["content-type"] = "text/xml;charset=UTF-8"
        headers.update(extra or {})
        signature = mns_auth.sign(self.key[1], method, headers, resource)
        headers["authorization"] = f"MNS {self.key[0]}:{signature}"
        return headers

    def request(
        self,
        method: str,
        resource: str,
        body: bytes = b"",
        *,
        date: str | None = None,
    ) -> httpx.Response:
        headers = self.headers(method, resource, body, date=date)
        return self.http.request(method, resource, content=body, headers=headers)

    def create_queue(self, name: str, **attrs: Any) -> httpx.Response:
        return self.request("PUT", f"/queues/{name}", element("Queue", attrs))

    def send(self, queue: str, body: str, **fields: Any) -> httpx.Response:
        payload = element("Message", {"MessageBody": body, **fields})
        return self.request("POST", f"/queues/{queue}/messages", payload)

    def receive(self, queue: str, wait: int | str | None = None) -> httpx.Response:
        query = "" if wait is None else f"?waitseconds={wait}"
        return self.request("GET", f"/queues/{queue}/messages{query}")


def element(root: str, fields: dict[str, Any]) -> bytes:
    children = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
    head = '<?xml version="1.0" encoding="UTF-8"?>'
    return f'{head}<{root} xmlns="{MNS_XMLNS}">{children}</{root}>'.encode()


def error_code(response: httpx.Response) -> str:
    """The Code of an MNS error XML body (fails the test if the body is not one)."""
    root = ElementTree.fromstring(response.content)
    assert root.tag == f"{{{MNS_XMLNS}}}Error", response.text
    code = root.find(f"{{{MNS_XMLNS}}}Code")
    assert code is not None and code.text, response.text
    return code.text
