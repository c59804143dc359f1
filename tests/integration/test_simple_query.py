"""SimpleQuery semantics, run identically on SQLite and on real PostgreSQL: the same query
must return the same files in the same order on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import files, migrate, paging, projects, query
from pipeline.db import Database
from pipeline.errors import InvalidParameter
from pipeline.settings import Settings

DOCS: list[dict[str, Any]] = [
    {
        "URI": "oss://b/a.jpg",
        "Size": 100,
        "Filename": "a.jpg",
        "MediaType": "image",
        "ContentType": "image/jpeg",
        "ProduceTime": "2024-01-01T00:00:00Z",
        "Title": "Sunset over the Bay",
        "CustomLabels": {"team": "red", "n": "7"},
        "Labels": [{"LabelName": "cat", "LabelConfidence": 0.9}],
        "faces": [(0.95, 120), (0.5, 40)],
    },
    {
        "URI": "oss://b/b.jpg",
        "Size": 2000,
        "Filename": "b.jpg",
        "MediaType": "image",
        "ContentType": "image/jpeg",
        "ProduceTime": "2024-06-01T00:00:00Z",
        "Title": "Mountain sunrise",
        "CustomLabels": {"team": "blue"},
        "Labels": [
            {"LabelName": "cat", "LabelConfidence": 0.2},
            {"LabelName": "dog", "LabelConfidence": 0.95},
        ],
        "faces": [(0.9, 50), (0.6, 150)],
    },
    {
        "URI": "oss://b/c.mp4",
        "Size": 30000,
        "Filename": "c.mp4",
        "MediaType": "video",
        "ContentType": "video/mp4",
        "Title": "SUNSET timelapse",
        "CustomLabels": {"team": "red"},
        "faces": [],
    },
    {
        "URI": "oss://b/d.txt",
        "Size": 5,
        "Filename": "d.txt",
        "MediaType": "document",
        "ContentType": "text/plain",
        "faces": None,
    },
]


def _make(url: str) -> tuple[Database, int]:
    migrate.upgrade(url)
    db = Database(url)
    with db.session() as s:
        project = projects.create_project(s, "o", "p", {})
        dataset = projects.create_dataset(s, project, "d", {})
        s.flush()
        for spec in DOCS:
            doc = {k: v for k, v in spec.items() if k not in ("URI", "faces", "CustomLabels")}
            faces = None
            if spec["faces"] is not None:
                faces = [
                    files.NewFace(
                        figure_id=f"{spec['Filename']}-{i}",
                        attrs={
                            "FaceQuality": quality,
                            "Boundary": {"Left": 0, "Top": 0, "Width": width, "Height": width},
                        },
                        embedding=np.zeros(128, np.float32).tobytes(),
                        qualified=quality > 0.8,
                        quality=quality,
                    )
                    for i, (quality, width) in enumerate(spec["faces"])
                ]
            item = files.Indexed(
                uri=spec["URI"],
                media_type=spec["MediaType"],
                size=spec["Size"],
                doc=doc,
                faces=faces,
                user={"CustomLabels": spec["CustomLabels"]} if "CustomLabels" in spec else {},
            )
            files.store_indexed(s, dataset, item)
        return db, dataset.id


@pytest.fixture(params=["sqlite", "postgresql"])
def dataset(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Database, int]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'q.db'}"
    else:
        request.applymarker(pytest.mark.integration)
        url = Settings(database_url=request.getfixturevalue("fresh_database")).db_url
    db, dataset_id = _make(url)
    yield db, dataset_id
    db.dispose()


def _run(dataset: tuple[Database, int], q: dict[str, Any] | None, **kw: Any) -> list[str]:
    db, dataset_id = dataset
    with db.session() as s:
        result = query.run(s, query.QuerySpec(dataset_id=dataset_id, query=q, **kw))
        return [d["Filename"] for d in files.documents(s, result.file_ids, "1")]


def leaf(field: str, op: str, value: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"Field": field, "Operation": op}
    if value is not None:
        node["Value"] = value
    return node


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (leaf("MediaType", "eq", "image"), {"a.jpg", "b.jpg"}),
        (leaf("Size", "gt", "100"), {"b.jpg", "c.mp4"}),
        (leaf("Size", "gte", "100"), {"a.jpg", "b.jpg", "c.mp4"}),
        (leaf("Size", "lt", "100"), {"d.txt"}),
        (leaf("Size", "lte", "5"), {"d.txt"}),
        (leaf("Size", "eq", "2000"), {"b.jpg"}),
        (leaf("ProduceTime", "gte", "2024-03-01T00:00:00Z"), {"b.jpg"}),
        (leaf("Filename", "prefix", "b"), {"b.jpg"}),
        (leaf("ContentType", "prefix", "image/"), {"a.jpg", "b.jpg"}),
        (leaf("Title", "match-phrase", "sunset"), {"a.jpg", "c.mp4"}),
        (leaf("Title", "match-phrase", "sunset over"), {"a.jpg"}),
        (leaf("CustomLabels.team", "eq", "red"), {"a.jpg", "c.mp4"}),
        (leaf("CustomLabels.n", "exist"), {"a.jpg"}),
        (leaf("Figures", "exist"), {"a.jpg", "b.jpg"}),
        (leaf("Labels.LabelName", "eq", "dog"), {"b.jpg"}),
        (leaf("Figures.FigureClusterId", "eq", files.UNAVAILABLE), {"a.jpg", "b.jpg"}),
        (
            {
                "Operation": "and",
                "SubQueries": [leaf("MediaType", "eq", "image"), leaf("Size", "lt", "1000")],
            },
            {"a.jpg"},
        ),
        (
            {
                "Operation": "or",
                "SubQueries": [leaf("Filename", "eq", "d.txt"), leaf("Size", "gt", "10000")],
            },
            {"c.mp4", "d.txt"},
        ),
        (
            {"Operation": "not", "SubQueries": [leaf("MediaType", "eq", "image")]},
            {"c.mp4", "d.txt"},
        ),
        # nested: a good face that is also large — only a.jpg has both on ONE face
        (
            {
                "Operation": "nested",
                "Field": "Figures",
                "SubQueries": [
                    {
                        "Operation": "and",
                        "SubQueries": [
                            leaf("Figures.FaceQuality", "gt", "0.8"),
                            leaf("Figures.Boundary.Width", "gt", "100"),
                        ],
                    }
                ],
            },
            {"a.jpg"},
        ),
        # without nested the same conditions may hit different faces: b.jpg matches too
        (
            {
                "Operation": "and",
                "SubQueries": [
                    leaf("Figures.FaceQuality", "gt", "0.8"),
                    leaf("Figures.Boundary.Width", "gt", "100"),
                ],
            },
            {"a.jpg", "b.jpg"},
        ),
        # the documented "not nested" shape: images with no confident cat label
        (
            {
                "Operation": "not",
                "SubQueries": [
                    {
                        "Operation": "nested",
                        "Field": "Labels",
                        "SubQueries": [
                            {
                                "Operation": "and",
                                "SubQueries": [
                                    leaf("Labels.LabelName", "eq", "cat"),
                                    leaf("Labels.LabelConfidence", "gte", "0.5"),
                                ],
                            }
                        ],
                    }
                ],
            },
            {"b.jpg", "c.mp4", "d.txt"},
        ),
    ],
)
def test_operators(dataset: tuple[Database, int], q: dict[str, Any], expected: set[str]) -> None:
    query.validate(q)
    assert set(_run(dataset, q)) == expected


def test_sort_order_and_paging_are_stable(dataset: tuple[Database, int]) -> None:
    assert _run(dataset, None, sort=[("Size", True)]) == ["c.mp4", "b.jpg", "a.jpg", "d.txt"]
    assert _run(dataset, None, sort=[("Filename", False)]) == ["a.jpg", "b.jpg", "c.mp4", "d.txt"]
    # Title is missing on d.txt: missing values sort last in both directions on both DBs
    assert _run(dataset, None, sort=[("Title", False)])[-1] == "d.txt"
    assert _run(dataset, None, sort=[("Title", True)])[-1] == "d.txt"
    db, dataset_id = dataset
    seen: list[str] = []
    token = ""
    with db.session() as s:
        while True:
            spec = query.QuerySpec(
                dataset_id=dataset_id,
                query=None,
                sort=[("Size", False)],
                max_results=3,
                next_token=token,
            )
            result = query.run(s, spec)
            assert result.total_hits == 4
            seen += result.file_ids
            token = result.next_token
            if not token:
                break
    assert len(seen) == 4 and len(set(seen)) == 4
    with db.session() as s, pytest.raises(InvalidParameter):
        other = query.QuerySpec(
            dataset_id=dataset_id,
            query=leaf("Size", "gt", "1"),
            next_token=paging.encode([3, "not-this-query"]),
        )
        query.run(s, other)


def test_aggregations(dataset: tuple[Database, int]) -> None:
    db, dataset_id = dataset
    aggs = [
        ("Size", "sum"),
        ("Size", "max"),
        ("Size", "min"),
        ("Size", "average"),
        ("MediaType", "group"),
        ("MediaType", "distinct"),
        ("CustomLabels.team", "count"),
    ]
    with db.session() as s:
        result = query.run(s, query.QuerySpec(dataset_id=dataset_id, query=None, aggregations=aggs))
    values = {(a["Field"], a["Operation"]): a for a in result.aggregations}
    assert values[("Size", "sum")]["Value"] == 32105
    assert values[("Size", "max")]["Value"] == 30000
    assert values[("Size", "min")]["Value"] == 5
    assert values[("Size", "average")]["Value"] == pytest.approx(32105 / 4)
    assert values[("MediaType", "group")]["Groups"][0] == {"Value": "image", "Count": 2}
    assert values[("MediaType", "distinct")]["Value"] == 3
    assert values[("CustomLabels.team", "count")]["Value"] == 3
    assert result.total_hits == 4


@pytest.mark.parametrize(
    ("q", "fragment"),
    [
        ({"Operation": "match", "Field": "Title", "Value": "x"}, "not supported"),
        ({"Operation": "eq", "Field": "Size"}, "string Value"),
        ({"Operation": "and", "SubQueries": []}, "non-empty"),
        ({"Operation": "eq", "Field": "Size", "Value": "1", "Extra": 1}, "Unknown"),
        (
            {
                "Operation": "nested",
                "Field": "Figures",
                "SubQueries": [leaf("Figures.Age", "gt", "3")],
            },
            "and/or/not",
        ),
        (
            {
                "Operation": "nested",
                "Field": "Figures",
                "SubQueries": [{"Operation": "and", "SubQueries": [leaf("Size", "gt", "3")]}],
            },
            "sub-fields",
        ),
    ],
)
def test_malformed_queries_are_refused(q: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidParameter, match=fragment):
        query.validate(q)


def test_depth_and_condition_limits() -> None:
    node: dict[str, Any] = leaf("Size", "gt", "1")
    for _ in range(4):
        node = {"Operation": "and", "SubQueries": [node]}
    query.validate(node)  # depth 5
    with pytest.raises(InvalidParameter, match="deeper than 5"):
        query.validate({"Operation": "and", "SubQueries": [node]})
    wide = {"Operation": "or", "SubQueries": [leaf("Size", "eq", str(i)) for i in range(100)]}
    with pytest.raises(InvalidParameter, match="at most 100"):
        query.validate(wide)
