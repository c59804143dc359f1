"""A simple way to put files in: ``PUT /oss/<bucket>/<key>`` (signed like RPC calls, body
hash may be ``UNSIGNED-PAYLOAD``), ``GET`` to read back, ``GET /oss/<bucket>?prefix=`` to list.

Every route works on the caller's view of the store (``Services.store_for``): buckets of other
owners are refused with ``AccessDenied`` unless shared, and an upload to a bucket nobody owns
claims it for the caller. Uploads are spooled to a temp file under the data dir with a size
limit, their SHA-256 checked against the signed ``x-acs-content-sha256``, then stored with one
atomic put, so an interrupted, oversize or corrupted upload leaves no object behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from pipeline import auth
from pipeline.api import wire
from pipeline.api.rpc import authenticate
from pipeline.api.services import Services
from pipeline.errors import ContentDigestMismatch, FileTooLarge
from pipeline.storage import ScopedStore, parse_oss_prefix, parse_oss_uri

router = APIRouter()


async def _caller_store(
    request: Request, *, streamed: bool = False
) -> tuple[Services, ScopedStore]:
    services: Services = request.app.state.services
    owner = await authenticate(
        services, wire.view(request), b"", allow_unsigned_payload=True, streamed=streamed
    )
    return services, services.store_for(owner)


def _spool_dir(services: Services) -> Path:
    spool = services.settings.resolved_data_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    return spool


@router.put("/oss/{bucket}/{key:path}")
async def put_object(bucket: str, key: str, request: Request) -> JSONResponse:
    services, store = await _caller_store(request, streamed=True)
    parse_oss_uri(f"oss://{bucket}/{key}")
    # Refused before the body is read (no disk spent); the claim itself comes with the put,
    # so an upload that fails claims nothing.
    await run_in_threadpool(store.check_write, bucket)
    limit = services.settings.upload_max_bytes
    declared = request.headers.get("x-acs-content-sha256", auth.UNSIGNED_PAYLOAD)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=_spool_dir(services), prefix="upload-") as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise FileTooLarge(f"The upload exceeds OPENIMM_UPLOAD_MAX_BYTES ({limit}).")
            digest.update(chunk)
            spool.write(chunk)
        if declared != auth.UNSIGNED_PAYLOAD and digest.hexdigest() != declared:
            raise ContentDigestMismatch()
        spool.flush()
        await run_in_threadpool(store.put_file, bucket, key, Path(spool.name))
    return JSONResponse(
        {"RequestId": request.state.request_id, "URI": f"oss://{bucket}/{key}", "Size": size}
    )


@router.get("/oss/{bucket}/{key:path}")
async def get_object(bucket: str, key: str, request: Request) -> FileResponse:
    services, store = await _caller_store(request)
    parse_oss_uri(f"oss://{bucket}/{key}")
    fd, name = tempfile.mkstemp(dir=_spool_dir(services), prefix="download-")
    os.close(fd)
    path = Path(name)
    try:
        await run_in_threadpool(store.get_to_file, bucket, key, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileResponse(
        path, filename=Path(key).name, background=BackgroundTask(path.unlink, missing_ok=True)
    )


@router.get("/oss/{bucket}")
async def list_objects(bucket: str, request: Request, prefix: str = "") -> JSONResponse:
    _, store = await _caller_store(request)
    parse_oss_prefix(f"oss://{bucket}/{prefix}")
    objects = await run_in_threadpool(lambda: list(store.list(bucket, prefix)))
    return JSONResponse(
        {
            "RequestId": request.state.request_id,
            "Objects": [{"URI": f"oss://{bucket}/{o.key}", "Size": o.size} for o in objects],
        }
    )
