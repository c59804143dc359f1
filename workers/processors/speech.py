"""CreateSpeechRecognitionTask (openimm extension) and the ``asr`` service: transcribe the
audio of a media file with the engine that serves its language (``workers.models.asr``), store the
transcript at TargetURI (JSON, SRT or VTT by its extension) and return the Model Hub form
(segment start µs → sentences joined by ``;``) as the task result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import InvalidArgument
from pipeline.storage import parse_oss_uri
from workers.context import JobContext, limits, seconds

FORMATS = (".json", ".srt", ".vtt")


def process(ctx: JobContext) -> dict[str, Any]:
    from workers.models import asr
    from workers.models.whisper_base import whisper_model_dir

    request = ctx.request
    src = ctx.media.fetch(request["SourceURI"], ctx.workdir / "in")
    limits(ctx, src, seconds(request.get("MaxMicroseconds")))
    configured = Path(ctx.settings.whisper_model_dir) if ctx.settings.whisper_model_dir else None
    model_dir = whisper_model_dir(ctx.settings.resolved_data_dir, configured)
    ctx.progress(5, force=True)
    language = request.get("Language") or "en"
    engine = asr.pick_engine(language, request.get("Engine") or None, model_dir, ctx.device)
    samples = asr.load_audio(src, request.get("MaxMicroseconds"))
    segments = asr.transcribe_samples(engine, samples, language)
    result: dict[str, Any] = {
        "Language": language,
        "Engine": engine.name,  # whisper by default; sphinx when asked (Engine=sphinx)
        "SegmentCount": len(segments),
        "Transcript": asr.to_model_hub(segments),
    }
    target = request.get("TargetURI")
    if target:
        bucket, key = parse_oss_uri(target)
        suffix = Path(key).suffix.lower()
        render = {".json": asr.to_json, ".srt": asr.to_srt, ".vtt": asr.to_vtt}.get(suffix)
        if render is None:
            raise InvalidArgument(f"TargetURI must end in one of {', '.join(FORMATS)}.")
        ctx.store.put_bytes(bucket, key, render(segments).encode())
        result["TargetURI"] = target
    return result
