"""pipeline.vectors: float32 vectors in JSON results, decoded to the exact values."""

from __future__ import annotations

import json

import numpy
import pytest

from pipeline import vectors


def test_a_vector_comes_back_as_the_same_numbers_the_json_object_held() -> None:
    probs = numpy.random.default_rng(0).dirichlet(numpy.ones(1000)).astype(numpy.float32)
    names = [f"class {i}" for i in range(1000)]
    text = vectors.encode(probs)
    assert len(text) < 5400  # 4000 bytes of float32, base64
    old = json.loads(json.dumps({n: float(p) for n, p in zip(names, probs, strict=True)}))
    assert vectors.named(names, json.loads(json.dumps(text))) == old


@pytest.mark.parametrize("text", ["not base64!", "AAA="])
def test_a_damaged_vector_is_refused_not_misread(text: str) -> None:
    with pytest.raises(ValueError):
        vectors.decode(text)


def test_an_empty_vector_names_nothing() -> None:
    assert len(vectors.decode("")) == 0
    with pytest.raises(ValueError, match="0 values for 2 names"):
        vectors.named(["a", "b"], "")


def test_the_number_of_names_must_match() -> None:
    with pytest.raises(ValueError, match="3 values for 2 names"):
        vectors.named(["a", "b"], vectors.encode(numpy.zeros(3)))
