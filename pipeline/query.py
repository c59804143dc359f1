"""SimpleQuery (reference §3.7) compiled to portable SQL over the ``file_fields`` index.

Every leaf condition is an ``EXISTS`` over the index rows of the file, so one query text
runs on SQLite and PostgreSQL with the same results: strings compare byte-wise on both
(``C`` collation on PostgreSQL), ``match-phrase`` is a substring test on case-folded text,
numbers compare as numbers when both the stored value and ``Value`` are numeric.

Paging is by offset (the ``NextToken`` carries it together with a fingerprint of the query, so
a token cannot be replayed against a different query). Rows are ordered by the requested sort
fields and then by ObjectId, so pages are stable while the dataset does not change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from pipeline import paging
from pipeline.errors import InvalidParameter
from pipeline.fileindex import FIELDS
from pipeline.models import File
from pipeline.params import bounded_int

LEAF_OPS = frozenset({"eq", "gt", "gte", "lt", "lte", "prefix", "match-phrase", "exist"})
LOGICAL_OPS = frozenset({"and", "or", "not", "nested"})
AGG_OPS = frozenset({"count", "distinct", "group", "min", "max", "average", "sum"})
NODE_KEYS = frozenset({"Field", "Value", "Operation", "SubQueries"})
MAX_DEPTH = 5
MAX_CONDITIONS = 100
MAX_SORT_FIELDS = 5
MAX_FILES = 100
MAX_GROUPS = 2000
MAX_OFFSET = 1 << 31  # far beyond any dataset a page walk reaches; fits every SQL OFFSET


@dataclass
class QuerySpec:
    """A validated SimpleQuery request."""

    dataset_id: int
    query: dict[str, Any] | None
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    max_results: int = MAX_FILES
    next_token: str = ""
    with_total: bool = True
    aggregations: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class QueryResult:
    file_ids: list[str]
    next_token: str
    total_hits: int | None
    aggregations: list[dict[str, Any]]


def _bad(detail: str) -> InvalidParameter:
    return InvalidParameter("Query", detail)


def validate(node: Any) -> None:
    """Shape, operators, depth ≤ 5 and ≤ 100 conditions, as IMM enforces them."""
    count = _validate(node, 1, None)
    if count > MAX_CONDITIONS:
        raise _bad(f"The query has {count} conditions; at most {MAX_CONDITIONS} are allowed.")


def _validate(node: Any, depth: int, nested_field: str | None) -> int:
    if not isinstance(node, dict):
        raise _bad("Each query node must be a JSON object.")
    unknown = set(node) - NODE_KEYS
    if unknown:
        raise _bad(f"Unknown query key(s): {', '.join(sorted(unknown))}.")
    if depth > MAX_DEPTH:
        raise _bad(f"The query is nested deeper than {MAX_DEPTH} levels.")
    op = node.get("Operation")
    if op in LEAF_OPS:
        return _validate_leaf(node, op, nested_field)
    if op not in LOGICAL_OPS:
        ops = ", ".join(sorted(LEAF_OPS | LOGICAL_OPS))
        raise _bad(f"Operation {op!r} is not supported; use one of {ops}.")
    subs = node.get("SubQueries")
    if not isinstance(subs, list) or not subs:
        raise _bad(f"Operation {op} needs a non-empty SubQueries list.")
    if op == "nested":
        nested_field = _nested_field(node, subs, nested_field)
    return 1 + sum(_validate(sub, depth + 1, nested_field) for sub in subs)


def _validate_leaf(node: dict[str, Any], op: str, nested_field: str | None) -> int:
    name = node.get("Field")
    if not isinstance(name, str) or not name:
        raise _bad(f"Operation {op} needs a Field.")
    if nested_field and not name.startswith(nested_field + "."):
        raise _bad(f"Field {name} inside nested {nested_field} must be one of its sub-fields.")
    if op != "exist" and not isinstance(node.get("Value"), str):
        raise _bad(f"Operation {op} on {name} needs a string Value.")
    if node.get("SubQueries"):
        raise _bad(f"Operation {op} takes no SubQueries.")
    return 1


def _nested_field(node: dict[str, Any], subs: list[Any], outer: str | None) -> str:
    name = node.get("Field")
    if outer is not None:
        raise _bad("nested cannot appear inside another nested.")
    if not isinstance(name, str) or not name or "." in name:
        raise _bad("nested needs the Field of an array of objects, e.g. Figures.")
    if not all(isinstance(s, dict) and s.get("Operation") in ("and", "or", "not") for s in subs):
        raise _bad("The SubQueries of nested must be and/or/not.")
    return name


# ---- compilation ------------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _leaf(node: dict[str, Any], anchor: Any) -> ColumnElement[bool]:
    row = FIELDS.alias()
    if anchor is None:
        where = [row.c.file_id == File.id, row.c.field == node["Field"]]
    else:  # inside nested: same file and same array element as the anchor row
        where = [
            row.c.file_id == anchor.c.file_id,
            row.c.elem == anchor.c.elem,
            row.c.field == node["Field"],
        ]
    op = node["Operation"]
    if op != "exist":
        where.append(_compare(row, op, node["Value"]))
    else:
        where.append(or_(row.c.sval != "", row.c.nval.is_not(None), row.c.elem >= 0))
    return exists(select(1).select_from(row).where(*where))


def _compare(row: Any, op: str, value: str) -> ColumnElement[bool]:
    if op == "prefix":
        return func.substr(row.c.sval, 1, len(value)) == value
    if op == "match-phrase":
        pattern = value.casefold().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return row.c.lval.like(f"%{pattern}%", escape="\\")
    number = _number(value)
    text_cond = _op(row.c.sval, op, value)
    if number is None:
        return text_cond
    return or_(
        and_(row.c.nval.is_not(None), _op(row.c.nval, op, number)),
        and_(row.c.nval.is_(None), text_cond),
    )


def _op(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "eq":
        return column == value
    if op == "gt":
        return column > value
    if op == "gte":
        return column >= value
    if op == "lt":
        return column < value
    return column <= value


def compile_node(node: dict[str, Any], anchor: Any = None) -> ColumnElement[bool]:
    """``anchor`` is the array-element row a ``nested`` node binds its conditions to.
    Correlation is always to the immediately enclosing SELECT (SQLAlchemy's rule), which is
    why nested leaves compare with the anchor's columns rather than with ``files``."""
    op = node["Operation"]
    if op in LEAF_OPS:
        return _leaf(node, anchor)
    subs = node["SubQueries"]
    if op == "nested":
        anchor = FIELDS.alias()
        inner = and_(*(compile_node(s, anchor) for s in subs))
        return exists(
            select(1)
            .select_from(anchor)
            .where(
                anchor.c.file_id == File.id,
                anchor.c.field == node["Field"],
                anchor.c.elem >= 0,
                inner,
            )
        )
    parts = [compile_node(s, anchor) for s in subs]
    if op == "and":
        return and_(true(), *parts)
    if op == "or":
        return or_(false(), *parts)
    return not_(and_(true(), *parts))  # not: none of the (and-ed) sub-queries holds


# ---- execution --------------------------------------------------------------------------


def _base(spec: QuerySpec) -> Select[Any]:
    stmt = select(File.id).where(File.dataset_id == spec.dataset_id)
    if spec.query:
        stmt = stmt.where(compile_node(spec.query))
    return stmt


def _sort_value(name: str, column: str) -> Any:
    row = FIELDS.alias()
    return (
        select(getattr(row.c, column))
        .where(row.c.file_id == File.id, row.c.field == name, row.c.elem == -1)
        .order_by(getattr(row.c, column))
        .limit(1)
        .scalar_subquery()
    )


def _ordering(spec: QuerySpec) -> list[Any]:
    ordering: list[Any] = []
    for name, desc in spec.sort:
        for column in ("nval", "sval"):
            value = _sort_value(name, column)
            # Explicit NULLS LAST: SQLite and PostgreSQL disagree on the default.
            ordering.append(value.desc().nulls_last() if desc else value.asc().nulls_last())
    ordering.append(File.id.asc())
    return ordering


def fingerprint(spec: QuerySpec) -> str:
    raw = json.dumps([spec.query, spec.sort, spec.aggregations], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _offset(spec: QuerySpec) -> int:
    key = paging.decode(spec.next_token)
    if key is None:
        return 0
    offset = bounded_int(key[0], 0, MAX_OFFSET) if len(key) == 2 else None
    if offset is None or key[1] != fingerprint(spec):
        raise InvalidParameter("NextToken", "The token does not belong to this query.")
    return offset


def run(session: Session, spec: QuerySpec) -> QueryResult:
    if spec.aggregations:
        return QueryResult([], "", _total(session, spec), _aggregate(session, spec))
    offset = _offset(spec)
    stmt = _base(spec).order_by(*_ordering(spec)).offset(offset).limit(spec.max_results + 1)
    ids = list(session.scalars(stmt))
    page = ids[: spec.max_results]
    more = len(ids) > spec.max_results
    token = paging.encode([offset + len(page), fingerprint(spec)]) if more else ""
    total = _total(session, spec) if spec.with_total else None
    return QueryResult(page, token, total, [])


def _total(session: Session, spec: QuerySpec) -> int | None:
    if not spec.with_total:
        return None
    return int(session.scalar(select(func.count()).select_from(_base(spec).subquery())) or 0)


def _aggregate(session: Session, spec: QuerySpec) -> list[dict[str, Any]]:
    matched = _base(spec).subquery()
    out = []
    for name, op in spec.aggregations:
        values = FIELDS.alias()
        where = [
            values.c.file_id.in_(select(matched.c.id)),
            values.c.field == name,
            or_(values.c.sval != "", values.c.nval.is_not(None)),
        ]
        item: dict[str, Any] = {"Field": name, "Operation": op}
        if op == "group":
            count = func.count()
            stmt = (
                select(values.c.sval, count)
                .where(*where)
                .group_by(values.c.sval)
                .order_by(count.desc(), values.c.sval.asc())
                .limit(spec.max_results)
            )
            groups = session.execute(stmt).all()
            item["Groups"] = [{"Value": v, "Count": int(c)} for v, c in groups]
        else:
            item["Value"] = _scalar_aggregate(session, values, where, op)
        out.append(item)
    return out


def _scalar_aggregate(session: Session, values: Any, where: list[Any], op: str) -> float:
    expr: Any = {
        "count": func.count(),
        "distinct": func.count(values.c.sval.distinct()),
        "min": func.min(values.c.nval),
        "max": func.max(values.c.nval),
        "average": func.avg(values.c.nval),
        "sum": func.sum(values.c.nval),
    }[op]
    result = session.scalar(select(expr).select_from(values).where(*where))
    return float(result or 0)
