"""workers.models.clustering.plan on synthetic embeddings shaped like dlib's: person centres ~0.9
apart, faces of one person ~0.3 apart (dlib's same-person cut is 0.6)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from workers.models import clustering
from workers.models.clustering import (
    INDEPENDENT,
    Candidate,
    ExistingCluster,
    Plan,
    Thresholds,
    distance_to_similarity,
    plan,
)

DIM = 128
CENTRE_NORM = 0.65  # two random centres of this norm lie ~0.92 apart
NOISE_NORM = 0.2  # two faces of one person lie ~0.28 apart


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=DIM)
    return v / np.linalg.norm(v)


class People:
    """Factory of synthetic faces: ``face("A", "f1")`` is a new face of person A in file f1."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres: dict[str, np.ndarray] = {}
        self.count = 0

    def centre(self, person: str) -> np.ndarray:
        if person not in self.centres:
            self.centres[person] = _unit(self.rng) * CENTRE_NORM
        return self.centres[person]

    def vector(self, person: str) -> np.ndarray:
        return (self.centre(person) + _unit(self.rng) * NOISE_NORM).astype(np.float32)

    def face(self, person: str, file_id: str, *, qualified: bool = True) -> Candidate:
        self.count += 1
        figure_id = f"{person}-{self.count:04d}"
        return Candidate(figure_id, file_id, self.vector(person), qualified)

    def faces(self, person: str, n: int, *, qualified: bool = True) -> list[Candidate]:
        return [self.face(person, f"{person}-file-{i}", qualified=qualified) for i in range(n)]

    def cluster(self, cluster_id: str, person: str, n: int) -> ExistingCluster:
        members = np.stack([self.vector(person) for _ in range(n)])
        files = {f"{cluster_id}-file-{i}" for i in range(n)}
        return ExistingCluster(cluster_id, members.mean(axis=0), n, files)


def groups(result: Plan) -> list[set[str]]:
    """Figure ids per non-independent target, sorted for comparison."""
    by_target: dict[str, set[str]] = {}
    for figure_id, target in result.assignments.items():
        if target != INDEPENDENT:
            by_target.setdefault(target, set()).add(figure_id)
    return sorted(by_target.values(), key=sorted)


def assert_one_face_per_file(result: Plan, candidates: list[Candidate]) -> None:
    file_of = {c.figure_id: c.file_id for c in candidates}
    for members in groups(result):
        files = [file_of[f] for f in members]
        assert len(files) == len(set(files)), members


def test_three_qualified_faces_of_one_person_form_a_new_cluster() -> None:
    people = People()
    faces = people.faces("A", 3)

    result = plan([], faces)

    assert len(result.new_clusters) == 1
    new = result.new_clusters[0]
    assert sorted(new.figure_ids) == sorted(f.figure_id for f in faces)
    assert all(result.assignments[f.figure_id] == new.key for f in faces)
    np.testing.assert_allclose(new.centroid, np.mean([f.embedding for f in faces], axis=0), 1e-5)
    assert all(0.9 < result.similarity[f.figure_id] <= 1.0 for f in faces)
    assert result.updated == {}


def test_two_faces_stay_independent() -> None:
    faces = People().faces("A", 2)

    result = plan([], faces)

    assert result.new_clusters == []
    assert result.assignments == {f.figure_id: INDEPENDENT for f in faces}
    assert result.similarity == {}


def test_unqualified_faces_never_form_a_cluster_but_join_an_existing_one() -> None:
    people = People()
    weak = people.faces("A", 6, qualified=False)

    alone = plan([], weak)
    joined = plan([people.cluster("Cluster-A", "A", 4)], weak)

    assert alone.new_clusters == []
    assert set(alone.assignments.values()) == {INDEPENDENT}
    assert set(joined.assignments.values()) == {"Cluster-A"}
    assert joined.updated["Cluster-A"][1] == 10


def test_unqualified_faces_join_a_cluster_formed_in_the_same_run() -> None:
    people = People()
    strong, weak = people.faces("A", 3), people.face("A", "weak-file", qualified=False)

    result = plan([], [*strong, weak])

    assert len(result.new_clusters) == 1
    assert result.assignments[weak.figure_id] == result.new_clusters[0].key
    assert len(result.new_clusters[0].figure_ids) == 4


def test_incremental_run_joins_existing_cluster_and_updates_centroid() -> None:
    people = People()
    existing = [people.cluster("Cluster-A", "A", 5), people.cluster("Cluster-B", "B", 5)]
    face = people.face("A", "new-file")

    result = plan(existing, [face])

    assert result.assignments == {face.figure_id: "Cluster-A"}
    assert result.new_clusters == []
    centroid, size = result.updated["Cluster-A"]
    assert size == 6
    expected = (existing[0].centroid * 5 + face.embedding) / 6
    np.testing.assert_allclose(centroid, expected, atol=1e-5)
    assert "Cluster-B" not in result.updated
    distance = float(np.linalg.norm(face.embedding - existing[0].centroid))
    assert result.similarity[face.figure_id] == pytest.approx(distance_to_similarity(distance))


