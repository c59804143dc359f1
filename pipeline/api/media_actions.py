"""Media model jobs (issue 5): CreateHighlightTask (IMM shape) and the Model Hub (EAS)
services that run the same processors. Inputs are validated here so nothing is queued that a
worker could only fail on."""

from __future__ import annotations

import re
import uuid
from typing import Any

from pipeline import jobs
from pipeline.api import eas
from pipeline.api.rpc import action
from pipeline.api.services import Caller, Services
from pipeline.api.submission import (
    COMMON_TASK_PARAMS,
    check_target,
    check_uri,
    common_params,
    submit,
)
from pipeline.buckets import eas_bucket
from pipeline.errors import InvalidArgument, InvalidParameter
from pipeline.models import Task
from pipeline.params import Params, bounded_int, parse_int

# The request contracts are the job-kind declarations' (pipeline.jobs), shared with the workers.
HIGHLIGHT = jobs.HIGHLIGHT_SPEC
MAX_HIGHLIGHT_SOURCES = HIGHLIGHT.max_sources
HIGHLIGHT_CONTAINERS = HIGHLIGHT.choices["Container"]


def play_duration_seconds(value: Any) -> float | None:
    """Model Hub ``play_duration``: microseconds (number or numeric string); only the first
    N µs are processed. Absent/empty → the whole input."""
    if value in (None, ""):
        return None
    try:
        micros = bounded_int(value) if isinstance(value, int) else parse_int(str(value))
        if micros is None:
            raise ValueError("out of range")
    except ValueError:
        raise InvalidArgument(
            f"play_duration must be an integer of microseconds: {value!r}"
        ) from None
    if micros <= 0:
        raise InvalidArgument("play_duration must be a positive number of microseconds.")
    return micros / 1_000_000


