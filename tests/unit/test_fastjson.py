"""pipeline.fastjson writes the JSON the standard library writes, where that is valid JSON."""

from __future__ import annotations

import json
import math

import numpy

from pipeline import fastjson


def test_the_text_reads_back_as_the_standard_library_reads_it() -> None:
    value = {
        "ClassProbs": {"tench": 4.028851974258174e-10, "café": 0.25, "x": 1 / 3},
        "Labels": [{"LabelConfidence": 0.912345, "ClassId": 7}],
        "Empty": {},
        "Nested": [[1, 2.5, None, True, 'ü\\n"']],
    }
    text = fastjson.dumps(value)
    assert json.loads(text) == value
    assert fastjson.loads(json.dumps(value)) == value
    # floats are written shortest-round-trip, as repr writes them
    assert "4.028851974258174e-10" in text and "0.3333333333333333" in text


def test_non_string_keys_big_integers_and_numpy_as_json_would_take_them() -> None:
    assert json.loads(fastjson.dumps({1: "a", 2.5: "b"})) == json.loads(
        json.dumps({1: "a", 2.5: "b"})
    )
    big = {"Size": 2**70}
    assert json.loads(fastjson.dumps(big)) == big  # beyond orjson's 64 bits: json writes it
    assert json.loads(fastjson.dumps({"p": numpy.float32(0.5)})) == {"p": 0.5}


def test_nan_becomes_null_not_invalid_json() -> None:
    assert json.loads(fastjson.dumps({"v": math.nan})) == {"v": None}


def test_what_the_standard_library_wrote_before_still_reads() -> None:
    old = json.dumps({"v": math.nan, "s": "\ud800"})  # SQLite kept such text as written
    value = fastjson.loads(old)
    assert math.isnan(value["v"]) and value["s"] == "\ud800"


def test_the_response_renders_utf8_json() -> None:
    response = fastjson.FastJSONResponse({"class_name": "café", "success": True})
    assert json.loads(response.body.decode()) == {"class_name": "café", "success": True}
    assert response.headers["content-type"] == "application/json"
