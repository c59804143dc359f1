"""The workers/ layout (README "Adding a job kind"): processors write no SQL, every declared
processor lives in ``workers.processors``, every model engine keeps its card next to it."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline import jobs
from workers import models
from workers.models import whisper_base
from workers.models.base import InferenceModel

ROOT = Path(__file__).resolve().parents[2]
PROCESSORS = sorted((ROOT / "workers" / "processors").glob("*.py"))
# Imports a processor may not make at run time (type-only imports under TYPE_CHECKING are fine).
FORBIDDEN_IMPORTS = ("sqlalchemy", "pipeline.models", "pipeline.db")
# Session/connection methods that run or stage SQL, whatever the receiver is called.
SQL_METHODS = {"execute", "scalars", "scalar", "add_all", "flush", "begin_nested", "query"}


def _type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    guarded: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                guarded |= set(ast.walk(child))
    return guarded


def violations(source: str) -> list[str]:
    """What in ``source`` touches the database directly (empty when nothing does)."""
    tree = ast.parse(source)
    guarded = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if node in guarded:
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            bad = [n for n in names if n.startswith(FORBIDDEN_IMPORTS)]
            found += [f"line {node.lineno}: imports {n}" for n in bad[:1]]
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "session":
                found.append(f"line {node.lineno}: uses session.{node.attr}")
            elif node.attr in SQL_METHODS:
                found.append(f"line {node.lineno}: calls .{node.attr}")
    return found


@pytest.mark.parametrize("path", PROCESSORS, ids=lambda p: p.name)
def test_processors_write_no_sql(path: Path) -> None:
    # Given a processor module, then it only hands its session to pipeline services
    assert violations(path.read_text()) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "from sqlalchemy import select\n",
        "import sqlalchemy.orm\n",
        "from pipeline.models import Figure\n",
        "def f(session):\n    return session.get(1)\n",
        "def f(db):\n    db.execute('DELETE FROM figures')\n",
    ],
)
def test_the_check_catches_direct_database_use(snippet: str) -> None:
    assert violations(snippet)


def test_type_only_imports_and_passing_the_session_on_are_allowed() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from pipeline import figure_store\n"
        "if TYPE_CHECKING:\n    from sqlalchemy.orm import Session\n"
        "def f(session: 'Session') -> object:\n    return figure_store.dataset_faces(session, 1)\n"
    )
    assert violations(source) == []


def test_every_declared_processor_is_in_workers_processors() -> None:
    outside = [k.processor for k in jobs.KINDS if not k.processor.startswith("workers.processors.")]
    assert outside == []


def test_every_processor_module_serves_a_declared_kind() -> None:
    declared = {k.processor.partition(":")[0] for k in jobs.KINDS}
    helpers = {"sr_video"}  # the super-resolution processor's media pipeline
    modules = {f"workers.processors.{p.stem}" for p in PROCESSORS if p.stem != "__init__"}
    assert modules - declared == {f"workers.processors.{h}" for h in helpers}


def test_every_engine_with_weights_has_its_card_in_its_own_module() -> None:
    cards = models.cards()
    assert len({c.name for c in cards}) == len(cards)
    listed = [*cards, whisper_base.CARD]  # whisper-base: the store lists it from the data dir
    for engine in InferenceModel.__subclasses__():
        assert engine in models.engines() and engine.card in listed, engine.__name__


OLD_IMPORTS = """\
from workers import compression, diagnostic, indexing, figure_clustering, face_search
from workers import highlights, superres, speech, image_models, sr_video, runtime
from workers import ffmpeg_io, imaging, probe, faces, headpose, asr, clustering
from workers import sr_model, models_install
from workers import models_install as whisper
from workers.figure_clustering import cluster_dataset, merge_clusters
from workers.sr_model import SCALES
"""


@pytest.mark.skipif(shutil.which("sed") is None, reason="needs sed")
def test_the_layout_sed_script_maps_every_old_module() -> None:
    # Given imports written against the flat layout
    script = ROOT / "scripts" / "workers_layout.sed"
    # When the mapping script rewrites them
    new = subprocess.run(
        ["sed", "-E", "-f", str(script)], input=OLD_IMPORTS, capture_output=True, text=True
    ).stdout
    # Then every line imports, under its old name
    namespace: dict[str, object] = {}
    exec(new, namespace)
    old_names = [
        "compression",
        "asr",
        "sr_model",
        "models_install",
        "whisper",
        "merge_clusters",
        "SCALES",
    ]
    assert all(name in namespace for name in old_names)
    assert "workers import faces" not in new and "workers.sr_model" not in new
