"""MNS queue messages in Redis (distributed mode). Durable across openimm restarts, and with
Redis AOF (``appendonly yes``, as docker-compose runs it) across Redis restarts.

Keys per queue id ``q`` (all here, nowhere else):
``openimm:mns:{q}:vis``  ZSET message id → next visible time (ms); FIFO among visible ones
                         (puts within one millisecond are told apart by a fraction of it,
                         ``n/1024`` for the n-th: a ZSET orders equal scores by member, here
                         a random message id);
``openimm:mns:{q}:last`` STRING ``<enqueue ms>:<n>`` of the latest put (the tie-breaker);
``openimm:mns:{q}:m:{id}`` HASH body, md5, enq, first, deq, handle, prio;
``openimm:mns:{q}:h``    HASH receipt handle → message id;
``openimm_mns``          pub/sub channel: a put publishes ``<q>:<process token>`` to wake
                         long-polling receivers in other API processes.
Every state change is one Lua script, so concurrent receivers never get the same message.
Unlike the database store, visible messages are taken in visibility order, not by
``Priority`` first (it is kept and returned).
"""

from __future__ import annotations

import secrets
import threading
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import redis

from pipeline.errors import InvalidParameter, MessageNotExist, ReceiptHandleError
from pipeline.models import MnsQueue
from pipeline.notify import wake
from pipeline.notify.messages import md5_upper
from pipeline.notify.queues import Received

PUT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'body', ARGV[1], 'md5', ARGV[2], 'enq', ARGV[3], 'first', '0',
           'deq', '0', 'handle', '', 'prio', ARGV[5])
local enq, n = tonumber(ARGV[3]), 0
local last = redis.call('GET', KEYS[4])
if last then
  local sep = string.find(last, ':', 1, true)
  local last_enq = tonumber(string.sub(last, 1, sep - 1))
  if enq <= last_enq then  -- same millisecond (or a caller whose clock is behind)
    enq, n = last_enq, tonumber(string.sub(last, sep + 1)) + 1
  end
end
redis.call('SET', KEYS[4], enq .. ':' .. n, 'PX', 60000)
redis.call('ZADD', KEYS[1], tonumber(ARGV[4]) + math.min(n, 1023) / 1024, ARGV[6])
redis.call('PUBLISH', KEYS[3], ARGV[7])
return 1
"""
RECEIVE = """
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
if #ids == 0 then return false end
local id = ids[1]
local key = KEYS[2] .. id
local limit = tonumber(ARGV[4])
if limit > 0 and tonumber(redis.call('HGET', key, 'deq')) >= limit then
  return {'DEAD', id}
end
local old = redis.call('HGET', key, 'handle')
if old and old ~= '' then redis.call('HDEL', KEYS[3], old) end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
redis.call('HINCRBY', key, 'deq', 1)
if redis.call('HGET', key, 'first') == '0' then redis.call('HSET', key, 'first', now) end
redis.call('HSET', key, 'handle', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], id)
return {'OK', id}
"""
BY_HANDLE = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return -2 end
if tonumber(redis.call('ZSCORE', KEYS[2], id)) <= tonumber(ARGV[2]) then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], id)
  redis.call('DEL', KEYS[3] .. id)
  return 1
end
redis.call('ZADD', KEYS[2], ARGV[4], id)
redis.call('HSET', KEYS[3] .. id, 'handle', ARGV[3])
redis.call('HSET', KEYS[1], ARGV[3], id)
return 1
"""
REMOVE = """
local h = redis.call('HGET', KEYS[2], 'handle')
if h and h ~= '' then redis.call('HDEL', KEYS[3], h) end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
"""


def _keys(queue_id: int) -> tuple[str, str, str]:
    base = f"openimm:mns:{queue_id}"
    return f"{base}:vis", f"{base}:m:", f"{base}:h"


def _last_key(queue_id: int) -> str:
    return f"openimm:mns:{queue_id}:last"


def _ms() -> int:
    return int(time.time() * 1000)


