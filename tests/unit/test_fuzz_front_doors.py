"""A bounded property-based fuzz of the IMM RPC, MNS and EAS front doors (see
``tests/fuzzing.py`` for what is generated and checked; ``scripts/fuzz_front_doors.py`` runs
a longer one)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from pipeline.api.app import create_app
from tests import fuzzing
from tests.conftest import KEY, OTHER_KEY, signed
from tests.mns_http import MnsHttp

EXAMPLES = int(os.environ.get("OPENIMM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # CI replays the same examples every run; the script (OPENIMM_FUZZ_RANDOM=1) explores.
    derandomize=not os.environ.get("OPENIMM_FUZZ_RANDOM"),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one app for all examples, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.fixture
def fuzz_app(tmp_path: Path) -> Iterator[TestClient]:
    keys = f"{KEY[0]}:{KEY[1]},{OTHER_KEY[0]}:{OTHER_KEY[1]}"
    app = create_app(fuzzing.fuzz_settings(tmp_path / "data", keys))
    with TestClient(app, raise_server_exceptions=False) as http:
        fuzzing.seed(signed(http), MnsHttp(http, KEY))
        yield http


@FUZZ
@given(req=fuzzing.rpc_requests())
def test_rpc_front_door(fuzz_app: TestClient, req: dict[str, Any]) -> None:
    before = fuzzing.row_counts(fuzz_app)
    response = fuzzing.send_rpc(signed(fuzz_app), signed(fuzz_app, OTHER_KEY), req)
    fuzzing.check_rpc(response)
    fuzzing.check_nothing_written(before, fuzzing.row_counts(fuzz_app), response.status_code)


@FUZZ
@given(req=fuzzing.mns_requests())
def test_mns_front_door(fuzz_app: TestClient, req: dict[str, Any]) -> None:
    before = fuzzing.row_counts(fuzz_app)
    response = fuzzing.send_mns(fuzz_app, KEY, req)
    fuzzing.check_mns(response)
    fuzzing.check_nothing_written(before, fuzzing.row_counts(fuzz_app), response.status_code)


@FUZZ
@given(req=fuzzing.eas_requests())
def test_eas_front_door(fuzz_app: TestClient, req: dict[str, Any]) -> None:
    before = fuzzing.row_counts(fuzz_app)
    response = fuzzing.send_eas(fuzz_app, KEY, req)
    fuzzing.check_eas(response)
    fuzzing.check_nothing_written(before, fuzzing.row_counts(fuzz_app), response.status_code)
