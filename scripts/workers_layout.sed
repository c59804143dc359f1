# The workers/ layout of issue 12 (glue / processors / models / media): old module → new.
# Apply to code written against the flat layout, then let ruff re-sort the imports:
#   sed -E -i -f scripts/workers_layout.sed $(git grep -lE 'workers' -- '*.py' '*.md' Makefile)
#   ruff check --fix --select I . && ruff format .
# Needs GNU sed -E. A parenthesised multi-line "from workers import (…)" is not split: write
# it on one line first. Code that used figure_clustering's private helpers (_existing,
# _candidates, _create_clusters) now gets those rows from pipeline.figure_store.
# Glue modules (celery_app, runtime, heartbeat, context, registry, batching, warmup, device,
# scrub) and workers.models.{base,store,imagenet} keep their names.
#
#   workers.compression        -> workers.processors.compression
#   workers.diagnostic         -> workers.processors.diagnostic
#   workers.indexing           -> workers.processors.indexing
#   workers.figure_clustering  -> workers.processors.figure_clustering
#   workers.face_search        -> workers.processors.face_search
#   workers.highlights         -> workers.processors.highlights
#   workers.superres           -> workers.processors.superres
#   workers.speech             -> workers.processors.speech
#   workers.image_models       -> workers.processors.image_models
#   workers.sr_video           -> workers.processors.sr_video
#   workers.ffmpeg_io          -> workers.media.ffmpeg_io
#   workers.imaging            -> workers.media.imaging
#   workers.probe              -> workers.media.probe
#   workers.faces              -> workers.models.faces
#   workers.headpose           -> workers.models.headpose
#   workers.asr                -> workers.models.asr
#   workers.clustering         -> workers.models.clustering
#   workers.sr_model           -> workers.models.superres      (renamed)
#   workers.models_install     -> workers.models.whisper_base  (renamed)
#   workers/weights/           -> workers/models/weights/
# SQL that processors wrote now lives in pipeline.figure_store (see README "Adding a job kind").

# 1. "from workers import a, b, c" → one line per name (the loop), so each maps alone.
:split
s/^([[:space:]]*)from workers import ([A-Za-z_][A-Za-z0-9_]*( as [A-Za-z_][A-Za-z0-9_]*)?), +([^\n]+)$/\1from workers import \2\n\1from workers import \4/Mg
t split

# 2. "from workers import X [as Y]" for the moved modules (renamed ones keep their old name).
s/^([[:space:]]*)from workers import (compression|diagnostic|indexing|figure_clustering|face_search|highlights|superres|speech|image_models|sr_video)\b/\1from workers.processors import \2/Mg
s/^([[:space:]]*)from workers import (ffmpeg_io|imaging|probe)\b/\1from workers.media import \2/Mg
s/^([[:space:]]*)from workers import (faces|headpose|asr|clustering)\b/\1from workers.models import \2/Mg
s/^([[:space:]]*)from workers import sr_model as /\1from workers.models import superres as /Mg
s/^([[:space:]]*)from workers import sr_model\b/\1from workers.models import superres as sr_model/Mg
s/^([[:space:]]*)from workers import models_install as /\1from workers.models import whisper_base as /Mg
s/^([[:space:]]*)from workers import models_install\b/\1from workers.models import whisper_base as models_install/Mg

# 3. Dotted names anywhere (imports, "module:function" strings, -m, docstrings).
s/\bworkers\.(compression|diagnostic|indexing|figure_clustering|face_search|highlights|superres|speech|image_models|sr_video)\b/workers.processors.\1/g
s/\bworkers\.(ffmpeg_io|imaging|probe)\b/workers.media.\1/g
s/\bworkers\.(faces|headpose|asr|clustering)\b/workers.models.\1/g
s/\bworkers\.sr_model\b/workers.models.superres/g
s/\bworkers\.models_install\b/workers.models.whisper_base/g
s/\bworkers\.processors\.figure_clustering\.merge_clusters\b/pipeline.figure_store.merge_clusters/g
s/^([[:space:]]*)from workers\.processors\.figure_clustering import ([^\n]*), merge_clusters$/\1from workers.processors.figure_clustering import \2\n\1from pipeline.figure_store import merge_clusters/M
s/^([[:space:]]*)from workers\.processors\.figure_clustering import merge_clusters$/\1from pipeline.figure_store import merge_clusters/M

# 4. File paths (docs, comments, Dockerfiles).
s#\bworkers/(compression|diagnostic|indexing|figure_clustering|face_search|highlights|superres|speech|image_models|sr_video)\.py#workers/processors/\1.py#g
s#\bworkers/(ffmpeg_io|imaging|probe)\.py#workers/media/\1.py#g
s#\bworkers/(faces|headpose|asr|clustering)\.py#workers/models/\1.py#g
s#\bworkers/sr_model\.py#workers/models/superres.py#g
s#\bworkers/models_install\.py#workers/models/whisper_base.py#g
s#\bworkers/weights\b#workers/models/weights#g
