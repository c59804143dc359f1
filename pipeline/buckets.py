"""Bucket ownership: which owner may read or write which object-store bucket.

Buckets belong to owners as OSS buckets belong to accounts. The ``buckets`` table is the
authority, for the local and the S3 backend alike:

- a bucket is claimed by the owner whose write first creates it through openimm (an upload,
  ``openimm cp``, a task output) or by ``openimm buckets create NAME --owner AK``; the table's
  primary key makes the claim atomic, so of two concurrent first writers exactly one wins;
- a bucket present in the store with no row (a folder dropped into the embedded store with
  ``cp``, a bucket made with another S3 tool) belongs to the first configured key; the row is
  written lazily, on first access;
- other owners get ``AccessDenied`` unless an operator shares the bucket
  (``openimm buckets share``): read-only or read-write.

Model Hub (EAS) outputs go to one bucket per owner, derived from ``OPENIMM_EAS_OUTPUT_BUCKET``
(:func:`eas_bucket`); names of that form are reserved: only their owner can claim them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, delete, select
from sqlalchemy.exc import IntegrityError

from pipeline import credentials
from pipeline.auth import DEV_OWNER
from pipeline.db import Database
from pipeline.errors import BucketAccessDenied, InvalidArgument, ResourceNotFound
from pipeline.ids import utcnow
from pipeline.models import Bucket, BucketGrant
from pipeline.settings import Settings
from pipeline.storage.base import ObjectStore
from pipeline.storage.scoped import READ, WRITE
from pipeline.storage.uri import BUCKET_RE

ACCESS_LEVELS = (READ, WRITE)
EAS_DIGEST_CHARS = 16  # 64 bits of SHA-256: no two owners' output buckets collide in practice
EAS_BASE_MAX = 63 - 1 - EAS_DIGEST_CHARS


def eas_bucket(base: str, owner: str) -> str:
    """The owner's Model Hub output bucket: ``<base>-<16 hex of sha256(owner)>``, a valid
    bucket name (lower case, at most 63 characters) that no other owner can claim."""
    digest = hashlib.sha256(owner.encode()).hexdigest()[:EAS_DIGEST_CHARS]
    return f"{base[:EAS_BASE_MAX].rstrip('-')}-{digest}"


def _reserved_against(settings: Settings, bucket: str, owner: str) -> bool:
    """Whether ``bucket`` has the form of another owner's EAS output bucket."""
    stem = settings.eas_output_bucket[:EAS_BASE_MAX].rstrip("-") + "-"
    tail = bucket.removeprefix(stem)
    looks_derived = bucket.startswith(stem) and len(tail) == EAS_DIGEST_CHARS
    if not looks_derived or any(c not in "0123456789abcdef" for c in tail):
        return False
    return bucket != eas_bucket(settings.eas_output_bucket, owner)


def first_owner(settings: Settings) -> str | None:
    """Who owns buckets found in the store without a row: the first key of
    ``OPENIMM_ACCESS_KEYS`` (or of the generated key file), the dev owner in keyless dev
    mode, else nobody (such buckets are then refused until an operator assigns them)."""
    keys = credentials.load_keys(settings, create=False)
    if keys:
        return next(iter(keys))
    return DEV_OWNER if settings.dev_mode else None


def _denied(bucket: str, owner: str, detail: str) -> BucketAccessDenied:
    return BucketAccessDenied(f"Access denied to oss://{bucket}/ for {owner}: {detail}")


def _insert(db: Database, bucket: str, owner: str) -> str:
    """Claim ``bucket`` for ``owner`` unless it has an owner already; returns the owner that
    holds it afterwards (the winner of a concurrent claim)."""
    try:
        with db.session() as s:
            s.add(Bucket(name=bucket, owner=owner, create_time=utcnow()))
    except IntegrityError:
        pass  # someone else's claim committed first
    with db.session() as s:
        winner = s.scalar(select(Bucket.owner).where(Bucket.name == bucket))
    assert winner is not None  # rows are never deleted while the process runs
    return winner