def _highlight_output(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    output = p.json("Output", dict, required=True)
    known = {"URI", "Container", "MaxDuration", "TargetDuration", "Video", "Audio", "Segment"}
    unknown = set(output) - known - {"Speed"}
    if unknown:
        raise InvalidParameter("Output", f"Unknown field(s): {', '.join(sorted(unknown))}.")
    uri = output.get("URI")
    if not isinstance(uri, str) or not uri:
        raise InvalidParameter("Output", "Output.URI is required.")
    check_target(svc, caller, uri)
    container = output.get("Container") or "mp4"
    if container not in HIGHLIGHT_CONTAINERS:
        raise InvalidParameter(
            "Output", f"Container must be one of {', '.join(HIGHLIGHT_CONTAINERS)}."
        )
    # The highlight's length: TargetDuration, else MaxDuration, else 5 s.
    duration = output.get("TargetDuration") or output.get("MaxDuration")
    if duration is not None and not (isinstance(duration, int | float) and 0 < duration <= 600):
        raise InvalidParameter("Output", "TargetDuration/MaxDuration must be 1-600 seconds.")
    return {"URI": uri, "Container": container, "MaxDuration": duration}


def _sources(svc: Services, caller: Caller, p: Params) -> list[dict[str, str]]:
    sources = p.json("Sources", list, required=True)
    if not sources or len(sources) > MAX_HIGHLIGHT_SOURCES:
        raise InvalidParameter("Sources", f"Expected 1 to {MAX_HIGHLIGHT_SOURCES} videos.")
    for src in sources:
        if not isinstance(src, dict) or not isinstance(src.get("URI"), str):
            raise InvalidParameter("Sources", "Every source needs a URI string.")
        check_uri(svc, caller, src["URI"], "Sources")
    return [{"URI": s["URI"]} for s in sources]


@action(
    "CreateHighlightTask",
    COMMON_TASK_PARAMS + " Type Mode Sources Highlight Output Edit",
)
def create_highlight_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    """IMM's request shape. Type ``Retrieval`` (extract the highlight) is implemented;
    ``Concat``/``Compose`` are refused. ``Highlight.Content`` (a topic) is accepted and
    recorded but does not steer the signal-based scoring; ``Edit`` is refused."""
    project_name = p.name("ProjectName")
    kind = p.str("Type", required=True)
    if kind != "Retrieval":
        raise InvalidParameter("Type", "Only Retrieval is supported.")
    mode = p.choice("Mode", HIGHLIGHT.choices["Mode"], default=HIGHLIGHT.default("Mode"))
    if p.str("Edit"):
        raise InvalidParameter("Edit", "Edit is only used by Compose, which is not supported.")
    topic = (p.json("Highlight", dict) or {}).get("Content", "")
    request = {
        "Type": kind,
        "Mode": mode,
        "Sources": _sources(svc, caller, p),
        "Output": _highlight_output(svc, caller, p),
        "Highlight": {"Content": str(topic)[:100]},
    }
    return submit(svc, caller, project_name, "Highlight", request, common_params(p))


# ---- Model Hub services ---------------------------------------------------------------------


def _input_url(body: dict[str, Any], svc: Services, caller: Caller) -> tuple[str, float | None]:
    data = body.get("input")
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not data["url"]:
        raise InvalidArgument('Expected {"input": {"url": "oss://…|file://…|http(s)://…"}}.')
    unknown = set(data) - {"url", "play_duration"}
    if unknown:
        raise InvalidArgument(f"Unknown input field(s): {', '.join(sorted(unknown))}.")
    check_uri(svc, caller, data["url"], "url")
    return data["url"], play_duration_seconds(data.get("play_duration"))


def _output_uri(svc: Services, caller: Caller, service: str, suffix: str) -> str:
    """A fresh object in the caller's own output bucket (one per owner, see ``eas_bucket``)."""
    bucket = eas_bucket(svc.settings.eas_output_bucket, caller.owner)
    return f"oss://{bucket}/{service}/{uuid.uuid4().hex}{suffix}"


def _highlight_request(body: dict[str, Any], svc: Services, caller: Caller) -> dict[str, Any]:
    url, seconds = _input_url(body, svc, caller)
    return {
        "Type": "Retrieval",
        "Mode": "Average",
        "Sources": [{"URI": url}],
        "Output": {"URI": _output_uri(svc, caller, "video_highlight", ".mp4"), "Container": "mp4"},
        "MaxSeconds": seconds,
    }


def oss_output(task: Task) -> dict[str, Any]:
    """Model Hub output of the video services: where the result was written."""
    uri = (task.result.get("Output") or {}).get("URI") or task.result.get("TargetURI", "")
    return {"oss_path": uri, "result": ""}


eas.register("video_highlight", eas.Service("Highlight", _highlight_request, oss_output))


# ---- super-resolution and speech (openimm extensions, same task model) ----------------------

SR_SUFFIXES = jobs.SR_SPEC.target_suffixes()
TRANSCRIPT_SUFFIXES = jobs.ASR_SPEC.target_suffixes()
LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def _project_and_source(svc: Services, caller: Caller, p: Params) -> tuple[str, str]:
    source = p.str("SourceURI", required=True)
    check_uri(svc, caller, source, "SourceURI")
    return p.name("ProjectName"), source


def _target(
    svc: Services, caller: Caller, p: Params, suffixes: tuple[str, ...], *, required: bool
) -> str:
    target = p.str("TargetURI", required=required)
    if target:
        _, key = check_target(svc, caller, target)
        if not key.lower().endswith(suffixes):
            raise InvalidParameter("TargetURI", f"It must end in one of {', '.join(suffixes)}.")
    return target


@action("CreateVideoSuperResolutionTask", COMMON_TASK_PARAMS + " SourceURI TargetURI Scale")
def create_video_super_resolution_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name, source = _project_and_source(svc, caller, p)
    scales = jobs.SR_SPEC.choices["Scale"]
    scale = p.int("Scale", default=jobs.SR_SPEC.default("Scale"))
    if scale not in scales:
        raise InvalidParameter("Scale", f"It must be one of {', '.join(map(str, scales))}.")
    request = {
        "SourceURI": source,
        "TargetURI": _target(svc, caller, p, SR_SUFFIXES, required=True),
        "Scale": scale,
    }
    return submit(svc, caller, project_name, "VideoSuperResolution", request, common_params(p))


def _language(p: Params) -> str:
    language = p.str("Language", default="en")
    if not LANGUAGE_RE.match(language):
        raise InvalidParameter("Language", "Use a BCP-47 tag such as en, en-US or zh-CN.")
    return language


@action("CreateSpeechRecognitionTask", COMMON_TASK_PARAMS + " SourceURI TargetURI Language Engine")
def create_speech_recognition_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name, source = _project_and_source(svc, caller, p)
    request = {
        "SourceURI": source,
        "TargetURI": _target(svc, caller, p, TRANSCRIPT_SUFFIXES, required=False),
        "Language": _language(p),
        "Engine": p.choice("Engine", jobs.ASR_SPEC.choices["Engine"]),
    }
    return submit(svc, caller, project_name, "SpeechRecognition", request, common_params(p))


def _micros(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1_000_000)


def _sr_request(body: dict[str, Any], svc: Services, caller: Caller) -> dict[str, Any]:
    url, seconds = _input_url(body, svc, caller)
    return {
        "SourceURI": url,
        "TargetURI": _output_uri(svc, caller, "video_super_resolution", ""),
        "AutoSuffix": True,
        "Scale": 2,
        "MaxMicroseconds": _micros(seconds),
    }


def _asr_request(body: dict[str, Any], svc: Services, caller: Caller) -> dict[str, Any]:
    url, seconds = _input_url(body, svc, caller)
    return {"SourceURI": url, "Language": "en", "MaxMicroseconds": _micros(seconds)}


def _asr_output(task: Task) -> dict[str, Any]:
    return dict(task.result.get("Transcript") or {})


eas.register("video_super_resolution", eas.Service("VideoSuperResolution", _sr_request, oss_output))
eas.register("asr", eas.Service("SpeechRecognition", _asr_request, _asr_output))
