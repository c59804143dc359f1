"""The job kinds: each is declared once, here.

A :class:`JobKind` names a task type, the IMM ``Create…Task`` action(s) and EAS service(s)
that submit it, its queue, time limit, notification event type, whether ``ListTasks`` shows
it unasked, the request contract shared by the API (validation) and the worker (processing),
and its processor. Routing (``pipeline.queue``), the processor registry
(``workers.registry``), time limits (``Settings.time_limit``) and event names
(``pipeline.tasks.event_type``) are derived from :data:`KINDS`; ``tests/unit/test_jobs.py``
checks that every declared action and service has a handler, that every handler's kind is
declared, and that every processor imports. README "Adding a job kind" is the recipe.

This module imports nothing but the standard library: settings, the API and the workers all
read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

DEFAULT_QUEUE = "default"
DEFAULT_TIME_LIMIT = 3600  # seconds; a task past its limit ends Failed/TaskTimeLimitExceeded

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
TRANSCRIPT_SUFFIXES = (".json", ".srt", ".vtt")
HIGHLIGHT_CONTAINERS = ("mp4", "mov", "mkv", "ts", "flv")


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class RequestSpec:
    """What a kind accepts, read by both the API (refuse before queueing) and the worker.

    ``targets``: input media kind (``image``, ``video``, ``audio`` or ``*``) → the suffixes a
    TargetURI may end in for it. ``choices``: parameter → allowed values, the first being the
    default. ``max_sources``: how many inputs one request may name.
    """

    media: frozenset[str] = frozenset()
    targets: Mapping[str, tuple[str, ...]] = field(default_factory=_frozen)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=_frozen)
    max_sources: int = 1
    max_pixels: int = 0  # inline images above this are refused (0: the global image limit)

    def target_suffixes(self, media: str = "") -> tuple[str, ...]:
        """Suffixes a TargetURI may end in for ``media`` (all of them when empty)."""
        if media:
            return self.targets.get(media, ()) + self.targets.get("*", ())
        return tuple(dict.fromkeys(s for suffixes in self.targets.values() for s in suffixes))

    def default(self, name: str) -> Any:
        return self.choices[name][0]


@dataclass(frozen=True)
class Batching:
    """Dynamic batching of a kind's single-input tasks inside a worker process (Triton's
    ``max_batch_size`` / ``max_queue_delay``); effective in ``--pool threads`` pools."""

    max_size: int = 16
    max_delay_ms: float = 5.0


@dataclass(frozen=True)
class JobKind:
    """One job kind (see the module docstring)."""

    task_type: str
    queue: str
    processor: str  # "module:function", imported lazily in the worker only
    actions: tuple[str, ...] = ()  # IMM RPC actions that create it
    services: tuple[str, ...] = ()  # EAS (Model Hub) services that run it
    time_limit: int = DEFAULT_TIME_LIMIT
    event: str = ""  # notification type; "" → imm:Task:<task_type>
    listed: bool = True  # False: ListTasks shows it only when TaskTypes names it
    spec: RequestSpec = field(default_factory=RequestSpec)
    batching: Batching | None = None  # None: every task runs the model on its own
    task_id_prefix: str = ""  # "" → the task type (IMM's own samples differ for some types)
    success_message: str = ""  # GetTask/notification Message of a Succeeded task

    @property
    def event_type(self) -> str:
        return self.event or f"imm:Task:{self.task_type}"


SR_SPEC = RequestSpec(
    media=frozenset({"image", "video"}),
    targets=_frozen({"image": IMAGE_SUFFIXES, "video": VIDEO_SUFFIXES}),
    choices=_frozen({"Scale": (2, 3, 4)}),
)
ASR_SPEC = RequestSpec(
    media=frozenset({"audio", "video"}),
    targets=_frozen({"*": TRANSCRIPT_SUFFIXES}),
    choices=_frozen({"Engine": ("whisper", "sphinx")}),  # absent → the best installed
)
HIGHLIGHT_SPEC = RequestSpec(
    media=frozenset({"video"}),
    choices=_frozen(
        {"Type": ("Retrieval",), "Mode": ("Average", "Scene"), "Container": HIGHLIGHT_CONTAINERS}
    ),
    max_sources=10,
)

# Model Hub image services take images inline (base64) or by URI; the API stages inline
# images in the caller's EAS bucket so the task request stays small. The models see 224 px:
# inline images above 25 MP are refused (a phone photo is 12-24 MP).
IMAGE_SERVICE_MAX_PIXELS = 25_000_000
IMAGE_SPEC = RequestSpec(
    media=frozenset({"image"}), max_sources=100, max_pixels=IMAGE_SERVICE_MAX_PIXELS
)
SIMILARITY_SPEC = RequestSpec(
    media=frozenset({"image"}), max_sources=2, max_pixels=IMAGE_SERVICE_MAX_PIXELS
)

KINDS: tuple[JobKind, ...] = (
    JobKind(
        "FileCompression",
        "archive",
        "workers.processors.compression:process",
        actions=("CreateFileCompressionTask",),
        spec=RequestSpec(max_sources=100),
    ),
    JobKind(
        "Diagnostic",
        DEFAULT_QUEUE,
        "workers.processors.diagnostic:process",
        actions=("CreateDiagnosticTask",),
        services=("diagnostic",),
    ),
    JobKind(
        "FileMetaIndex",
        "index",
        "workers.processors.indexing:process",
        actions=("IndexFileMeta",),
        event="imm:FileMeta:Index",
        listed=False,
    ),
    JobKind(
        "FileMetaBatchIndex",
        "index",
        "workers.processors.indexing:process",
        actions=("BatchIndexFileMeta",),
        event="imm:FileMeta:Index",  # seed 004's sample of a BatchIndexFileMeta call
        listed=False,
        spec=RequestSpec(max_sources=100),
    ),
    JobKind(
        "FaceClustering",
        "cluster",
        "workers.processors.figure_clustering:process",
        actions=("CreateFigureClusteringTask",),
        event="imm:Task:FigureClustering",  # IMM's name for this type's event (reference §1.2)
        task_id_prefix="CreateFigureClusteringTask",  # seed 004's TaskId
        success_message="Success",  # seed 004's GetTask/notification Message
    ),
    JobKind(
        "FigureClustersMerging",
        "cluster",
        "workers.processors.figure_clustering:merge",
        actions=("CreateFigureClustersMergingTask",),
    ),
    JobKind(
        "FacesSearching",
        "cluster",
        "workers.processors.face_search:process",
        actions=("CreateFacesSearchingTask",),
    ),
    JobKind(
        "ImageFigureClusterSearch",
        "cluster",
        "workers.processors.face_search:search_clusters",
        actions=("SearchImageFigureCluster",),
        listed=False,
    ),
    JobKind(
        "Highlight",
        "highlight",
        "workers.processors.highlights:process",
        actions=("CreateHighlightTask",),
        services=("video_highlight",),
        spec=HIGHLIGHT_SPEC,
    ),
    JobKind(
        "VideoSuperResolution",
        "sr",
        "workers.processors.superres:process",
        actions=("CreateVideoSuperResolutionTask",),
        services=("video_super_resolution",),
        spec=SR_SPEC,
    ),
    JobKind(
        "SpeechRecognition",
        "asr",
        "workers.processors.speech:process",
        actions=("CreateSpeechRecognitionTask",),
        services=("asr",),
        spec=ASR_SPEC,
    ),
    JobKind(
        "ImageClassification",
        "image",
        "workers.processors.image_models:classify",
        actions=("CreateImageClassificationTask",),
        services=("image_classification",),
        spec=IMAGE_SPEC,
        batching=Batching(),
    ),
    JobKind(
        "ImageSimilarity",
        "image",
        "workers.processors.image_models:similarity",
        services=("image_similarity",),
        spec=SIMILARITY_SPEC,
        batching=Batching(),
    ),
)

BY_TYPE: Mapping[str, JobKind] = MappingProxyType({k.task_type: k for k in KINDS})
BY_SERVICE: Mapping[str, JobKind] = MappingProxyType(
    {service: k for k in KINDS for service in k.services}
)
QUEUES: tuple[str, ...] = tuple(sorted({k.queue for k in KINDS}))
UNLISTED_TYPES: frozenset[str] = frozenset(k.task_type for k in KINDS if not k.listed)


def kind(task_type: str) -> JobKind:
    """The declaration of ``task_type``; ``KeyError`` naming it when undeclared."""
    try:
        return BY_TYPE[task_type]
    except KeyError:
        raise KeyError(f"No job kind is declared for task type {task_type!r}.") from None


def markdown_table() -> str:
    """The README's table of job kinds (``tests/unit/test_jobs.py`` keeps the README equal)."""
    rows = [
        "| task type | IMM action | EAS service | queue | event | time limit |",
        "|---|---|---|---|---|---|",
    ]
    for k in KINDS:
        actions = ", ".join(f"`{a}`" for a in k.actions) or "-"
        services = ", ".join(f"`{s}`" for s in k.services) or "-"
        listed = "" if k.listed else " (not in ListTasks unless named)"
        rows.append(
            f"| `{k.task_type}`{listed} | {actions} | {services} | `{k.queue}` | "
            f"`{k.event_type}` | {k.time_limit} s |"
        )
    return "\n".join(rows)
