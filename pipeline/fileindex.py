"""The search index behind SimpleQuery: a file document flattened into ``file_fields`` rows.

Every leaf value becomes one row ``(field path, elem, sval, lval, nval)``: ``Figures.Age`` is
the path of each face's age, ``CustomLabels.team`` the path of a custom label. Values inside an
array of objects carry the element's index in ``elem`` (top-level scalars use -1), and each
such element also gets one anchor row with the array's own path, so a ``nested`` query can ask
for "one element where all these hold". Deeper arrays share their outermost element's index.
Numbers are stored in ``nval`` (and as text in ``sval``), booleans as "true"/"false".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from pipeline.models import FileField

FIELDS: Table = FileField.__table__  # type: ignore[assignment]
MAX_VALUE_CHARS = 1024
# Identity fields every document has; indexing them would only grow the table.
NOT_INDEXED = frozenset({"OwnerId", "ProjectName", "DatasetName", "ObjectType"})


def scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float: indexed as text only
        return None


def flatten(doc: dict[str, Any]) -> Iterator[tuple[str, int, Any]]:
    """``(path, elem, value)`` for every leaf of ``doc`` plus array-element anchors."""
    for key, value in doc.items():
        if key in NOT_INDEXED:
            continue
        yield from _walk(key, value, -1)


def _walk(path: str, value: Any, elem: int) -> Iterator[tuple[str, int, Any]]:
    if value is None or value == "":
        return
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _walk(f"{path}.{key}", sub, elem)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict) and elem == -1:
                yield path, index, None  # anchor: this element exists
                yield from _walk(path, item, index)
            else:
                yield from _walk(path, item, elem)
    else:
        yield path, elem, value


def rows(file_id: str, dataset_id: int, doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for path, elem, value in flatten(doc):
        text = "" if value is None else scalar_text(value)[:MAX_VALUE_CHARS]
        out.append(
            {
                "file_id": file_id,
                "dataset_id": dataset_id,
                "field": path[:256],
                "elem": elem,
                "sval": text,
                "lval": text.casefold()[:MAX_VALUE_CHARS],
                "nval": _number(value),
            }
        )
    return out


def rebuild(session: Session, file_id: str, dataset_id: int, doc: dict[str, Any]) -> None:
    """Replace the index rows of one file (same transaction as the document change)."""
    conn = session.connection()
    conn.execute(delete(FIELDS).where(FIELDS.c.file_id == file_id))
    values = rows(file_id, dataset_id, doc)
    if values:
        conn.execute(insert(FIELDS), values)


def set_figure_clusters(session: Session, changes: list[dict[str, Any]]) -> None:
    """Point the index rows of faces at their new cluster, in two batched statements.

    ``changes``: ``{"file_id", "figure_id", "cluster_id", "confidence"}`` per face. A face's
    array element is found through its ``Figures.FigureId`` row, so a clustering run that
    moves 100k faces does not rebuild 100k documents' rows.
    """
    if not changes:
        return
    anchor = FIELDS.alias()
    elem_of = (
        select(anchor.c.elem)
        .where(
            anchor.c.file_id == bindparam("b_file"),
            anchor.c.field == "Figures.FigureId",
            anchor.c.sval == bindparam("b_figure"),
        )
        .scalar_subquery()
    )
    where = [FIELDS.c.file_id == bindparam("b_file"), FIELDS.c.elem == elem_of]
    conn = session.connection()
    ids = update(FIELDS).where(*where, FIELDS.c.field == "Figures.FigureClusterId")
    conn.execute(
        ids.values(sval=bindparam("b_cluster"), lval=bindparam("b_lower")),
        [
            {
                "b_file": c["file_id"],
                "b_figure": c["figure_id"],
                "b_cluster": c["cluster_id"],
                "b_lower": c["cluster_id"].casefold(),
            }
            for c in changes
        ],
    )
    conf = update(FIELDS).where(*where, FIELDS.c.field == "Figures.FigureClusterConfidence")
    conn.execute(
        conf.values(sval=bindparam("b_text"), lval=bindparam("b_text"), nval=bindparam("b_num")),
        [
            {
                "b_file": c["file_id"],
                "b_figure": c["figure_id"],
                "b_num": round(c["confidence"], 4),
                "b_text": scalar_text(round(c["confidence"], 4)),
            }
            for c in changes
        ],
    )
