"""Model Hub image models (seed 000): ImageNet classification and image similarity.

Processors of the ``ImageClassification`` and ``ImageSimilarity`` job kinds. Both run
``workers.models.imagenet.ImageNetModel`` (MobileNetV2), loaded once per worker process on the
pool's device. A task's own images go through the network together (chunks of ``CHUNK``); the
images of concurrent tasks in one process (a ``--pool threads`` pool, one task per thread) are
batched together by ``workers.batching`` under the kind's declared policy.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy

from pipeline import jobs, vectors
from workers import models
from workers.batching import BatchPolicy, DynamicBatcher
from workers.context import JobContext
from workers.media import imaging
from workers.models.imagenet import DECODE_AT_LEAST, Classification, ImageNetModel, crop

CHUNK = 32  # images per forward pass: activations of 32 x 224² stay well under 1 GB
TOP_K = 5


def _images(ctx: JobContext, uris: list[str]) -> Iterator[numpy.ndarray]:
    """Each input fetched, decoded and cropped to the network's input (``imagenet.crop``),
    in the task's own thread: a batch's images are prepared in parallel, off the batcher."""
    for i, uri in enumerate(uris):
        path = ctx.media.fetch(uri, ctx.workdir / f"in{i}")
        # The network sees 224 px of a 256 px shorter side: a big JPEG is decoded reduced.
        limit = ctx.settings.image_max_pixels
        image, _ = imaging.load_upright(path, limit, reduce_to=DECODE_AT_LEAST)
        yield crop(image)


def _labels(probs: numpy.ndarray, names: tuple[str, ...], k: int) -> list[dict[str, Any]]:
    top = numpy.argsort(probs)[::-1][:k]
    return [
        {"LabelName": names[i], "LabelConfidence": round(float(probs[i]), 6), "ClassId": int(i)}
        for i in top
    ]


def _policy(task_type: str, device: str) -> BatchPolicy:
    """The kind's declared batching; on a CPU at most one image per intra-op thread, plus one.

    On a CPU a batch shares the call, not the compute (MobileNetV2's frozen graph costs the
    same per image in a batch of 8 as alone), while every image of a big batch waits for the
    whole pass and leaves the pool's other stages idle meanwhile. 8 closed-loop clients on 2
    cores (one intra-op thread), same hour: the machine was 1.61-1.64 cores busy with
    batches of up to 16, 1.69-1.72 with 4 and 1.74-1.77 with 2; with many intra-op threads
    a bigger batch gives each of them work, so the bound grows with them. A GPU keeps the
    declared size."""
    declared = jobs.kind(task_type).batching or jobs.Batching(max_size=1)
    size = declared.max_size
    if device == "cpu":
        size = min(size, _intra_op_threads() + 1)
    return BatchPolicy(size, declared.max_delay_ms / 1000)


def _intra_op_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _caller_runs() -> bool:
    """A lone image may run in its task's thread when the engine uses no OpenMP team (one
    intra-op thread: the 2-core default of a threads pool, ``pipeline.server.model_threads``).
    The hand-off to the batcher thread and back cost ~1 ms of a ~15 ms pass."""
    return _intra_op_threads() == 1


@functools.cache
def classifier(device: str) -> DynamicBatcher[numpy.ndarray, Classification]:
    """This process's batcher of single images for classification on ``device``."""
    model = models.get(ImageNetModel, device)
    policy = _policy("ImageClassification", device)
    return DynamicBatcher(model.classify, policy, caller_runs=_caller_runs())


@functools.cache
def embedder(device: str) -> DynamicBatcher[numpy.ndarray, numpy.ndarray]:
    """This process's batcher of single images for embeddings on ``device``."""
    model = models.get(ImageNetModel, device)
    policy = _policy("ImageSimilarity", device)
    return DynamicBatcher(lambda ims: list(model.embed(ims)), policy, caller_runs=_caller_runs())


def _classify(ctx: JobContext, uris: list[str]) -> tuple[list[Classification], int]:
    if len(uris) == 1:  # an EAS call: share the forward pass with concurrent tasks
        with classifier(ctx.device).slot() as slot:  # announced while it is decoded
            return slot.run(list(_images(ctx, uris)))
    return models.get(ImageNetModel, ctx.device).classify(list(_images(ctx, uris))), len(uris)


def classify(ctx: JobContext) -> dict[str, Any]:
    """``{"Images": [{URI, Class, ClassName, Labels[top-k]}], "BatchSize"}``; with
    ``AllProbs`` (the EAS service) also ``ClassProbsFloat32``: every class's probability in
    class-id order, compactly (``pipeline.vectors``); the EAS answer names them, as Model Hub
    returns them. ``BatchSize``: the most images one forward pass held for this task
    (> 1 for a single image when concurrent requests were batched with it)."""
    from workers.models.imagenet import class_names

    uris = [s["URI"] for s in ctx.request["Sources"]]
    top_k = int(ctx.request.get("TopK") or TOP_K)
    names = class_names()
    out: list[dict[str, Any]] = []
    batch_size = 0
    for start in range(0, len(uris), CHUNK):
        batch = uris[start : start + CHUNK]
        results, size = _classify(ctx, batch)
        batch_size = max(batch_size, size)
        for uri, result in zip(batch, results, strict=True):
            item: dict[str, Any] = {
                "URI": uri,
                "Class": result.index,
                "ClassName": result.name,
                "Labels": _labels(result.probs, names, top_k),
            }
            if ctx.request.get("AllProbs"):  # named by the EAS adapter (pipeline.vectors)
                item["ClassProbsFloat32"] = vectors.encode(result.probs)
            out.append(item)
        if start + CHUNK < len(uris):  # the terminal write says 100: no write for the last
            ctx.progress(int(95 * (start + len(batch)) / len(uris)))
    return {"Images": out, "BatchSize": batch_size}


def similarity(ctx: JobContext) -> dict[str, Any]:
    """Cosine similarity of the two images' embeddings, scaled to 0-100 (100 = the same
    image; Model Hub: below 80 means different images), and the L2 distance of the
    normalised embeddings (0…2)."""
    uris = [ctx.request["ImageA"], ctx.request["ImageB"]]
    with embedder(ctx.device).slot() as slot:  # announced while the images are decoded
        embeddings, batch_size = slot.run(list(_images(ctx, uris)))
    cosine = float(numpy.clip(embeddings[0] @ embeddings[1], -1.0, 1.0))
    distance = float(numpy.linalg.norm(embeddings[0] - embeddings[1]))
    return {
        "Similarity": round(100.0 * max(0.0, cosine), 4),
        "L2Distance": round(distance, 6),
        "BatchSize": batch_size,
    }
