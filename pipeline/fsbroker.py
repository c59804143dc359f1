"""The embedded broker: kombu's filesystem transport with atomic message files.

kombu's ``filesystem://`` ``_put`` creates ``<ts>_<uuid>.<queue>.msg`` in the queue folder and
then writes it, while ``_get`` moves the first matching file away without taking its lock: a
worker polling at the wrong moment takes an empty file, fails to decode it and the message is
lost (seen in this project's benchmarks). Here a message is written under a name ``_get`` never
matches, flushed to disk, and renamed into place (atomic on POSIX), and ``_get`` moves it with
a rename inside the broker folder (the stock transport moves it to the system temp dir, which
is a copy when that is another file system). Queue bindings (the exchange tables in the
control folder) are changed under a lock on a side file and replaced atomically: kombu creates
a table file before it locks it, so a concurrent binder could read it empty (the first tasks
of a fresh data dir, submitted at once, failed with 503). Registered as the ``openimm-fs``
transport.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

ALIAS = "openimm-fs"
TMP_PREFIX = ".put-"  # no "." before the queue name: _get's "<queue>.msg" match skips it
LOCK_SUFFIX = ".lock"


class Channel(filesystem.Channel):
    # kombu's virtual base names the argument ``message``, its filesystem channel ``payload``.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the message under a temporary name, then rename it into the queue."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = Path(self.data_folder_out)
        tmp = folder / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with tmp.open("wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
                handle.flush()
                os.fsync(handle.fileno())  # a message survives a crash once it is visible
            os.replace(tmp, folder / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ChannelError(f"Cannot add a message to {folder}") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        """Take the oldest message of ``queue``: rename it out of the queue folder (one reader
        wins), read it, delete it."""
        wanted = f"{queue}.msg"
        inbox = Path(self.data_folder_in)
        taken = Path(self.processed_folder)
        for name in sorted(os.listdir(inbox)):
            if name.partition(".")[2] != wanted:
                continue
            target = taken / f"{uuid.uuid4().hex}-{name}"
            try:
                os.rename(inbox / name, target)
            except OSError:
                continue  # another worker took it first
            try:
                payload = target.read_bytes()
            finally:
                if not self.store_processed:
                    target.unlink(missing_ok=True)
            return loads(bytes_to_str(payload))
        raise Empty()

    def _queue_bind(self, exchange: Any, routing_key: Any, pattern: Any, queue: Any) -> None:
        """Add a binding to the exchange table: read, add, replace, all under an exclusive
        lock on ``<exchange>.exchange.lock`` (readers see the old or the new table whole)."""
        table_file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            with table_file.with_name(table_file.name + LOCK_SUFFIX).open("a") as guard:
                filesystem.lock(guard, filesystem.LOCK_EX)
                try:
                    table = self.get_table(exchange)
                    if binding not in table:
                        _replace(table_file, dumps([binding, *table]))
                finally:
                    filesystem.unlock(guard)
        except OSError as exc:
            raise ChannelError(f"Cannot bind {queue!r} in {table_file}") from exc


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        tmp.write_bytes(str_to_bytes(text))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Transport(filesystem.Transport):
    Channel = Channel
    driver_type = "filesystem"
    driver_name = "filesystem"


def register() -> None:
    """Make ``openimm-fs://`` resolve to this transport (idempotent)."""
    TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
