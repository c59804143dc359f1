"""A simple way to put files in: ``PUT /oss/<bucket>/<key>`` (signed like RPC calls, body
hash may be ``UNSIGNED-PAYLOAD``), ``GET`` to read back, ``GET /oss/<bucket>?prefix=`` to list.

Uploads are spooled to a temp file under the data dir with a size limit, then stored with one
atomic put, so an interrupted or oversize upload leaves no object behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from pipeline.api import wire
from pipeline.api.rpc import authenticate
from pipeline.api.services import Services
from pipeline.errors import FileTooLarge
from pipeline.storage import parse_oss_prefix, parse_oss_uri

router = APIRouter()


async def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    await authenticate(services, wire.view(request), b"", allow_unsigned_payload=True)
    return services


def _spool_dir(services: Services) -> Path:
    spool = services.settings.resolved_data_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    return spool


@router.put("/oss/{bucket}/{key:path}")
async def put_object(bucket: str, key: str, request: Request) -> JSONResponse:
    services = await _services(request)
    parse_oss_uri(f"oss://{bucket}/{key}")
    limit = services.settings.upload_max_bytes
    with tempfile.NamedTemporaryFile(dir=_spool_dir(services), prefix="upload-") as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise FileTooLarge(f"The upload exceeds OPENIMM_UPLOAD_MAX_BYTES ({limit}).")
            spool.write(chunk)
        spool.flush()
        await run_in_threadpool(services.store.put_file, bucket, key, Path(spool.name))
    return JSONResponse(
        {"RequestId": request.state.request_id, "URI": f"oss://{bucket}/{key}", "Size": size}
    )


@router.get("/oss/{bucket}/{key:path}")
async def get_object(bucket: str, key: str, request: Request) -> FileResponse:
    services = await _services(request)
    parse_oss_uri(f"oss://{bucket}/{key}")
    fd, name = tempfile.mkstemp(dir=_spool_dir(services), prefix="download-")
    os.close(fd)
    path = Path(name)
    try:
        await run_in_threadpool(services.store.get_to_file, bucket, key, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileResponse(
        path, filename=Path(key).name, background=BackgroundTask(path.unlink, missing_ok=True)
    )


@router.get("/oss/{bucket}")
async def list_objects(bucket: str, request: Request, prefix: str = "") -> JSONResponse:
    services = await _services(request)
    parse_oss_prefix(f"oss://{bucket}/{prefix}")
    objects = await run_in_threadpool(lambda: list(services.store.list(bucket, prefix)))
    return JSONResponse(
        {
            "RequestId": request.state.request_id,
            "Objects": [{"URI": f"oss://{bucket}/{o.key}", "Size": o.size} for o in objects],
        }
    )
