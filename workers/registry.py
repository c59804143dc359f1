"""Task type → processor. Processors are imported lazily so the API never loads model code.

A processor is ``def process(ctx: JobContext) -> dict`` returning the task-specific result
that GetTask and the notification carry; it raises ``pipeline.errors.ImmError`` subclasses for
failures users should see with a Code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pipeline import jobs
from pipeline.errors import InvalidArgument
from workers.context import JobContext, Transactional

Processor = Callable[[JobContext], dict[str, Any] | Transactional]

# Derived from the job-kind declarations (pipeline.jobs): task type → "module:function".
PROCESSORS: dict[str, str] = {k.task_type: k.processor for k in jobs.KINDS}


def load(task_type: str) -> Processor:
    target = PROCESSORS.get(task_type)
    if target is None:
        raise InvalidArgument(f"No processor is registered for task type {task_type}.")
    module_name, _, attr = target.partition(":")
    processor: Processor = getattr(importlib.import_module(module_name), attr)
    return processor