def test_two_faces_of_one_file_never_share_an_existing_cluster() -> None:
    people = People()
    cluster = people.cluster("Cluster-A", "A", 5)
    near, far = people.face("A", "photo"), people.face("A", "photo")
    already = people.face("A", sorted(cluster.file_ids)[0])  # its file is in the cluster

    result = plan([cluster], [near, far, already])

    closest = min((near, far), key=lambda f: float(np.linalg.norm(f.embedding - cluster.centroid)))
    assert [f for f in (near, far) if result.assignments[f.figure_id] == "Cluster-A"] == [closest]
    assert result.assignments[already.figure_id] == INDEPENDENT
    assert result.updated["Cluster-A"][1] == 6


def test_loser_of_a_file_conflict_takes_its_next_nearest_cluster() -> None:
    # Given two clusters of one person (a user split them by hand) and one photo showing
    # that person twice, both faces closest to the same cluster
    people = People()
    first, second = people.cluster("Cluster-1", "A", 8), people.cluster("Cluster-2", "A", 8)
    twins = [people.face("A", "mirror-photo"), people.face("A", "mirror-photo")]

    result = plan([first, second], twins)

    assert sorted(result.assignments.values()) == ["Cluster-1", "Cluster-2"]


def test_two_faces_of_one_file_never_share_a_new_cluster() -> None:
    people = People()
    faces = [*people.faces("A", 3), people.face("A", "A-file-0"), people.face("A", "A-file-1")]

    result = plan([], faces)

    assert len(result.new_clusters) == 1
    assert len(result.new_clusters[0].figure_ids) == 3
    assert_one_face_per_file(result, faces)


def test_only_distinct_files_count_towards_min_size() -> None:
    people = People()
    faces = [people.face("A", "one-photo") for _ in range(4)] + people.faces("A", 2)

    result = plan([], faces)

    assert result.new_clusters == []


def test_independent_faces_join_when_a_later_run_brings_enough_faces() -> None:
    # Given a first run that left two faces of A independent
    people = People()
    early = people.faces("A", 2)
    first = plan([], early)
    assert set(first.assignments.values()) == {INDEPENDENT}

    # When a later run gets them back with one new face of A
    late = people.face("A", "late-file")
    second = plan([], [*early, late])

    # Then the three form a cluster
    assert len(second.new_clusters) == 1
    assert set(second.assignments.values()) == {second.new_clusters[0].key}


def test_a_chain_between_two_people_is_not_one_cluster() -> None:
    # Given four faces each of A and B, and two faces on the segment between them, so that
    # every neighbour along the chain is closer than ``link`` (single linkage would merge)
    people = People()
    a, b = people.faces("A", 4), people.faces("B", 4)
    ca, cb = people.centre("A"), people.centre("B")
    bridge = [
        Candidate(f"bridge-{i}", f"bridge-file-{i}", (ca + (cb - ca) * t).astype(np.float32), True)
        for i, t in enumerate((1 / 3, 2 / 3))
    ]

    result = plan([], [*a, *bridge, *b])

    for members in groups(result):
        persons = {m.split("-")[0] for m in members if not m.startswith("bridge")}
        assert len(persons) == 1, members
    assert {frozenset(f.figure_id for f in a), frozenset(f.figure_id for f in b)} <= {
        frozenset(m - {"bridge-0", "bridge-1"}) for m in groups(result)
    }


def test_many_people_are_clustered_exactly() -> None:
    people = People(seed=3)
    faces = [f for p in range(30) for f in people.faces(f"P{p:02d}", 3 + p % 5)]
    faces += [people.face(f"single{i}", f"single-file-{i}") for i in range(10)]

    result = plan([], faces)

    expected = sorted(
        ({f.figure_id for f in faces if f.figure_id.startswith(f"P{p:02d}-")} for p in range(30)),
        key=sorted,
    )
    assert groups(result) == expected


def test_index_and_large_component_splits_give_the_same_clusters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    people = People(seed=4)
    faces = [f for p in range(12) for f in people.faces(f"P{p:02d}", 4 + p % 3)]
    whole = groups(plan([], faces))

    monkeypatch.setattr(clustering, "EXACT_PAIRS", 0)  # every step through the ANN index
    small_leader_chunks(monkeypatch)
    indexed = groups(plan([], faces))
    monkeypatch.undo()
    monkeypatch.setattr(clustering, "MAX_COMPONENT", 8)  # people have 4..6 faces
    calls: list[int] = []
    split_large = clustering._split_large

    def spy(faces: Any, members: np.ndarray, link: float) -> list[np.ndarray]:
        calls.append(len(members))
        return split_large(faces, members, link)

    monkeypatch.setattr(clustering, "_split_large", spy)
    tight = groups(plan([], faces, Thresholds(link=0.9)))  # at 0.9 people chain together

    assert len(whole) == 12
    assert indexed == whole
    assert tight == whole
    assert calls and max(calls) > 8


