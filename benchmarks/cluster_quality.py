"""Figure-clustering quality on a labelled face folder: openimm's ``workers.clustering.plan``
(run as IMM runs it: a first run on a random half, then an incremental run on the rest plus the
faces left independent) against dlib's Chinese whispers on the same embeddings.

    .venv/bin/python benchmarks/cluster_quality.py [--dir /work/shared/data/faces] [--seeds 30]

Every face of every image is embedded and clustered; only the labelled face of a photo (its
largest) is scored, pairwise: a pair is predicted together when both faces share a cluster
(independent faces pair with nothing). Targets: precision 1.0 and F1 >= 0.99. Note that a
person with fewer than 3 photos can never form a cluster under IMM's rule, which caps recall;
Chinese whispers has no such rule.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers import clustering  # noqa: E402

DEFAULT_DIR = Path("/work/shared/data/faces")
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MIN_SIDE_PX = 75  # IMM: box > 75x75 px
MAX_ANGLE_DEG = 30.0  # IMM: |pitch|, |roll|, |yaw| < 30
MIN_QUALITY = 0.8  # IMM: FaceQuality > 0.8
CW_THRESHOLDS = (0.5, 0.6)
TARGET_PRECISION, TARGET_F1 = 1.0, 0.99


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float
    independent: int


def embed_folder(folder: Path) -> tuple[list[clustering.Candidate], str]:
    """Candidates for every face of every image (largest face first, figure id
    ``<file>#<rank>``) and which face pipeline produced them."""
    try:
        from workers.faces import get_analyzer, load_image
    except ImportError:
        return _embed_raw_dlib(folder), "raw dlib (HOG, qualified = box > 75 px only)"
    analyzer = get_analyzer()
    out = []
    for path in _images(folder):
        rgb, _ = load_image(path)
        for rank, face in enumerate(analyzer.analyze(rgb)):
            angle = max(abs(face.pitch), abs(face.roll), abs(face.yaw))
            ok = min(face.width, face.height) > MIN_SIDE_PX and angle < MAX_ANGLE_DEG
            ok = ok and face.quality > MIN_QUALITY
            out.append(_candidate(path, rank, face.embedding, ok))
    return out, "workers.faces (IMM rule: box > 75 px, |angles| < 30, FaceQuality > 0.8)"


def _embed_raw_dlib(folder: Path) -> list[clustering.Candidate]:
    import dlib

    models = _models_folder()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
    encoder = dlib.face_recognition_model_v1(
        str(models / "dlib_face_recognition_resnet_model_v1.dat")
    )
    out = []
    for path in _images(folder):
        rgb = dlib.load_rgb_image(str(path))
        rects = sorted(detector(rgb, 1), key=lambda r: -r.area())
        for rank, rect in enumerate(rects):
            emb = encoder.compute_face_descriptor(rgb, predictor(rgb, rect))
            ok = min(rect.width(), rect.height()) > MIN_SIDE_PX
            out.append(_candidate(path, rank, numpy.array(emb), ok))
    return out


def _models_folder() -> Path:
    """face_recognition_models' data folder, found without importing the package (its
    ``__init__`` needs ``pkg_resources``, gone from recent setuptools)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("face_recognition_models is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


def _candidate(path: Path, rank: int, emb: Any, ok: bool) -> clustering.Candidate:
    return clustering.Candidate(
        f"{path.name}#{rank}", path.name, numpy.asarray(emb, numpy.float32), bool(ok)
    )


def read_labels(folder: Path) -> dict[str, str]:
    """figure id of the labelled (largest) face -> person."""
    with open(folder / "labels.csv", newline="") as fh:
        return {f"{row['file']}#0": row["person"] for row in csv.DictReader(fh)}


def score(labels: dict[str, str], assigned: dict[str, str]) -> Score:
    tp = fp = fn = 0
    for a, b in itertools.combinations(sorted(labels), 2):
        same = labels[a] == labels[b]
        together = assigned[a] == assigned[b] != clustering.INDEPENDENT
        tp += same and together
        fp += together and not same
        fn += same and not together
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    alone = sum(assigned[f] == clustering.INDEPENDENT for f in labels)
    return Score(precision, recall, f1, alone)


def two_runs(
    candidates: Sequence[clustering.Candidate], seed: int, th: clustering.Thresholds
) -> dict[str, str]:
    """Initial run on a random half, incremental run on the rest plus the independents,
    with new-cluster keys made unique per run as the caller does."""
    shuffled = list(candidates)
    random.Random(seed).shuffle(shuffled)
    half = len(shuffled) // 2
    first = clustering.plan([], shuffled[:half], th)
    assigned = _renamed(first, "run1-")
    existing = [
        clustering.ExistingCluster(
            "run1-" + new.key,
            new.centroid,
            len(new.figure_ids),
            {f.split("#")[0] for f in new.figure_ids},
        )
        for new in first.new_clusters
    ]
    again = [c for c in shuffled[:half] if assigned[c.figure_id] == clustering.INDEPENDENT]
    second = clustering.plan(existing, shuffled[half:] + again, th)
    assigned.update(_renamed(second, "run2-"))
    return assigned


def _renamed(result: clustering.Plan, prefix: str) -> dict[str, str]:
    new_keys = {n.key for n in result.new_clusters}
    return {f: prefix + t if t in new_keys else t for f, t in result.assignments.items()}


def chinese_whispers(
    candidates: Sequence[clustering.Candidate], threshold: float
) -> dict[str, str]:
    import dlib

    vectors = [dlib.vector(c.embedding.astype(float).tolist()) for c in candidates]
    labels = dlib.chinese_whispers_clustering(vectors, threshold)
    return {c.figure_id: f"cw-{label}" for c, label in zip(candidates, labels, strict=True)}


def _line(name: str, s: Score) -> str:
    ok = s.precision >= TARGET_PRECISION and s.f1 >= TARGET_F1
    return (
        f"{name:<40} P={s.precision:.4f} R={s.recall:.4f} F1={s.f1:.4f} "
        f"independent={s.independent:<3} targets {'MET' if ok else 'NOT met'}"
    )


def _summary(scores: list[Score]) -> Score:
    return Score(
        min(s.precision for s in scores),
        float(numpy.mean([s.recall for s in scores])),
        float(numpy.mean([s.f1 for s in scores])),
        max(s.independent for s in scores),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seeds", type=int, default=30, help="random initial/incremental splits")
    args = parser.parse_args(argv)
    candidates, path = embed_folder(args.dir)
    labels = read_labels(args.dir)
    labels = {f: p for f, p in labels.items() if any(c.figure_id == f for c in candidates)}
    th = clustering.Thresholds()
    print(
        f"faces: {len(candidates)} ({sum(c.qualified for c in candidates)} qualified), "
        f"labelled: {len(labels)}, embeddings: {path}"
    )
    print(f"openimm thresholds: join={th.join} link={th.link} min_size={th.min_size}")
    runs = [score(labels, two_runs(candidates, seed, th)) for seed in range(args.seeds)]
    print(_line("openimm seed 0 (half + incremental)", runs[0]))
    print(_line(f"openimm {args.seeds} seeds (min P, mean R/F1)", _summary(runs)))
    print(f"  worst F1 over seeds: {min(s.f1 for s in runs):.4f}")
    print(
        _line(
            "openimm one run over all faces",
            score(labels, clustering.plan([], candidates).assignments),
        )
    )
    for t in CW_THRESHOLDS:
        print(_line(f"dlib chinese_whispers {t}", score(labels, chinese_whispers(candidates, t))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
