"""The classifier behind a bare HTTP endpoint: the floor under openimm's task model.

    .venv/bin/python -m benchmarks.bare_endpoint PORT

``POST /api/predict/<any>`` with ``{"image": <base64>}`` answers what openimm's
``image_classification`` answers (``class``, ``class_name``, ``class_probs``), from the same
engine (``workers.models.imagenet``, one intra-op thread, passive OpenMP waits) on uvicorn
with uvloop and httptools, as openimm's API runs — but without anything of the task model: no
signature check, task row, staging, broker, claim, terminal write or wake-up. Requests run in
Starlette's thread pool, so two forward passes run at once on two cores (no batching).
``benchmarks/image_classification.py`` measures it beside the service in the same run: the
difference between the two is what a task per request costs.
"""

# No `from __future__ import annotations`: FastAPI reads the handler's annotations, and
# `Request` is imported inside main() (nothing heavy at import).
import base64
import io
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as openimm's workers (before torch)


def main(port: int) -> None:
    import orjson
    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from PIL import Image
    from starlette.concurrency import run_in_threadpool

    from workers import models
    from workers.models.imagenet import ImageNetModel, class_names

    torch.set_num_threads(1)
    model = models.get(ImageNetModel, "cpu")
    names = class_names()
    app = FastAPI()

    def answer(body: bytes) -> bytes:
        data = base64.b64decode(orjson.loads(body)["image"])
        result = model.classify([Image.open(io.BytesIO(data))])[0]
        probs = dict(zip(names, result.probs.tolist(), strict=True))
        out = {"request_id": "", "success": True, "class": result.index}
        return orjson.dumps({**out, "class_name": result.name, "class_probs": probs})

    @app.post("/api/predict/{service}")
    async def predict(service: str, request: Request) -> Response:
        body = await request.body()
        return Response(await run_in_threadpool(answer, body), media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop")


if __name__ == "__main__":
    main(int(sys.argv[1]))
