"""The job-kind declarations are complete: every action and service that submits work resolves
to a declared kind, every kind's handlers exist, every processor imports, and the tables
derived from the declarations (routes, processors, limits, events, README) agree with them."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from pipeline import jobs, queue, tasks
from pipeline.api import eas, rpc
from pipeline.api.app import create_app  # noqa: F401 (importing registers every router)
from pipeline.settings import DEFAULT_TIME_LIMITS, Settings
from workers import registry

README = Path(__file__).resolve().parents[2] / "README.md"
SUBMITTING_ACTIONS = re.compile(r"^Create\w+Task$|^(Batch)?IndexFileMeta$|^SearchImage\w+$")


def test_every_submitting_action_is_declared_and_every_declared_action_exists() -> None:
    declared = {a for k in jobs.KINDS for a in k.actions}
    registered = {name for name in rpc.ACTIONS if SUBMITTING_ACTIONS.match(name)}
    assert registered == declared


def test_every_service_is_declared_with_its_task_type() -> None:
    declared = {s: k.task_type for k in jobs.KINDS for s in k.services}
    assert {name: svc.task_type for name, svc in eas.SERVICES.items()} == declared


def test_every_processor_imports() -> None:
    for k in jobs.KINDS:
        module, _, attr = k.processor.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), k.task_type
        assert registry.load(k.task_type) is getattr(importlib.import_module(module), attr)


def test_routes_limits_and_events_are_derived() -> None:
    settings = Settings()
    for k in jobs.KINDS:
        assert queue.queue_for(k.task_type, settings) == k.queue
        assert settings.time_limit(k.task_type) == k.time_limit
        assert tasks.event_type(k.task_type) == k.event_type
    assert set(DEFAULT_TIME_LIMITS) == set(jobs.BY_TYPE)  # no leftovers (e.g. mode names)
    assert set(queue.QUEUES) == {k.queue for k in jobs.KINDS}


def test_operator_routes_override_the_declaration() -> None:
    settings = Settings(queue_routes='{"Highlight": "gpu-a"}')
    assert queue.queue_for("Highlight", settings) == "gpu-a"
    assert "gpu-a" in queue.all_queues(settings)


def test_readme_table_is_generated_from_the_declarations() -> None:
    text = README.read_text()
    start, end = "<!-- job-kinds:start -->\n", "\n<!-- job-kinds:end -->"
    assert start in text and end in text, "README lost its job-kinds markers"
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table == jobs.markdown_table(), "regenerate with: openimm kinds --markdown"