def small_leader_chunks(monkeypatch: pytest.MonkeyPatch, size: int = 128) -> None:
    """Leader passes over test-sized pools in many chunks, as a large pool runs (one chunk
    would compare everything exactly)."""
    monkeypatch.setattr(clustering, "LEADER_CHUNK", size)
    monkeypatch.setattr(clustering, "LEADER_FIRST_CHUNK", size)


def library(seed: int, persons: int) -> tuple[list[Candidate], dict[str, str]]:
    """A photo library like benchmarks/cluster_scale.py's: people with 1 or 3..15 faces,
    shuffled and paired into photos (two faces per file), 20% of faces unqualified."""
    people = People(seed=seed)
    rng = np.random.default_rng(seed)
    truth: dict[str, str] = {}
    faces: list[Candidate] = []
    for p in range(persons):
        n = 1 if p % 10 == 0 else int(rng.integers(3, 16))
        for _ in range(n):
            face = people.face(f"P{p:04d}", "-", qualified=bool(rng.random() >= 0.2))
            truth[face.figure_id] = f"P{p:04d}"
            faces.append(face)
    order = rng.permutation(len(faces))
    faces = [faces[i] for i in order]
    for i, face in enumerate(faces):
        face.file_id = f"photo-{i // 2}"
    return faces, truth


def two_runs(faces: list[Candidate]) -> tuple[Plan, Plan]:
    """A first run on 70% of ``faces`` and an incremental run on the rest plus the faces the
    first run left independent, against the clusters the first run made."""
    cut = len(faces) * 7 // 10
    first = plan([], faces[:cut])
    file_of = {f.figure_id: f.file_id for f in faces}
    existing = [
        ExistingCluster(
            f"Cluster-{n.key}", n.centroid, len(n.figure_ids), {file_of[f] for f in n.figure_ids}
        )
        for n in first.new_clusters
    ]
    left = [f for f in faces[:cut] if first.assignments[f.figure_id] == INDEPENDENT]
    return first, plan(existing, faces[cut:] + left)


def test_index_path_gives_the_same_clusters_as_the_exact_path_on_a_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    faces, truth = library(seed=6, persons=300)  # ~2,700 faces
    exact = two_runs(faces)
    monkeypatch.setattr(clustering, "EXACT_PAIRS", 0)
    small_leader_chunks(monkeypatch)
    indexed = two_runs(faces)

    assert len(faces) > 2_000
    for e, i in zip(exact, indexed, strict=True):
        assert i.assignments == e.assignments
        assert [n.figure_ids for n in i.new_clusters] == [n.figure_ids for n in e.new_clusters]
        assert i.similarity == pytest.approx(e.similarity)
        assert_one_face_per_file(i, faces)
        for members in groups(i):
            assert len({truth[f] for f in members}) == 1  # one person per cluster
    joined = indexed[1].updated
    assert len(joined) > 50  # the second run really joined faces through the index


def test_index_path_never_puts_two_faces_of_one_photo_in_one_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    people = People(seed=8)
    existing = [people.cluster("Cluster-A", "A", 5)]
    twins = [people.face("A", "group-photo"), people.face("A", "group-photo")]
    same_file = [people.face("B", f"b-{i}") for i in range(4)]
    same_file += [people.face("B", "b-0"), people.face("B", "b-1")]  # duplicates in b-0, b-1
    faces = twins + same_file
    exact = plan(existing, faces)
    monkeypatch.setattr(clustering, "EXACT_PAIRS", 0)
    small_leader_chunks(monkeypatch, 2)

    result = plan(existing, faces)

    assert_one_face_per_file(result, faces)
    assert sorted(result.assignments[f.figure_id] for f in twins) == ["Cluster-A", INDEPENDENT]
    assert sum(len(m) for m in groups(result) if any(f.startswith("B-") for f in m)) == 6
    assert result.assignments == exact.assignments


