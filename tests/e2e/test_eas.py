"""The official eas-prediction client against openimm's /api/predict/{service}: a predict
call is a queued task run by a real worker, recorded in ListTasks; failures come back as
Model Hub ``success: false``; bad tokens and unknown services are refused."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
from eas_prediction import PredictClient, StringRequest
from eas_prediction.exception import PredictException

from pipeline.client import ImmClient
from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def client(stack: Stack, service: str, token: str = KEY_SECRET) -> PredictClient:
    c = PredictClient(f"http://{stack.endpoint}", service)
    c.set_token(token)
    c.set_retry_count(1)
    # The client's default 5 s read timeout is shorter than a job queued while the pool's
    # processes still warm their models (workers.warmup) on a loaded 2-core machine.
    c.set_timeout(60_000)
    c.init()
    return c


def predict(c: PredictClient, body: dict[str, object]) -> dict[str, object]:
    return dict(json.loads(c.predict(StringRequest(json.dumps(body))).response_data))


def test_predict_runs_as_a_task(stack: Stack) -> None:
    out = predict(client(stack, "diagnostic"), {"input": {"mode": "Noop"}})
    assert out["success"] is True and out["result"] == ""
    imm = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))
    listed = imm.call("ListTasks", ProjectName="eas", TaskTypes=["Diagnostic"])["Tasks"]
    assert out["task_id"] in [t["TaskId"] for t in listed]
    failed = predict(client(stack, "diagnostic"), {"input": {"mode": "Fail"}})
    assert failed["success"] is False and str(failed["result"]).startswith("[")


def test_predict_refuses_bad_tokens_and_unknown_services(stack: Stack) -> None:
    with pytest.raises(PredictException) as info:
        predict(client(stack, "diagnostic", token="wrong"), {"input": {}})
    assert info.value.code == 403 and b"SignatureDoesNotMatch" in info.value.message
    with pytest.raises(PredictException) as info:
        predict(client(stack, "no_such_service"), {"input": {}})
    assert info.value.code == 404
    with pytest.raises(PredictException) as info:
        predict(client(stack, "diagnostic"), {"input": {"mode": "Explode"}})
    assert info.value.code == 400
