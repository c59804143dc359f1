"""The web console through FastAPI's TestClient: sign-in and sessions, CSRF on every form,
owner scoping (two owners), and bad input answered with a message, never a 500.

People data is made the way a worker makes it: faces stored with ``files.store_indexed`` and
clustered with the real clustering job on the app's own database."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from pipeline import files, projects
from pipeline.api.app import create_app
from pipeline.client import ImmClient
from pipeline.models import Dataset
from pipeline.settings import Settings
from tests.conftest import KEY, OTHER_KEY
from workers.processors.figure_clustering import cluster_dataset

PROJECT, DATASET, BUCKET = "albums", "family", "photos-ak1"
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
RNG = np.random.default_rng(3)


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(http: TestClient, key: tuple[str, str]) -> None:
    page = http.get("/console/signin")
    assert page.status_code == 200
    reply = http.post(
        "/console/signin",
        data={"access_key_id": key[0], "access_key_secret": key[1], "csrf": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert reply.status_code == 303, reply.text


@pytest.fixture
def people(app_client: TestClient, imm: ImmClient, tmp_path: Path) -> dict[str, Any]:
    """AK1 owns a face dataset with two people (four photos of one, three of the other)."""
    imm.call("CreateProject", ProjectName=PROJECT)
    imm.call(
        "CreateDataset",
        ProjectName=PROJECT,
        DatasetName=DATASET,
        TemplateId="Official:FaceManagement",
    )
    centres = [RNG.normal(size=128).astype(np.float32) for _ in range(2)]
    centres = [c * (0.9 / np.linalg.norm(c)) for c in centres]
    photos = [("a1", 0), ("a2", 0), ("a3", 0), ("a4", 0), ("b1", 1), ("b2", 1), ("b3", 1)]
    db = app_client.app.state.services.db  # type: ignore[attr-defined]
    for name, person in photos:
        path = tmp_path / f"{name}.jpg"
        Image.new("RGB", (200, 150), (40 * person + 90, 120, 160)).save(path)
        uri = f"oss://{BUCKET}/{name}.jpg"
        imm.put_object(uri, path)
        noise = RNG.normal(size=128).astype(np.float32)
        vec = centres[person] + noise * (0.1 / np.linalg.norm(noise))
        face = files.NewFace(
            figure_id=f"fig-{name}",
            attrs={"Boundary": {"Left": 50, "Top": 30, "Width": 60, "Height": 70}},
            embedding=vec.astype(np.float32).tobytes(),
            qualified=True,
            quality=0.9,
        )
        doc = {"FileHash": name, "MediaType": "image", "ImageWidth": 200, "ImageHeight": 150}
        item = files.Indexed(uri=uri, media_type="image", size=10, doc=doc, faces=[face])
        with db.session() as s:
            project = projects.get_project(s, KEY[0], PROJECT)
            dataset = s.scalar(select(Dataset).where(Dataset.project_id == project.id))
            assert dataset is not None
            files.store_indexed(s, dataset, item)
    with db.session() as s:
        cluster_dataset(s, {"Owner": KEY[0], "ProjectName": PROJECT, "DatasetName": DATASET})
    clusters = imm.call(
        "QueryFigureClusters",
        ProjectName=PROJECT,
        DatasetName=DATASET,
        Sort="ImageCount",
        Order="desc",
    )["FigureClusters"]
    assert [c["ImageCount"] for c in clusters] == [4, 3]
    return {"big": clusters[0], "small": clusters[1]}


def person_path(cluster_id: str) -> str:
    return f"/console/people/{PROJECT}/{DATASET}/{cluster_id}"


# ---- sign-in and sessions -------------------------------------------------------------------


def test_pages_redirect_to_sign_in_without_a_session(app_client: TestClient) -> None:
    for path in ("/console/people", "/console/tasks", "/console/pools", "/console/files"):
        reply = app_client.get(path, follow_redirects=False)
        assert reply.status_code == 303
        assert reply.headers["location"].startswith("/console/signin?next=%2F")


def test_partial_refresh_without_a_session_is_401_not_a_page(app_client: TestClient) -> None:
    reply = app_client.get("/console/tasks/rows", headers={"x-console-partial": "1"})
    assert reply.status_code == 401


def test_a_wrong_secret_is_refused_and_never_echoed(app_client: TestClient) -> None:
    page = app_client.get("/console/signin")
    reply = app_client.post(
        "/console/signin",
        data={"access_key_id": KEY[0], "access_key_secret": "guess-42", "csrf": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert reply.status_code == 401
    assert "not valid" in reply.text
    assert "guess-42" not in reply.text
    assert "openimm_console=" not in reply.headers.get("set-cookie", "")
    assert app_client.get("/console/people", follow_redirects=False).status_code == 303


def test_the_session_cookie_is_httponly_strict_and_holds_no_secret(app_client: TestClient) -> None:
    page = app_client.get("/console/signin")
    reply = app_client.post(
        "/console/signin",
        data={"access_key_id": KEY[0], "access_key_secret": KEY[1], "csrf": csrf_of(page.text)},
        follow_redirects=False,
    )
    cookie = next(
        c for c in reply.headers.get_list("set-cookie") if c.startswith("openimm_console=")
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert KEY[1] not in cookie
    home = app_client.get("/console/people")
    assert home.status_code == 200 and KEY[0] in home.text and KEY[1] not in home.text


def test_a_forged_or_tampered_cookie_is_no_session(app_client: TestClient) -> None:
    sign_in(app_client, KEY)
    real = app_client.cookies.get("openimm_console", path="/console")
    assert real
    owner, expiry, nonce, mac = real.split(".")
    other_owner = "QUsy"  # base64 of "AK2", with AK1's MAC
    for forged in (f"{other_owner}.{expiry}.{nonce}.{mac}", f"{owner}.{expiry}.{nonce}.{'0' * 64}"):
        app_client.cookies.clear()
        app_client.cookies.set("openimm_console", forged, path="/console")
        assert app_client.get("/console/people", follow_redirects=False).status_code == 303


def test_sign_in_needs_its_form_token(app_client: TestClient) -> None:
    reply = app_client.post(
        "/console/signin",
        data={"access_key_id": KEY[0], "access_key_secret": KEY[1]},
        follow_redirects=False,
    )
    assert reply.status_code == 403


def test_dev_mode_signs_in_by_itself(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "dev", broker_url="memory://", dev_mode=True)
    with TestClient(create_app(settings)) as http:
        page = http.get("/console/people")
        assert page.status_code == 200
        assert "dev mode" in page.text


# ---- CSRF -----------------------------------------------------------------------------------


def test_every_form_needs_the_csrf_token(app_client: TestClient, people: dict[str, Any]) -> None:
    sign_in(app_client, KEY)
    big = people["big"]["ObjectId"]
    forms = [
        (f"{person_path(big)}/rename", {"name": "Eve", "lock": "0"}),
        (f"{person_path(big)}/merge", {"other": people["small"]["ObjectId"]}),
        (f"{person_path(big)}/move", {"uri": "x", "figure": "y", "target": "z"}),
        ("/console/pools/control", {"action": "grow", "worker": "w", "value": "1"}),
        ("/console/signout", {}),
    ]
    for path, data in forms:
        for token in (None, "forged"):
            body = dict(data, **({"csrf": token} if token else {}))
            reply = app_client.post(path, data=body, follow_redirects=False)
            assert reply.status_code == 403, path
            assert "CSRF" in reply.text
    cluster = app_client.get(person_path(big))
    assert cluster.status_code == 200 and "Eve" not in cluster.text


# ---- people ---------------------------------------------------------------------------------


def test_rename_through_update_figure_cluster_with_its_lock(
    app_client: TestClient, imm: ImmClient, people: dict[str, Any]
) -> None:
    sign_in(app_client, KEY)
    big = people["big"]["ObjectId"]
    page = app_client.get(person_path(big))
    token, lock = csrf_of(page.text), people["big"]["MetaLockVersion"]
    reply = app_client.post(
        f"{person_path(big)}/rename", data={"csrf": token, "name": "Grandma", "lock": str(lock)}
    )
    assert reply.status_code == 200 and "Renamed to Grandma" in reply.text
    got = imm.call("GetFigureCluster", ProjectName=PROJECT, DatasetName=DATASET, ObjectId=big)
    assert got["FigureCluster"]["Name"] == "Grandma"
    stale = app_client.post(
        f"{person_path(big)}/rename", data={"csrf": token, "name": "Nan", "lock": str(lock)}
    )
    assert stale.status_code == 200 and "StatusConflict" in stale.text  # a message, not a 500
    grid = app_client.get("/console/people")
    assert "Grandma" in grid.text and "4 photos" in grid.text and "3 photos" in grid.text


def test_move_a_face_out_of_a_person(
    app_client: TestClient, imm: ImmClient, people: dict[str, Any]
) -> None:
    sign_in(app_client, KEY)
    big = people["big"]["ObjectId"]
    page = app_client.get(person_path(big))
    fig = re.search(r'name="figure" value="([^"]+)"', page.text)
    uri = re.search(r'name="uri" value="([^"]+)"', page.text)
    assert fig and uri
    reply = app_client.post(
        f"{person_path(big)}/move",
        data={
            "csrf": csrf_of(page.text),
            "uri": uri.group(1),
            "figure": fig.group(1),
            "target": files.INDEPENDENT,
        },
    )
    assert reply.status_code == 200 and "Face moved" in reply.text
    got = imm.call("GetFigureCluster", ProjectName=PROJECT, DatasetName=DATASET, ObjectId=big)
    assert got["FigureCluster"]["ImageCount"] == 3


def test_face_crops_are_served_and_cached(app_client: TestClient, people: dict[str, Any]) -> None:
    sign_in(app_client, KEY)
    cover = people["big"]["Cover"]["URI"]
    for _ in range(2):
        reply = app_client.get("/console/image", params={"uri": cover, "box": "50,30,60,70"})
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg"
    cache = app_client.app.state.services.settings.resolved_data_dir / "console-cache"  # type: ignore[attr-defined]
    assert len(list(cache.glob("*.jpg"))) == 1


# ---- two owners -----------------------------------------------------------------------------


def test_owner_b_sees_nothing_of_owner_a(
    app_client: TestClient, imm: ImmClient, people: dict[str, Any]
) -> None:
    task = imm.call("CreateDiagnosticTask", ProjectName=PROJECT, Mode="Noop")["TaskId"]
    sign_in(app_client, OTHER_KEY)
    grid = app_client.get("/console/people")
    assert grid.status_code == 200
    assert DATASET not in grid.text and people["big"]["ObjectId"] not in grid.text
    big = people["big"]["ObjectId"]
    assert app_client.get(person_path(big)).status_code == 404
    assert app_client.get(f"/console/tasks/{PROJECT}/{task}").status_code == 404
    listing = app_client.get("/console/tasks")
    assert task not in listing.text
    assert app_client.get(f"/console/tasks?project={PROJECT}").status_code == 404
    view = app_client.get(
        "/console/files/view", params={"project": PROJECT, "dataset": DATASET, "uri": "oss://x/y"}
    )
    assert view.status_code == 404
    image = app_client.get("/console/image", params={"uri": people["big"]["Cover"]["URI"]})
    assert image.status_code in (403, 404)
    page = app_client.get(person_path(big))
    token = csrf_of(page.text)
    rename = app_client.post(f"{person_path(big)}/rename", data={"csrf": token, "name": "Mine now"})
    assert "ResourceNotFound" in rename.text
    got = imm.call("GetFigureCluster", ProjectName=PROJECT, DatasetName=DATASET, ObjectId=big)
    assert got["FigureCluster"]["Name"] == ""


def test_pools_are_for_operators_only_on_a_multi_key_server(app_client: TestClient) -> None:
    sign_in(app_client, KEY)
    reply = app_client.get("/console/pools")
    assert reply.status_code == 403 and "OPENIMM_CONSOLE_OPERATORS" in reply.text


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/console/tasks?status=Bogus", "Status must be one of"),
        ("/console/tasks?since=1y", "since must be"),
        ("/console/tasks?tag=novalue", "key=value"),
        ("/console/tasks?type=Nope", "Unknown task type"),
        ("/console/files?query=%7Bnot+json", "not JSON"),
        ("/console/files?query=%5B1%5D", "JSON object"),
        ("/console/image?uri=oss://photos-ak1/a1.jpg&box=1,2,3", "box must be"),
        ("/console/image?uri=not-a-uri", "oss://"),
        ("/console/people?project=nope&dataset=none", "No dataset"),
        ("/console/media/playground/no-such-service", "No EAS service"),
    ],
)
def test_bad_input_is_a_clear_message_not_a_500(
    app_client: TestClient, people: dict[str, Any], path: str, needle: str
) -> None:
    sign_in(app_client, KEY)
    reply = app_client.get(path)
    assert 400 <= reply.status_code < 500, reply.text
    assert needle in reply.text
    assert "text/html" in reply.headers["content-type"]


def test_bad_form_values_come_back_as_a_notice(
    app_client: TestClient, people: dict[str, Any]
) -> None:
    sign_in(app_client, KEY)
    big = people["big"]["ObjectId"]
    token = csrf_of(app_client.get(person_path(big)).text)
    cases = [
        ("rename", {"name": "   "}, "1 to 256 characters"),
        ("rename", {"name": "x", "lock": "abc"}, "MetaLockVersion"),
        ("merge", {"other": big}, "another person"),
        ("move", {"uri": "oss://photos-ak1/a1.jpg", "figure": "nope", "target": big}, "figure"),
    ]
    for form, data, needle in cases:
        reply = app_client.post(f"{person_path(big)}/{form}", data={"csrf": token, **data})
        assert reply.status_code == 200, reply.text
        assert needle in reply.text, (form, data)


def test_a_task_page_shows_request_and_attempts(app_client: TestClient, imm: ImmClient) -> None:
    imm.call("CreateProject", ProjectName=PROJECT)
    task = imm.call(
        "CreateDiagnosticTask", ProjectName=PROJECT, Mode="Sleep", Seconds=3, Tags={"run": "a"}
    )["TaskId"]
    sign_in(app_client, KEY)
    page = app_client.get(f"/console/tasks/{PROJECT}/{task}")
    assert page.status_code == 200
    assert '"Mode": "Sleep"' in html.unescape(page.text) and 'id="attempts">0<' in page.text
    rows = app_client.get("/console/tasks/rows", params={"tag": "run=a", "status": "Running"})
    assert task in rows.text
    none = app_client.get("/console/tasks/rows", params={"tag": "run=b"})
    assert task not in none.text and "No tasks match" in none.text
    assert app_client.get(f"/console/tasks/{PROJECT}/NoSuch-{'0' * 36}").status_code == 404


def test_files_search_and_a_files_page(
    app_client: TestClient, imm: ImmClient, people: dict[str, Any]
) -> None:
    sign_in(app_client, KEY)
    big = people["big"]
    imm.call(
        "UpdateFigureCluster",
        ProjectName=PROJECT,
        DatasetName=DATASET,
        FigureCluster={"ObjectId": big["ObjectId"], "Name": "Ada"},
    )
    where = {"project": PROJECT, "dataset": DATASET}
    every = app_client.get("/console/files", params=where)
    assert every.status_code == 200 and every.text.count('class="card photo"') == 7
    one = app_client.get("/console/files", params={**where, "text": "b2.jpg"})
    assert one.text.count('class="card photo"') == 1 and "oss://photos-ak1/b2.jpg" in one.text
    page = app_client.get("/console/files/view", params={**where, "uri": big["Cover"]["URI"]})
    assert page.status_code == 200 and ">Ada</a>" in page.text


# ---- media: playgrounds and renderers -------------------------------------------------------


def test_every_declared_service_has_a_playground(app_client: TestClient) -> None:
    from pipeline import jobs
    from pipeline.api import eas

    sign_in(app_client, KEY)
    page = app_client.get("/console/media")
    declared = [s for k in jobs.KINDS for s in k.services if s in eas.SERVICES]
    assert declared and all(f"/console/media/playground/{s}" in page.text for s in declared)
    for name in declared:
        reply = app_client.get(f"/console/media/playground/{name}")
        assert reply.status_code == 200 and 'type="file"' in reply.text


def test_a_playground_run_shows_the_answer_and_its_rendering(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.api import eas

    seen: dict[str, Any] = {}

    def fake_run(svc: Any, caller: Any, spec: Any, body: dict[str, Any]) -> dict[str, Any]:
        seen.update(owner=caller.owner, body=body, task_type=spec.task_type)
        return {"success": True, "class_probs": {"tabby": 0.7, "lynx": 0.2}, "class": 281}

    monkeypatch.setattr(eas, "run", fake_run)
    sign_in(app_client, KEY)
    page = app_client.get("/console/media/playground/image_classification")
    with (Path(__file__).resolve().parents[1] / "fixtures" / "chelsea.jpg").open("rb") as image:
        reply = app_client.post(
            "/console/media/playground/image_classification",
            data={"csrf": csrf_of(page.text)},
            files={"file": ("cat.jpg", image, "image/jpeg")},
        )
    assert reply.status_code == 200, reply.text
    assert seen["owner"] == KEY[0] and seen["task_type"] == "ImageClassification"
    staged = seen["body"]["input"]["url"]
    assert staged.startswith("oss://eas-outputs-") and "/console/" in staged
    assert 'id="render-labels"' in reply.text and "tabby" in reply.text
    empty = app_client.post(
        "/console/media/playground/image_classification", data={"csrf": csrf_of(page.text)}
    )
    assert empty.status_code == 400 and "Choose a file" in empty.text


def test_renderers_recognise_result_shapes() -> None:
    from pipeline.console import media, plots

    drawn = media.renderings({"class_probs": {"a": 0.1, "b": 0.9}, "similarity": [0.5]})
    assert drawn["labels"][0] == ("b", 0.9) and ("similarity", 0.5) in drawn["scalars"]
    assert media.renderings({"1500000": "Hi.", "0": "Yes."})["transcript"] == [
        (0.0, "Yes."),
        (1.5, "Hi."),
    ]
    assert "media" in media.renderings({"oss_path": "oss://b/k.mp4", "result": ""})
    boxes = media.renderings({"Objects": [{"Boundary": {"Left": 1, "Top": 2}}]})
    assert boxes["boxes"][0]["Boundary"]["Top"] == 2
    plot = plots.score_plot([0, 1, 2, 3], [0.1, 0.5, 0.9, 0.2], [(1.0, 2.0)])
    assert len(plot.lines) == 1 and plot.windows[0][2:] == (1.0, 2.0)


def test_guessing_secrets_is_throttled(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.console import auth

    monkeypatch.setattr(auth, "_failures", type(auth._failures)(auth._failures.default_factory))
    token = csrf_of(app_client.get("/console/signin").text)
    codes = [
        app_client.post(
            "/console/signin",
            data={"access_key_id": KEY[0], "access_key_secret": f"guess-{n}", "csrf": token},
        ).status_code
        for n in range(auth.MAX_FAILURES + 1)
    ]
    assert codes == [401] * auth.MAX_FAILURES + [429]
    right = app_client.post(
        "/console/signin",
        data={"access_key_id": KEY[0], "access_key_secret": KEY[1], "csrf": token},
    )
    assert right.status_code == 429  # even the right secret waits out the window


def test_objects_are_served_as_media_never_as_pages(
    app_client: TestClient, imm: ImmClient, tmp_path: Path
) -> None:
    page = tmp_path / "evil.html"
    page.write_text("<script>fetch('/console/people')</script>")
    imm.put_object(f"oss://{BUCKET}/evil.html", page)
    imm.put_object(f"oss://{BUCKET}/evil.svg", page)
    sign_in(app_client, KEY)
    for name in ("evil.html", "evil.svg"):
        reply = app_client.get("/console/object", params={"uri": f"oss://{BUCKET}/{name}"})
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/octet-stream"
        assert reply.headers["content-disposition"] == "attachment"
        assert "sandbox" in reply.headers["content-security-policy"]


def test_moving_a_persons_last_face_out_lands_on_the_grid(
    app_client: TestClient, people: dict[str, Any]
) -> None:
    sign_in(app_client, KEY)
    small = people["small"]["ObjectId"]
    reply = app_client.get(person_path(small))
    for _ in range(3):
        fig = re.search(r'name="figure" value="([^"]+)"', reply.text)
        uri = re.search(r'name="uri" value="([^"]+)"', reply.text)
        assert fig and uri
        form = {"uri": uri.group(1), "figure": fig.group(1), "target": files.INDEPENDENT}
        reply = app_client.post(
            f"{person_path(small)}/move", data={"csrf": csrf_of(reply.text), **form}
        )
        assert reply.status_code == 200
    assert "no other face" in reply.text and 'id="people-grid"' in reply.text
    assert small not in reply.text