def _time(ms: str | bytes | float) -> datetime:
    return datetime.fromtimestamp(int(float(ms)) / 1000, tz=UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisMessageStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._put = client.register_script(PUT)
        self._receive = client.register_script(RECEIVE)
        self._by_handle = client.register_script(BY_HANDLE)
        self._remove = client.register_script(REMOVE)
        conn = client.connection_pool.connection_kwargs
        self.namespace = f"redis://{conn.get('host')}:{conn.get('port')}/{conn.get('db', 0)}"
        self.listener: wake.Listener | None = None  # started by the first long poll
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> RedisMessageStore:
        return cls(redis.Redis.from_url(url))

    def put(
        self,
        queue: MnsQueue,
        body: str,
        *,
        message_id: str | None = None,
        delay: int | None = None,
        priority: int = 8,
    ) -> tuple[str, str]:
        if len(body.encode()) > queue.maximum_message_size:
            raise InvalidParameter(
                "MessageBody", f"Longer than {queue.maximum_message_size} bytes."
            )
        mid = message_id or secrets.token_hex(16).upper()
        now = _ms()
        visible = now + 1000 * (queue.delay_seconds if delay is None else delay)
        vis, msg, _ = _keys(queue.id)
        md5 = md5_upper(body)
        self._put(
            keys=[vis, msg + mid, wake.CHANNEL, _last_key(queue.id)],
            args=[body, md5, now, visible, priority, mid, wake.payload(queue.id)],
        )
        wake.HUB.notify(f"{self.namespace}:{queue.id}")
        return mid, md5

    def receive(
        self, queue: MnsQueue, dead_letter: MnsQueue | None, dead_letter_after: int
    ) -> Received | None:
        vis, msg, handles = _keys(queue.id)
        for _ in range(100):  # dead-lettered messages are skipped, a bounded number per call
            handle = secrets.token_hex(16).upper()
            result = self._receive(
                keys=[vis, msg, handles],
                args=[
                    _ms(),
                    queue.visibility_timeout * 1000,
                    handle,
                    dead_letter_after if dead_letter is not None else 0,
                ],
            )
            if not result:
                return None
            state, mid = (_text(x) for x in result)
            data = {_text(k): _text(v) for k, v in self.client.hgetall(msg + mid).items()}
            if state == "DEAD" and dead_letter is not None:
                self.put(dead_letter, data["body"], message_id=mid, delay=0)
                self._remove(keys=[vis, msg + mid, handles], args=[mid])
                continue
            return Received(
                mid,
                data["body"],
                data["md5"],
                handle,
                _time(data["enq"]),
                _time(data["first"]),
                _time(self.client.zscore(vis, mid) or 0),
                int(data["deq"]),
                int(data["prio"]),
            )
        return None

    def _handle_op(self, queue: MnsQueue, handle: str, new_handle: str, visible: int) -> None:
        vis, msg, handles = _keys(queue.id)
        code = self._by_handle(keys=[handles, vis, msg], args=[handle, _ms(), new_handle, visible])
        if code == -2:
            raise ReceiptHandleError(f"The receipt handle {handle} is not valid.")
        if code == -1:
            raise MessageNotExist("The receipt handle has expired: the message is visible again.")

    def delete(self, queue: MnsQueue, handle: str) -> None:
        self._handle_op(queue, handle, "", 0)

    def change_visibility(self, queue: MnsQueue, handle: str, seconds: int) -> tuple[str, datetime]:
        new_handle = secrets.token_hex(16).upper()
        visible = _ms() + seconds * 1000
        self._handle_op(queue, handle, new_handle, visible)
        return new_handle, _time(visible)

    def counts(self, queue: MnsQueue) -> tuple[int, int]:
        vis, _, _ = _keys(queue.id)
        total = int(self.client.zcard(vis))
        active = int(self.client.zcount(vis, "-inf", _ms()))
        return active, total - active

    def drop(self, queue: MnsQueue) -> None:
        vis, msg, handles = _keys(queue.id)
        ids: list[Any] = self.client.zrange(vis, 0, -1)
        pipe = self.client.pipeline()
        for mid in ids:
            pipe.delete(msg + _text(mid))
        pipe.delete(vis, handles, _last_key(queue.id))
        pipe.execute()

    def next_visible_in(self, queue: MnsQueue) -> float | None:
        vis, _, _ = _keys(queue.id)
        first: list[Any] = self.client.zrange(vis, 0, 0, withscores=True)
        return (float(first[0][1]) - _ms()) / 1000 if first else None

    def waiting(self, queue: MnsQueue) -> AbstractContextManager[wake.Waiter]:
        with self._lock:
            if self.listener is None:
                self.listener = wake.Listener("mns-redis-listen", self._listen)
        return wake.HUB.waiting(f"{self.namespace}:{queue.id}")

    def _listen(self, listener: wake.Listener) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(wake.CHANNEL)
            pubsub.get_message(timeout=1.0)  # the subscribe confirmation: now subscribed
            listener.ready.set()
            while not listener.stop.is_set():
                note = pubsub.get_message(timeout=1.0)
                if note is not None:
                    wake.dispatch(self.namespace, _text(note["data"]))
        finally:
            pubsub.close()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
