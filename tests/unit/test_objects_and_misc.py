"""HTTP object upload/download/list, device selection, schema export, CLI plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main as cli_main
from pipeline.client import ClientError, ImmClient
from pipeline.settings import Settings
from schemas.imm import json_schemas
from workers.device import pick_device


def test_upload_download_and_list(imm: ImmClient, settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    src.write_bytes(b"\xff\xd8jpeg-bytes" * 100)
    put = imm.put_object("oss://photos/2024/photo.jpg", src)
    assert put["URI"] == "oss://photos/2024/photo.jpg" and put["Size"] == 1200 and put["RequestId"]
    assert (settings.oss_root / "photos" / "2024" / "photo.jpg").read_bytes() == src.read_bytes()
    assert imm.get_object("oss://photos/2024/photo.jpg") == src.read_bytes()
    assert imm.list_objects("oss://photos/2024/") == [
        {"URI": "oss://photos/2024/photo.jpg", "Size": 1200}
    ]
    with pytest.raises(ClientError) as info:
        imm.get_object("oss://photos/missing.jpg")
    assert info.value.code == "ResourceNotFound"


def test_upload_limits_and_refusals(imm: ImmClient, settings: Settings, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2048)
    imm.http.app.state.services.settings = settings.model_copy(  # type: ignore[attr-defined]
        update={"upload_max_bytes": 1024}
    )
    with pytest.raises(ClientError) as info:
        imm.put_object("oss://bkt/big.bin", big)
    assert info.value.code == "FileTooLarge"
    assert not (settings.oss_root / "bkt").exists()
    spool = settings.resolved_data_dir / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []
    with pytest.raises(ClientError) as info:
        imm.put_object("oss://BAD_BUCKET/x", big)
    assert info.value.code == "InvalidArgument"
    anonymous = ImmClient("http://testserver", None)
    anonymous.http = imm.http
    with pytest.raises(ClientError) as info:
        anonymous.put_object("oss://bkt/x", big)
    assert info.value.code == "MissingAuthorization"


def test_device_selection() -> None:
    assert pick_device("cuda:1") == "cuda:1"  # pinned by OPENIMM_DEVICE
    device = pick_device("", process_index=3)
    assert device == "cpu" or device.startswith("cuda:")


def test_schema_export(capsys: pytest.CaptureFixture[str]) -> None:
    schemas = json_schemas()
    assert set(schemas["TaskInfo"]["properties"]) >= {"TaskId", "Status", "Progress", "UserData"}
    assert cli_main(["schemas"]) == 0
    assert json.loads(capsys.readouterr().out)["ErrorResponse"]["required"] == [
        "RequestId",
        "HostId",
        "Code",
        "Message",
    ]


def test_settings_parse_keys_and_json() -> None:
    settings = Settings(access_keys="A:1,B:2", time_limits='{"FileCompression": 5}')
    assert settings.parsed_access_keys() == {"A": "1", "B": "2"}
    assert settings.time_limit("FileCompression") == 5
    assert settings.visibility_timeout > 3600
    with pytest.raises(ValueError):
        Settings(access_keys="no-secret").parsed_access_keys()