def exact_entries(monkeypatch: pytest.MonkeyPatch, faces: list[Candidate]) -> int:
    """Distance-matrix entries that ``plan([], faces)`` computes exactly (matrix products),
    plus the faces it puts into or asks of an ANN index."""
    count = [0]

    def counted(name: str, size: Any) -> None:
        real = getattr(clustering, name)

        def spy(*args: Any) -> Any:
            count[0] += size(*args)
            return real(*args)

        monkeypatch.setattr(clustering, name, spy)

    counted("_nearest", lambda left, right: len(left) * len(right))
    counted("_close_pairs", lambda faces, pool, link: len(pool) ** 2)
    counted("_retry", lambda run, losers, which, right, limit: len(losers) * len(right))
    counted("_split", lambda faces, members, link: len(members) ** 2)
    counted("ann_neighbours", lambda base, queries, k: (len(base) + len(queries)) * k)
    found, hits = clustering._Leaders._found, clustering._Leaders._hits

    def found_spy(self: Any, rows: np.ndarray) -> None:
        count[0] += len(rows) ** 2  # uncovered faces of a chunk, compared exactly
        found(self, rows)

    def hits_spy(self: Any, rows: np.ndarray, ef: int) -> Any:
        count[0] += len(rows) * clustering.LEADER_NEIGHBOURS
        return hits(self, rows, ef)

    monkeypatch.setattr(clustering._Leaders, "_found", found_spy)
    monkeypatch.setattr(clustering._Leaders, "_hits", hits_spy)
    plan([], faces)
    monkeypatch.undo()
    return count[0]


def test_a_first_run_grows_linearly_not_quadratically(monkeypatch: pytest.MonkeyPatch) -> None:
    small, _ = library(seed=9, persons=100)
    large, _ = library(seed=9, persons=400)
    monkeypatch.setattr(clustering, "EXACT_PAIRS", 20_000)  # both runs are "large"
    small_leader_chunks(monkeypatch)
    ratio_faces = len(large) / len(small)

    ratio_work = exact_entries(monkeypatch, large) / exact_entries(monkeypatch, small)

    assert 3.5 < ratio_faces < 4.5
    assert ratio_work < 1.5 * ratio_faces  # quadratic would be ~16


def test_output_is_deterministic_whatever_the_input_order() -> None:
    people = People(seed=5)
    existing = [people.cluster("Cluster-A", "A", 4)]
    faces = [*people.faces("A", 3), *people.faces("B", 4), *people.faces("C", 2)]

    first = plan(existing, faces)
    second = plan(list(reversed(existing)), list(reversed(faces)))

    assert first.assignments == second.assignments
    assert first.similarity == second.similarity
    assert [(n.key, n.figure_ids) for n in first.new_clusters] == [
        (n.key, n.figure_ids) for n in second.new_clusters
    ]


def test_empty_inputs() -> None:
    people = People()
    cluster = people.cluster("Cluster-A", "A", 3)
    lone = people.face("Z", "z-file")

    assert plan([], []) == Plan({}, [], {}, {})
    assert plan([cluster], []) == Plan({}, [], {}, {})
    assert plan([], [lone]).assignments == {lone.figure_id: INDEPENDENT}


def test_similarity_mapping_is_monotone_and_centred_on_dlib_cut() -> None:
    values = [distance_to_similarity(d / 10) for d in range(0, 16)]

    assert distance_to_similarity(0.6) == pytest.approx(0.5)
    assert all(a > b for a, b in itertools.pairwise(values))
    assert all(0.0 < v < 1.0 for v in values)
    assert distance_to_similarity(0.3) > 0.95 and not math.isnan(distance_to_similarity(9.0))


def test_batched_whole_check_agrees_with_the_per_component_split() -> None:
    # Given components of one person (whole), with a same-file pair, and with a far face
    people = People(seed=12)
    faces = [*people.faces("A", 5), *people.faces("B", 5), people.face("B", "B-file-0")]
    faces += [*people.faces("C", 4), people.face("D", "d-file")]
    run = clustering._Faces(faces, {})
    components = [np.arange(0, 5), np.arange(5, 11), np.arange(11, 16)]

    whole = clustering._whole(run, components, 0.55)

    expected = [
        len(groups) == 1 and groups[0].tolist() == members.tolist()
        for members in components
        for groups in [clustering._split(run, members, 0.55)]
    ]
    assert whole.tolist() == expected == [True, False, False]


def test_leader_pairs_are_close_pairs_that_connect_nearly_every_close_pair(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    faces, _ = library(seed=13, persons=200)
    emb = np.stack([f.embedding for f in faces])
    files = np.arange(len(faces)) // 2  # as library() pairs them
    small_leader_chunks(monkeypatch)

    a, b = clustering.leader_pairs(emb, files, 0.55)

    assert (np.square(emb[a] - emb[b]).sum(axis=1) < 0.55**2).all()
    assert (files[a] != files[b]).all()
    exact = np.square(emb[:, None, :] - emb[None, :, :]).sum(axis=2) < 0.55**2
    exact &= files[:, None] != files[None, :]
    rows, cols = np.nonzero(exact)
    labels = clustering._components(len(emb), a, b)
    assert (labels[rows] == labels[cols]).mean() > 0.99  # the close pairs end up connected
    assert len(a) < 0.6 * len(rows)  # with far fewer edges than all close pairs
