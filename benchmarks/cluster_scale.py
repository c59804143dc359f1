"""Figure-clustering speed at scale on synthetic dlib-like embeddings: a first run over a
dataset of N faces, then an incremental run bringing 1% new faces (plus the faces left
independent), as IMM's periodic CreateFigureClusteringTask does.

    .venv/bin/python benchmarks/cluster_scale.py [--sizes 10000,100000,1000000]

Synthetic data: identities are random directions of norm 0.65 in 128-d (two identities lie
~0.92 apart); a face adds noise of norm 0.2..0.33, so two faces of one person lie ~0.3..0.47
apart and faces of different people ~0.95. 10% of identities are singletons, the others have
5..20 faces; faces are paired into files (~2 faces per photo); 85% of faces are qualified.
Budget: the incremental run at 100k faces <= 10 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers import clustering  # noqa: E402

DIM = 128
CENTRE_NORM = 0.65
NOISE_NORMS = (0.2, 0.33)
SINGLETON_SHARE = 0.1
SIZES = (5, 20)
QUALIFIED_SHARE = 0.85
NEW_SHARE = 0.01
BUDGET_S = {100_000: 10.0}  # incremental-run budget per dataset size
SEED = 11


@dataclass
class Faces:
    """Synthetic faces with their true identity."""

    candidates: list[clustering.Candidate]
    person: dict[str, int]


def synthesize(n: int, rng: numpy.random.Generator, tag: str) -> Faces:
    persons = _identities(n, rng)
    centres = _directions(int(persons.max()) + 1, rng) * CENTRE_NORM
    noise = _directions(n, rng) * rng.uniform(*NOISE_NORMS, size=(n, 1))
    emb = (centres[persons] + noise).astype(numpy.float32)
    files = rng.permutation(n) // 2
    qualified = rng.random(n) < QUALIFIED_SHARE
    ids = [f"{tag}-{i:08d}" for i in range(n)]
    cands = [
        clustering.Candidate(ids[i], f"{tag}-file-{files[i]}", emb[i], bool(qualified[i]))
        for i in range(n)
    ]
    return Faces(cands, dict(zip(ids, persons.tolist(), strict=True)))


def _identities(n: int, rng: numpy.random.Generator) -> numpy.ndarray:
    """Identity of each of ``n`` faces, shuffled."""
    sizes: list[int] = []
    while sum(sizes) < n:
        single = rng.random() < SINGLETON_SHARE
        sizes.append(1 if single else int(rng.integers(SIZES[0], SIZES[1] + 1)))
    persons = numpy.repeat(numpy.arange(len(sizes)), sizes)[:n]
    return rng.permutation(persons)


def _directions(n: int, rng: numpy.random.Generator) -> numpy.ndarray:
    v = rng.normal(size=(n, DIM)).astype(numpy.float32)
    return v / numpy.linalg.norm(v, axis=1, keepdims=True)


def existing_after(
    result: clustering.Plan, candidates: Sequence[clustering.Candidate]
) -> list[clustering.ExistingCluster]:
    """The clusters a caller would store after ``result`` (keys made unique)."""
    file_of = {c.figure_id: c.file_id for c in candidates}
    return [
        clustering.ExistingCluster(
            "run1-" + new.key,
            new.centroid,
            len(new.figure_ids),
            {file_of[f] for f in new.figure_ids},
        )
        for new in result.new_clusters
    ]


def precision(result: clustering.Plan, person: dict[str, int], prefix: str = "") -> float:
    """Pairwise precision of the faces placed by ``result``."""
    members: dict[str, list[int]] = defaultdict(list)
    for figure_id, target in result.assignments.items():
        if target != clustering.INDEPENDENT:
            members[prefix + target].append(person[figure_id])
    same = total = 0
    for people in members.values():
        _, counts = numpy.unique(people, return_counts=True)
        same += int((counts * (counts - 1) // 2).sum())
        total += len(people) * (len(people) - 1) // 2
    return same / total if total else 1.0


def run_size(n: int, max_initial: int) -> tuple[float | None, float]:
    rng = numpy.random.default_rng(SEED)
    everyone = synthesize(n, rng, "face")
    cut = n - int(n * NEW_SHARE)  # faces are shuffled: the last 1% arrive later
    base = Faces(everyone.candidates[:cut], everyone.person)
    new = Faces(everyone.candidates[cut:], everyone.person)
    initial_s: float | None = None
    if n <= max_initial:
        t0 = time.perf_counter()
        first = clustering.plan([], base.candidates)
        initial_s = time.perf_counter() - t0
        existing = existing_after(first, base.candidates)
        left = [
            c
            for c in base.candidates
            if first.assignments[c.figure_id] == "figure-cluster-id-independent"
        ]
        print(
            f"  initial    {len(base.candidates):>9,} faces: {initial_s:7.2f} s  "
            f"clusters={len(existing):,} independent={len(left):,} "
            f"precision={precision(first, base.person):.4f}"
        )
    else:
        existing, left = _truth_state(base)
        print(f"  initial    skipped (> --max-initial); {len(existing):,} clusters from truth")
    person = everyone.person
    t0 = time.perf_counter()
    second = clustering.plan(existing, new.candidates + left)
    incremental_s = time.perf_counter() - t0
    joined = sum(
        1 for c in new.candidates if second.assignments[c.figure_id] != clustering.INDEPENDENT
    )
    print(
        f"  incremental {len(new.candidates) + len(left):>8,} faces vs {len(existing):,} "
        f"clusters: {incremental_s:6.2f} s  new faces placed={joined:,}/{len(new.candidates):,} "
        f"new clusters={len(second.new_clusters)} updated={len(second.updated):,} "
        f"precision={precision(second, person):.4f}"
    )
    return initial_s, incremental_s


def _truth_state(
    base: Faces,
) -> tuple[list[clustering.ExistingCluster], list[clustering.Candidate]]:
    """Clusters as a perfect earlier run would have left them (identities with >= 3 faces)."""
    by_person: dict[int, list[clustering.Candidate]] = defaultdict(list)
    for c in base.candidates:
        by_person[base.person[c.figure_id]].append(c)
    existing, left = [], []
    for p, faces in sorted(by_person.items()):
        if len(faces) < 3:
            left.extend(faces)
            continue
        centroid = numpy.mean([f.embedding for f in faces], axis=0)
        files = {f.file_id for f in faces}
        existing.append(clustering.ExistingCluster(f"truth-{p}", centroid, len(faces), files))
    return existing, left


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument(
        "--max-initial",
        type=int,
        default=10**9,
        help="skip the initial run above this size (state taken from the synthetic truth)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    # the machine may be shared: timings scale with the load on its cores
    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}")
    rows = []
    for n in sizes:
        print(f"N = {n:,}")
        rows.append((n, *run_size(n, args.max_initial)))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("\nsize        initial_s  incremental_s  budget")
    for n, initial, incremental in rows:
        budget = BUDGET_S.get(n)
        flag = "-" if budget is None else ("OK" if incremental <= budget else "OVER")
        shown = "skipped" if initial is None else f"{initial:.2f}"
        print(
            f"{n:<10,}  {shown:>9}  {incremental:>13.2f}  {flag} (<= {budget} s)"
            if budget
            else f"{n:<10,}  {shown:>9}  {incremental:>13.2f}  {flag}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
