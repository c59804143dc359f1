"""Model Hub image models end to end: the official eas-prediction client calls
``image_classification`` and ``image_similarity`` on real API and worker processes
(PostgreSQL + Redis), and the IMM SDK's generic call runs CreateImageClassificationTask."""

from __future__ import annotations

import base64
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alibabacloud_imm20200930.client import Client as ImmSdk

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
from eas_prediction.exception import PredictException

from pipeline.buckets import eas_bucket
from pipeline.client import ImmClient
from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack, launch, wait_until
from tests.e2e.test_media import PROJECT, eas, imm_call, wait_task
from tests.realservices import PostgresServer, RedisServer
from workers.models.imagenet import CARD

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.skipif(bool(CARD.missing()), reason=f"needs {CARD.install}"),
]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def b64(name: str) -> str:
    return base64.b64encode((FIXTURES / name).read_bytes()).decode()


@pytest.fixture(scope="module")
def photos(stack: Stack) -> list[str]:
    folder = stack.data_dir / "oss" / "img-in"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("coffee.jpg", "chelsea.jpg"):
        shutil.copy(FIXTURES / name, folder / name)
    return ["oss://img-in/coffee.jpg", "oss://img-in/chelsea.jpg"]


def test_classification_service_answers_in_model_hub_shape(stack: Stack, photos: list[str]) -> None:
    out = eas(stack, "image_classification", {"image": b64("coffee.jpg")})
    assert out["success"] is True and out["request_id"]
    assert out["class_name"] == "espresso" and out["class"] == 967
    probs = out["class_probs"]
    assert isinstance(probs, dict) and len(probs) == 1000
    assert abs(sum(probs.values()) - 1.0) < 1e-3 and max(probs, key=probs.get) == "espresso"
    by_url = eas(stack, "image_classification", {"input": {"url": photos[1]}})
    assert 281 <= int(by_url["class"]) <= 285  # a cat
    # the staged inline image is gone once the call returned
    staged = stack.data_dir / "oss" / eas_bucket("eas-outputs", KEY_ID) / "inputs"
    assert not staged.exists() or not any(staged.iterdir())


def test_similarity_service(stack: Stack) -> None:
    same = eas(
        stack, "image_similarity", {"imagea": b64("coffee.jpg"), "imageb": b64("coffee.jpg")}
    )
    assert same["success"] is True and same["similarity"][0] > 99 and same["l2_distance"][0] < 0.05
    other = eas(
        stack, "image_similarity", {"imagea": b64("coffee.jpg"), "imageb": b64("chelsea.jpg")}
    )
    assert other["similarity"][0] < 80 and other["l2_distance"][0] > 0.5


def test_bad_input_through_the_client(stack: Stack) -> None:
    with pytest.raises(PredictException) as info:
        eas(stack, "image_similarity", {"imagea": b64("coffee.jpg")})
    assert info.value.code == 400 and b'"success":false' in info.value.message.replace(b" ", b"")


def test_classification_task_through_the_imm_sdk(
    stack: Stack, sdk: ImmSdk, photos: list[str]
) -> None:
    from alibabacloud_imm20200930 import models as m

    sdk.create_project(m.CreateProjectRequest(project_name=PROJECT))  # this module's stack
    created = imm_call(
        stack,
        "CreateImageClassificationTask",
        ProjectName=PROJECT,
        Sources=[{"URI": u} for u in photos],
        TopK=3,
    )
    task = wait_task(sdk, created["TaskId"], "ImageClassification")
    assert task.status == "Succeeded", task.message
    body = imm_call(
        stack,
        "GetTask",
        ProjectName=PROJECT,
        TaskType="ImageClassification",
        TaskId=created["TaskId"],
    )
    coffee, cat = body["Images"]
    assert coffee["URI"] == photos[0] and coffee["ClassName"] == "espresso"
    assert len(coffee["Labels"]) == 3 and coffee["Labels"][0]["LabelName"] == "espresso"
    assert 281 <= cat["Class"] <= 285 and not {"ClassProbs", "ClassProbsFloat32"} & set(cat)


def test_a_threads_pool_batches_concurrent_requests(
    postgres_server: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """16 concurrent predict calls against a ``--pool threads`` worker: every call is its own
    task with its own answer, and forward passes were shared (some task reports BatchSize >
    1, which a model run per task never does)."""
    stack = launch(
        tmp_path,
        database_url=postgres_server.create_database("e2e_batch"),
        broker_url=redis_server.url(15),
        worker=False,
    )
    try:
        stack.start_worker("batch", "image", 8, pool="threads")
        names = ["coffee.jpg", "chelsea.jpg"] * 8
        with ThreadPoolExecutor(16) as pool:
            outs = list(
                pool.map(lambda n: eas(stack, "image_classification", {"image": b64(n)}), names)
            )
        assert [o["class_name"] == "espresso" for o in outs] == [n == "coffee.jpg" for n in names]
        imm = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))
        listed = imm.call("ListTasks", ProjectName="eas", TaskTypes=["ImageClassification"])
        assert len(listed["Tasks"]) == 16
        sizes = [
            imm.call(
                "GetTask", ProjectName="eas", TaskType="ImageClassification", TaskId=t["TaskId"]
            )["BatchSize"]
            for t in listed["Tasks"]
        ]
        assert max(sizes) > 1, sizes
    finally:
        stack.stop_all()


def test_image_management_indexing_labels_images_searchably(
    stack: Stack, sdk: ImmSdk, photos: list[str]
) -> None:
    """Official:ImageManagement runs the classifier at index time: each image gets IMM
    ``Labels`` (levels 1-3 with parents) that SimpleQuery finds on ``Labels.LabelName``."""
    from alibabacloud_imm20200930 import models as m

    sdk.create_project(m.CreateProjectRequest(project_name="gallery"))
    sdk.create_dataset(
        m.CreateDatasetRequest(
            project_name="gallery", dataset_name="pics", template_id="Official:ImageManagement"
        )
    )
    reply = sdk.batch_index_file_meta(
        m.BatchIndexFileMetaRequest(
            project_name="gallery", dataset_name="pics", files=[m.InputFile(uri=u) for u in photos]
        )
    ).body
    assert reply.event_id

    def indexed() -> m.File | None:
        files = sdk.get_file_meta(
            m.GetFileMetaRequest(project_name="gallery", dataset_name="pics", uri=photos[0])
        ).body.files
        return files[0] if files else None

    def found_files() -> list[m.File] | None:
        query = m.SimpleQuery(field="Labels.LabelName", operation="eq", value="espresso")
        body = sdk.simple_query(
            m.SimpleQueryRequest(project_name="gallery", dataset_name="pics", query=query)
        ).body
        return body.files or None

    coffee = wait_until(indexed, 120, 0.5, "coffee.jpg indexed")
    labels = {
        (label.label_name, label.label_level, label.parent_label_name) for label in coffee.labels
    }
    assert ("espresso", 3, "Food and drink") in labels and ("Food", 1, "") in labels
    hits = wait_until(found_files, 60, 0.5, "SimpleQuery by label")
    assert [f.uri for f in hits] == [photos[0]]
