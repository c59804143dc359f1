"""Messages, ids and fields as IMM sends them (seed 004's captured samples), and account ids
where IMM/MNS show the numeric account UID."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from pipeline import accounts, ids, projects, tasks
from pipeline.client import ClientError, ImmClient
from pipeline.db import Database
from pipeline.models import Task
from pipeline.notify import messages, queues, topics
from pipeline.notify.dispatcher import Dispatcher
from pipeline.settings import Settings
from schemas.events import ImmMessage, MnsEnvelope
from tests.unit.test_notify import Receiver, drain, env, finished_task, receiver, subscribe
from workers.media import probe

__all__ = ["env", "receiver"]  # fixtures shared with test_notify

EVENT_ID_RE = re.compile(r"^[0-9A-F]{3}-[0-9A-Za-z]{27}$")  # "049-1udsgM0nr0leAdDBAOxe4kDLYM5"
MESSAGE_ID_RE = re.compile(r"^[0-9A-F]{32}$")  # "129D772E14277FA6182D6E67D354D069"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}"
OFFSET_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d$")
ACCOUNT = "1413397765600001"


# ---- ids -------------------------------------------------------------------------------------


def test_event_and_message_ids_have_the_seed_shapes() -> None:
    for _ in range(50):
        assert EVENT_ID_RE.match(ids.event_id())
    assert MESSAGE_ID_RE.match(messages.message_id(ids.event_id(), "topic"))
    assert messages.message_id("e", "t") == messages.message_id("e", "t")  # stable per retry


@pytest.mark.parametrize(
    ("task_type", "prefix"),
    [
        ("FaceClustering", "CreateFigureClusteringTask"),  # seed 004
        ("FileCompression", "FileCompression"),  # reference §1.1
        ("Highlight", "Highlight"),
        ("FigureClustersMerging", "FigureClustersMerging"),
        ("SpeechRecognition", "SpeechRecognition"),
    ],
)
def test_task_id_prefix(task_type: str, prefix: str) -> None:
    assert re.fullmatch(f"{prefix}-{UUID}", ids.task_id(task_type))


def test_batch_index_announces_itself_as_file_meta_index() -> None:
    assert tasks.event_type("FileMetaBatchIndex") == "imm:FileMeta:Index"
    assert tasks.event_type("FileMetaIndex") == "imm:FileMeta:Index"


# ---- task messages ---------------------------------------------------------------------------


def _finish(db: Database, task_type: str, result: dict[str, object]) -> Task:
    with db.session() as s:
        project = projects.get_project(s, "AK1", "p")
        spec = tasks.NewTask(task_type, "q", {"Owner": "AK1", "Files": []}, dataset_name="d")
        task, _ = tasks.create(s, project, spec, request_id="R")
    with db.session() as s:
        tasks.finalize(s, task.id, tasks.SUCCEEDED, result=result, started_at=task.start_time)
        done = s.get(Task, task.id)
        assert done is not None
        s.expunge(done)
        return done


def _content(task: Task) -> dict[str, object]:
    columns = {c.name: getattr(task, c.name) for c in Task.__table__.columns}
    return tasks.message_content(columns)


def test_successful_clustering_says_success_and_others_stay_empty(
    env: tuple[Settings, Database],
) -> None:
    _, db = env
    clustering = _finish(db, "FaceClustering", {"NewClusterCount": 0})
    assert clustering.message == "Success" and _content(clustering)["Message"] == "Success"
    assert clustering.id.startswith("CreateFigureClusteringTask-")
    other = _finish(db, "FileCompression", {})
    assert other.message == "" and _content(other)["Message"] == ""


def test_index_message_carries_the_summary_and_offset_times(
    env: tuple[Settings, Database],
) -> None:
    _, db = env
    files = [{"URI": "oss://b/a.jpg", "Error": ""}, {"URI": "oss://b/x", "Error": "[E] x"}]
    summary = "1 of 2 files failed."
    done = _finish(db, "FileMetaBatchIndex", {"Success": True, "Message": summary, "Files": files})
    content = _content(done)
    assert content["Message"] == summary and content["Files"] == files
    assert OFFSET_TIME_RE.match(str(content["StartTime"]))  # "…37.787209+08:00", never "Z"
    assert OFFSET_TIME_RE.match(str(content["EndTime"]))


# ---- file fields -----------------------------------------------------------------------------


def test_file_hash_bare_orientation_zero_and_produce_time_offset(tmp_path: Path) -> None:
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(plain)
    basics = probe.basics(plain, "oss://b/plain.jpg")
    assert re.fullmatch(r"[0-9A-F]{32}", basics["FileHash"])
    assert basics["ETag"] == f'"{basics["FileHash"]}"'
    assert probe.image_fields(plain)["Orientation"] == 0
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2020:07:20 08:58:53"  # DateTimeOriginal
    exif.get_ifd(0x8769)[0x9011] = "+08:00"  # OffsetTimeOriginal
    dated = tmp_path / "dated.jpg"
    Image.new("RGB", (8, 8)).save(dated, exif=exif)
    assert probe.image_fields(dated)["ProduceTime"] == "2020-07-20T08:58:53+08:00"


# ---- TaskRequestDefinition -------------------------------------------------------------------


@pytest.fixture
def dataset(imm: ImmClient) -> str:
    imm.call("CreateProject", ProjectName="p")
    imm.call(
        "CreateDataset", ProjectName="p", DatasetName="d", TemplateId="Official:FaceManagement"
    )
    return "d"


def _definition(imm: ImmClient, task_type: str, task_id: str) -> dict[str, object]:
    task = imm.call(
        "GetTask", ProjectName="p", TaskType=task_type, TaskId=task_id, RequestDefinition=True
    )
    return dict(json.loads(task["TaskRequestDefinition"]))


def test_task_request_definition_hides_internal_fields(imm: ImmClient, dataset: str) -> None:
    created = imm.call("CreateFigureClusteringTask", ProjectName="p", DatasetName=dataset)
    assert _definition(imm, "FaceClustering", created["TaskId"]) == {
        "ProjectName": "p",
        "DatasetName": "d",
    }
    indexed = imm.call(
        "BatchIndexFileMeta",
        ProjectName="p",
        DatasetName=dataset,
        Files=[{"URI": "oss://bkt/a.jpg"}],
    )
    definition = _definition(imm, "FileMetaBatchIndex", indexed["TaskId"])
    assert set(definition) == {"ProjectName", "DatasetName", "Files"}


# ---- account ids -----------------------------------------------------------------------------


def test_access_keys_take_an_optional_account_id() -> None:
    settings = Settings(access_keys=f"AK1:s1:{ACCOUNT},AK2:s2")
    assert settings.parsed_access_keys() == {"AK1": "s1", "AK2": "s2"}
    assert settings.account_ids() == {"AK1": ACCOUNT}
    ids_ = accounts.AccountIds(settings.account_ids())
    assert ids_.of("AK1") == ACCOUNT
    derived = ids_.of("AK2")
    assert re.fullmatch(r"[1-9]\d{15}", derived) and derived == accounts.derive("AK2")
    assert accounts.derive("AK3") != derived


def test_keys_file_third_field(tmp_path: Path) -> None:
    (tmp_path / "access_keys").write_text(f"LTAIx:secret:{ACCOUNT}\n")
    settings = Settings(data_dir=tmp_path)
    assert accounts.load(settings).of("LTAIx") == ACCOUNT


def test_envelope_and_subject_show_the_account_id(
    env: tuple[Settings, Database], receiver: Receiver
) -> None:
    settings, db = env
    subscribe(db, receiver.url)
    finished_task(db)
    configured = settings.model_copy(update={"access_keys": f"AK1:secret:{ACCOUNT}"})
    drain(Dispatcher(configured, db))
    envelope = MnsEnvelope.model_validate_json(receiver.requests[0][1])
    assert (envelope.TopicOwner, envelope.Subscriber) == (ACCOUNT, ACCOUNT)
    assert MESSAGE_ID_RE.match(envelope.MessageId)
    message = ImmMessage.model_validate_json(envelope.Message)
    assert message.subject == f"acs:imm:local:{ACCOUNT}:p/imm:Task:FileCompression"
    assert EVENT_ID_RE.match(message.id)


def test_queue_endpoint_by_account_id_delivers_to_the_owners_queue(
    env: tuple[Settings, Database],
) -> None:
    settings, db = env
    account = accounts.derive("AK1")
    forms = {"by-account": account, "by-key": "AK1"}
    with db.session() as s:
        topic = topics.get_topic(s, "AK1", "imm-events")
        for name, who in forms.items():
            queues.create_queue(s, "AK1", name, {})
            topics.subscribe(
                s,
                topic,
                name,
                endpoint=topics.queue_endpoint("local", who, name),
                content_format="JSON",
                retry=None,
                allow_private=False,
            )
    finished_task(db)
    drain(Dispatcher(settings, db))
    for name in forms:
        with db.session() as s:
            got = queues.receive(s, queues.get_queue(s, "AK1", name), 0)
        assert got is not None
        body = json.loads(got.body)
        assert (body["SubscriptionName"], body["TopicOwner"]) == (name, account)


def test_owner_cannot_subscribe_into_another_owners_queue_by_account_id(
    imm: ImmClient, imm_other: ImmClient
) -> None:
    services = imm.http.app.state.services  # type: ignore[attr-defined]
    with services.db.session() as s:
        queues.create_queue(s, "AK1", "inbox", {})
    victim = accounts.derive("AK1")
    imm.call("CreateTopic", TopicName="mine")
    imm.call(
        "Subscribe",
        TopicName="mine",
        SubscriptionName="q",
        Endpoint=f"acs:mns:local:{victim}:queues/inbox",
    )
    imm_other.call("CreateTopic", TopicName="theirs")
    for who in (victim, "AK1"):
        with pytest.raises(ClientError) as info:
            imm_other.call(
                "Subscribe",
                TopicName="theirs",
                SubscriptionName="steal",
                Endpoint=f"acs:mns:local:{who}:queues/inbox",
            )
        assert info.value.code == "InvalidEndpoint"


def test_keys_command_lists_account_ids_never_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline import cli

    monkeypatch.setenv("OPENIMM_ACCESS_KEYS", f"AK1:topsecret:{ACCOUNT},AK2:other")
    assert cli.main(["--data-dir", str(tmp_path), "keys"]) == 0
    out = capsys.readouterr().out
    assert f"AK1\t{ACCOUNT}" in out and f"AK2\t{accounts.derive('AK2')}" in out
    assert "topsecret" not in out and "other" not in out