@dataclass
class BucketPolicy:
    """Answers "may owner X read/write bucket B", claiming buckets as the contract says.

    One per process (API or worker); the owner-scoped store
    (:class:`pipeline.storage.scoped.ScopedStore`) asks it before every operation.
    """

    db: Database
    store: ObjectStore
    settings: Settings
    _first: list[str | None] = field(default_factory=list, repr=False)
    # bucket → owner, for buckets this process has seen owned. A bucket's owner never changes
    # while a process runs (rows are only ever inserted), so an owner using their own bucket
    # costs no database round trip per request; grants are not cached, so an unshare by the
    # operator takes effect at once.
    _holders: dict[str, str] = field(default_factory=dict, repr=False)

    def require(self, owner: str, bucket: str, access: str, *, claim: bool = True) -> bool:
        """Raise ``BucketAccessDenied`` unless ``owner`` may ``access`` (read|write) the
        bucket. A write to a bucket nobody owns claims it for ``owner`` (with ``claim=False``,
        as at task creation, it only checks that the bucket could be claimed). Returns False
        when the bucket has no owner and does not exist: nothing to read, nothing claimed.
        """
        holder, grant = self._lookup(bucket, owner)
        if holder is None:
            holder = self._settle(owner, bucket, access, claim=claim)
            if holder is None:
                return False
            grant = self._lookup(bucket, owner)[1]
        if holder == owner or grant == WRITE or (grant == READ and access == READ):
            return True
        if grant == READ:
            raise _denied(bucket, owner, "the bucket is shared with you read-only.")
        raise _denied(bucket, owner, "the bucket belongs to another owner.")

    def _lookup(self, bucket: str, owner: str) -> tuple[str | None, str | None]:
        if self._holders.get(bucket) == owner:
            return owner, None
        query = (
            select(Bucket.owner, BucketGrant.access)
            .outerjoin(
                BucketGrant, and_(BucketGrant.bucket == Bucket.name, BucketGrant.grantee == owner)
            )
            .where(Bucket.name == bucket)
        )
        with self.db.session() as s:
            row = s.execute(query).one_or_none()
        if row is None:
            return None, None
        self._holders[bucket] = row[0]
        return row[0], row[1]

    def _settle(self, owner: str, bucket: str, access: str, *, claim: bool = True) -> str | None:
        """Give an unowned bucket its owner: the first key if the store already has it (it
        was dropped in), else the writer. None when there is nothing to settle (a read, or a
        write with ``claim=False``)."""
        if self.store.has_bucket(bucket):
            claimant = self.first_owner()
            if claimant is None:
                raise _denied(
                    bucket,
                    owner,
                    "the bucket has no owner; assign it with `openimm buckets create`.",
                )
            return _insert(self.db, bucket, claimant)
        # Reads too, and in the words used once the bucket exists: another owner's EAS bucket
        # answers the same before that owner's first call as after it, so nobody learns from
        # the answer whether that owner has used EAS yet.
        if _reserved_against(self.settings, bucket, owner):
            raise _denied(bucket, owner, "the bucket belongs to another owner.")
        if access != WRITE:
            return None
        return _insert(self.db, bucket, owner) if claim else None

    def first_owner(self) -> str | None:
        """:func:`first_owner`, read once (the key file may appear after this process starts,
        so it is read on first need, not at start-up)."""
        if not self._first or self._first[0] is None:
            self._first[:] = [first_owner(self.settings)]
        return self._first[0]


# ---- operator commands (``openimm buckets …``) -----------------------------------------------


@dataclass(frozen=True)
class BucketView:
    """One line of ``openimm buckets list``."""

    name: str
    owner: str
    create_time: datetime | None
    grants: dict[str, str]  # grantee → read|write
    claimed: bool  # False: in the store without a row, owned by the first key on access


def _check_name(name: str) -> None:
    if not BUCKET_RE.match(name):
        raise InvalidArgument(
            f"{name!r} is not a valid bucket name: 3-63 lowercase letters, digits or '-'."
        )


def create(db: Database, name: str, owner: str) -> bool:
    """Assign the bucket ``name`` to ``owner`` (its folder need not exist). True if created;
    False if ``owner`` had it already; ``BucketAccessDenied`` if another owner has it."""
    _check_name(name)
    with db.session() as s:
        existed = s.get(Bucket, name) is not None
    holder = _insert(db, name, owner)
    if holder != owner:
        raise BucketAccessDenied(f"The bucket {name} already belongs to {holder}.")
    return not existed


def _owned_row(policy: BucketPolicy, name: str) -> str:
    """The bucket's owner, settling a dropped-in folder for the first key."""
    _check_name(name)
    holder, _ = policy._lookup(name, "")
    if holder is None and policy.store.has_bucket(name):
        holder = policy._settle("", name, READ)
    if holder is None:
        raise ResourceNotFound("bucket", name)
    return holder


def share(policy: BucketPolicy, name: str, grantee: str, access: str) -> None:
    """Let ``grantee`` read (``read``) or read and write (``write``) the bucket; replaces an
    earlier grant to the same owner."""
    if access not in ACCESS_LEVELS:
        raise InvalidArgument(f"Access must be one of {', '.join(ACCESS_LEVELS)}.")
    if _owned_row(policy, name) == grantee:
        raise InvalidArgument(f"{grantee} owns {name}; there is nothing to share.")
    with policy.db.session() as s:
        grant = s.get(BucketGrant, (name, grantee))
        if grant is None:
            s.add(BucketGrant(bucket=name, grantee=grantee, access=access, create_time=utcnow()))
        else:
            grant.access = access


def unshare(db: Database, name: str, grantee: str) -> None:
    """Withdraw ``grantee``'s access to the bucket; ``ResourceNotFound`` if it had none."""
    with db.session() as s:
        gone = s.execute(
            delete(BucketGrant).where(BucketGrant.bucket == name, BucketGrant.grantee == grantee)
        )
        if not gone.rowcount:  # type: ignore[attr-defined]
            raise ResourceNotFound("bucket grant", f"{name} → {grantee}")


def listing(policy: BucketPolicy) -> list[BucketView]:
    """Every owned bucket with its grants, then the store's unclaimed buckets."""
    with policy.db.session() as s:
        rows = s.execute(select(Bucket).order_by(Bucket.name)).scalars().all()
        grants = s.execute(select(BucketGrant)).scalars().all()
    by_bucket: dict[str, dict[str, str]] = {}
    for g in grants:
        by_bucket.setdefault(g.bucket, {})[g.grantee] = g.access
    views = [
        BucketView(r.name, r.owner, r.create_time, by_bucket.get(r.name, {}), True) for r in rows
    ]
    owned = {r.name for r in rows}
    first = policy.first_owner() or "-"
    for name in policy.store.bucket_names():
        if name not in owned:
            views.append(BucketView(name, first, None, {}, False))
    return views
