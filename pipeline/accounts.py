"""Account ids: the numeric account UID that IMM and MNS show for an owner.

Internally an owner is its AccessKeyId (what requests are signed with, what rows are scoped
by). IMM users, though, read the owner's *account* UID in ``TopicOwner``, ``Subscriber``, the
message ``subject`` and ``OwnerId``, and write it in queue endpoints
(``acs:mns:<region>:<AccountId>:queues/<q>``). An ``OPENIMM_ACCESS_KEYS`` entry (or a line of
the keys file) may name it as a third field, ``AccessKeyId:AccessKeySecret:AccountId``;
without one a stable 16-digit id is derived from the AccessKeyId, so it never changes between
restarts or processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pipeline import credentials
from pipeline.settings import Settings

ACCOUNT_ID_DIGITS = 16


def derive(key_id: str) -> str:
    """A stable 16-digit account id for an AccessKeyId that names none (no leading zero)."""
    number = int.from_bytes(hashlib.sha256(f"openimm-account:{key_id}".encode()).digest()[:8])
    low = 10 ** (ACCOUNT_ID_DIGITS - 1)
    return str(low + number % (9 * low))


@dataclass(frozen=True)
class AccountIds:
    """AccessKeyId → account id, configured or derived."""

    configured: dict[str, str] = field(default_factory=dict)

    def of(self, key_id: str) -> str:
        """The account id IMM/MNS fields show for the owner ``key_id``."""
        return self.configured.get(key_id) or derive(key_id)

    def names(self, key_id: str, account: str) -> bool:
        """True when ``account`` (from an endpoint) designates the owner ``key_id``: its
        account id, or the AccessKeyId itself (the form openimm accepted before)."""
        return account in (key_id, self.of(key_id))


def load(settings: Settings) -> AccountIds:
    """The account ids of ``OPENIMM_ACCESS_KEYS``, else of the keys file in the data dir (never
    created here; a missing file just means every id is derived)."""
    configured = settings.account_ids()
    if not configured and not settings.access_keys:
        path = credentials.keys_path(settings)
        if path.exists():
            configured = Settings(access_keys=path.read_text().strip()).account_ids()
    return AccountIds(configured)
