"""Incremental figure (face) clustering: where each face of a CreateFigureClusteringTask run goes.

Pure algorithm over 128-d dlib embeddings; the caller (``workers.processors.figure_clustering``)
reads and
writes the database. One call of :func:`plan` places the *candidates* (faces no run has seen
yet, plus faces an earlier run left independent) against the *existing* clusters, which are
never merged, renamed or emptied here.

Algorithm, over all candidates at once (sorted by figure id, so the output is deterministic):

1. **Join.** Every face goes to its nearest cluster centroid if the euclidean distance is below
   ``join`` — qualified or not (IMM lets lower-quality faces join a group). A cluster never
   takes two faces of one file: faces are accepted in increasing distance, so the closest face
   of a file wins and the others retry their next-nearest cluster (up to ``MAX_ROUNDS``).
2. **Link.** The qualified faces left over (the *pool*) are linked when closer than ``link``
   and from different files. Connected components of that graph are split by average-linkage
   agglomeration (stopping at ``link``; two faces of one file are never merged), which keeps a
   chain a-b-c of different people from becoming one group. A group with >= ``min_size``
   faces (all qualified, all from distinct files) becomes a new cluster.
3. **Late join.** Pool faces still unplaced (unqualified ones included) may join a cluster
   formed in step 2, as in step 1.
4. Everything else is ``INDEPENDENT`` (a later run takes it again).

Thresholds (euclidean distances between dlib embeddings; dlib's own same-person cut is 0.6):
``join`` = 0.55 (face -> centroid), ``link`` = 0.55 (face <-> face), ``min_size`` = 3 (IMM's
rule). Measured on the labelled portrait set (benchmarks/cluster_quality.py, 30 random
initial/incremental splits): precision stays 1.0 for ``join`` up to 0.58 and breaks at 0.60
(the closest other person's face lies 0.593 from a 3-face centroid), while the hardest face
of a person lies up to 0.543 from a 3-face centroid of its own person, so 0.55 is the low,
precision-favouring end of the working window [0.55, 0.58]. ``link`` is far less sensitive
because average linkage re-checks every component: precision and F1 are unchanged for any
``link`` in [0.5, 0.65], and 0.55 is the middle of that range.

Scale. Small problems are solved exactly with chunked float32 matrix products: step 1 is
O(Q K d) for Q faces and K clusters, step 2 O(P^2 d) for P pooled faces. Above
``EXACT_PAIRS`` distance pairs a step uses an approximate-nearest-neighbour index (faiss
HNSW on a 24-d random projection, exact distances recomputed on the full embeddings): step 1
asks an index over the K centroids for each face's ``JOIN_NEIGHBOURS`` nearest clusters
(``ann_neighbours``; the retries walk that list). Step 2 does not index every pooled face:
:func:`leader_pairs` is a *leader* pass — faces in chunks ask an index of leaders (one
representative face per blob found so far) for their nearest ones and link to those closer
than ``link``; a face no leader covers is compared exactly with the other uncovered faces of
its chunk and with the kept members of nearby leaders' stars, and becomes a leader unless one
of its chunk covers it. A person's faces form a blob tighter than ``link``, so the index
holds ~one face per person, and a first run over a whole library (K = 0, P ~ all faces) costs
one cheap search per face plus one insert per person. What the leader pass returns is a
spanning set of close pairs, not all of them: the components are what step 2 uses, and each
is re-checked exactly by the agglomeration (O(m^2)..O(m^3) per component of m faces — one
person's photos in practice; a component larger than ``MAX_COMPONENT`` is first split at a
tighter threshold). Everything around the index is numpy over arrays (placement, new
clusters, the check that a component is one group, batched by component size). With the
index, results can differ from the exact path on a face whose leader the search misses (and,
as faiss builds the graph on all cores, between runs); tests/unit/test_clustering.py checks
that both paths give the same clusters.

Index choices (measured on benchmarks/cluster_scale.py's synthetic faces, 250k and 1M): the
faces of one person form a tight blob (0.3-0.47) with other persons ~0.95 away, but the
blobs are spread isotropically over 128 dimensions, the hardest case for any index. HNSW
over every face (the previous design: M=16, efConstruction=40, efSearch=16, 64-d) cost ~80 %
of a 1M run and found only 0.85 of the link neighbours there (F1 0.918). faiss IVF (4,096
lists, nprobe 8) kept 0.79 of them, IVF with an HNSW quantizer 0.41, NN-descent cost 2.3x
the HNSW build, and a flat index over the leaders ~650 us per query. Over the leaders (random
points, ~one per person), HNSW finds a face's own leader among its 8 nearest with
probability 0.42 at 64-d/M=16/ef=16, 0.89 at 24-d/M=24/ef=16 (a lower projection keeps the
0.4-vs-0.95 gap, JL, and is easier to navigate; exact search at 24-d keeps 0.985, at 16-d
only 0.82), so ``INDEX_DIM`` = 24 and ``HNSW_M`` = 24; the faces the first search covers by
no leader (new persons, and the misses: early leaders are the hardest to reach) search again
with a wide beam (``LEADER_RETRY_EF``), which halves the persons split over two components.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

INDEPENDENT = "figure-cluster-id-independent"
UNAVAILABLE = "figure-cluster-id-unavailable"

CHUNK_ENTRIES = 1 << 24  # distance-matrix entries per chunk: 64 MB of float32
EXACT_PAIRS = 1 << 30  # above this many distance pairs a step uses the ANN index
JOIN_NEIGHBOURS = 8  # clusters the index proposes per face (more than MAX_ROUNDS retries)
LEADER_NEIGHBOURS = 8  # leaders the index proposes per pooled face
LEADER_CHUNK = 4_096  # pooled faces placed per index search (and leader batch)
LEADER_FIRST_CHUNK = 4_096  # the first chunk (no leaders yet: exact among themselves)
LEADER_RETRY_EF = 128  # beam of the second search for faces the first finds no leader for
STAR_MEMBERS = 16  # members of each leader's star kept for uncovered faces to link to
HNSW_M = 24  # graph degree; index memory ~ n (4 d + 8 M) bytes
HNSW_EF_CONSTRUCTION = 40  # build-time beam (faiss's default)
HNSW_EF_SEARCH = 16  # query-time beam of the leader search; at least k
JOIN_EF_SEARCH = 32  # query-time beam of the centroid search (step 1 and 3)
INDEX_DIM = 24  # the index navigates on a random projection of the embeddings to this
PROJECTION_SEED = 11
MAX_ROUNDS = 4  # how often a face that lost a same-file conflict tries its next-nearest cluster
MAX_COMPONENT = 1_000  # agglomeration is cubic; bigger components are first split more tightly
BATCH_COMPONENT = 64  # components up to this size are checked in batches (``_whole``)
TIGHTEN = 0.95  # factor applied to ``link`` for each such split
SIMILARITY_MIDPOINT = 0.6  # dlib's same-person cut maps to similarity 0.5
SIMILARITY_SLOPE = 12.0  # 0.3 -> 0.97, 0.4 -> 0.92, 0.5 -> 0.77, 0.7 -> 0.23
NEW_KEY = "new-{}"


@dataclass
class Candidate:
    figure_id: str
    file_id: str
    embedding: numpy.ndarray
    qualified: bool


@dataclass
class ExistingCluster:
    cluster_id: str
    centroid: numpy.ndarray  # mean of the member embeddings
    size: int
    file_ids: set[str]


@dataclass
class NewCluster:
    key: str
    figure_ids: list[str]
    centroid: numpy.ndarray


@dataclass
class Plan:
    assignments: dict[str, str]  # figure_id -> cluster_id | NewCluster.key | INDEPENDENT
    new_clusters: list[NewCluster]
    similarity: dict[str, float]  # figure_id -> FigureClusterConfidence, assigned faces only
    updated: dict[str, tuple[numpy.ndarray, int]]  # existing cluster_id -> (centroid, size)


@dataclass(frozen=True)
class Thresholds:
    join: float = 0.55  # face -> centroid distance to join a cluster
    link: float = 0.55  # face <-> face distance to link qualified faces into a new cluster
    min_size: int = 3  # qualified faces of distinct files needed for a new cluster


def distance_to_similarity(d: float) -> float:
    """FigureClusterConfidence for an embedding distance: a logistic curve that is 0.5 at
    dlib's same-person cut (0.6), ~0.97 at a typical same-person distance to a centroid (0.3)
    and falls towards 0 for different people (0.8+)."""
    return 1.0 / (1.0 + math.exp(SIMILARITY_SLOPE * (d - SIMILARITY_MIDPOINT)))


class _Faces:
    """Candidates as arrays; rows are augmented so that one matrix product gives squared
    distances: [x, |x|^2, 1] . [-2y, 1, |y|^2] = |x - y|^2."""

    def __init__(self, candidates: Sequence[Candidate], codes: dict[str, int]) -> None:
        self.ids = [c.figure_id for c in candidates]
        emb = numpy.stack([numpy.asarray(c.embedding, dtype=numpy.float32) for c in candidates])
        self.emb = emb
        self.left = _left(emb)
        self.files = numpy.array([_code(codes, c.file_id) for c in candidates], dtype=numpy.int64)
        self.qualified = numpy.array([c.qualified for c in candidates], dtype=bool)


def _left(x: numpy.ndarray) -> numpy.ndarray:
    sq = numpy.einsum("ij,ij->i", x, x)[:, None]
    return numpy.hstack([x, sq, numpy.ones_like(sq)]).astype(numpy.float32)


def _right(x: numpy.ndarray) -> numpy.ndarray:
    sq = numpy.einsum("ij,ij->i", x, x)[:, None]
    return numpy.hstack([-2.0 * x, numpy.ones_like(sq), sq]).astype(numpy.float32)


def _code(codes: dict[str, int], file_id: str) -> int:
    return codes.setdefault(file_id, len(codes))


class _Clusters:
    """Existing and new clusters as running sums, with a file -> clusters index so that a
    same-file conflict is a set lookup. Only the candidates' files (already in ``codes``) are
    indexed: no other file can conflict, and indexing every member file of a large dataset
    would cost more than the matching itself."""

    def __init__(
        self, existing: Sequence[ExistingCluster], codes: dict[str, int], dim: int
    ) -> None:
        self.dim = dim
        self.keys = [c.cluster_id for c in existing]
        self.sums = [numpy.asarray(c.centroid, dtype=numpy.float64) * c.size for c in existing]
        self.sizes = [c.size for c in existing]
        self.members: list[list[str]] = [[] for _ in existing]
        self.n_existing = len(existing)
        self.by_file: dict[int, set[int]] = {}
        candidate_files = codes.keys()
        for index, cluster in enumerate(existing):
            for file_id in cluster.file_ids & candidate_files:
                self.by_file.setdefault(codes[file_id], set()).add(index)

    def centroids(self, which: Sequence[int]) -> numpy.ndarray:
        return numpy.array([self.sums[i] / max(self.sizes[i], 1) for i in which], numpy.float32)

    def has_file(self, cluster: int, file_code: int) -> bool:
        return cluster in self.by_file.get(file_code, ())

    def add(self, cluster: int, figure_id: str, file_code: int, emb: numpy.ndarray) -> None:
        self.sums[cluster] = self.sums[cluster] + emb
        self.sizes[cluster] += 1
        self.members[cluster].append(figure_id)
        self.by_file.setdefault(file_code, set()).add(cluster)

    def create_many(
        self,
        members: list[list[str]],
        file_codes: numpy.ndarray,
        group: numpy.ndarray,
        sums: numpy.ndarray,
    ) -> range:
        """New clusters, one per entry of ``members`` (faces of distinct files): ``group`` is
        the new cluster (0..) of each face whose file is in ``file_codes``, ``sums`` the
        clusters' embedding sums. Returns their indices."""
        first = len(self.keys)
        self.keys.extend(NEW_KEY.format(first + i - self.n_existing) for i in range(len(members)))
        self.sums.extend(sums)
        self.sizes.extend(len(m) for m in members)
        self.members.extend(members)
        for file_code, cluster in zip(file_codes.tolist(), (group + first).tolist(), strict=True):
            self.by_file.setdefault(file_code, set()).add(cluster)
        return range(first, len(self.keys))


@dataclass
class _Run:
    """State of one :func:`plan` call. Placement is kept in arrays indexed by face (cluster
    index or -1, and the distance that placed it), so that steps over a million faces are
    numpy operations rather than Python loops."""

    faces: _Faces
    clusters: _Clusters
    thresholds: Thresholds
    cluster_of: numpy.ndarray = field(init=False)
    distance: numpy.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.cluster_of = numpy.full(len(self.faces.ids), -1, dtype=numpy.int64)
        self.distance = numpy.zeros(len(self.faces.ids), dtype=numpy.float64)


def plan(
    existing: list[ExistingCluster],
    candidates: list[Candidate],
    thresholds: Thresholds = Thresholds(),
) -> Plan:
    """Place ``candidates`` into ``existing`` clusters or new ones (see the module docstring).
    Every candidate appears in ``assignments``; existing clusters are only ever added to."""
    if not candidates:
        return Plan({}, [], {}, {})
    codes: dict[str, int] = {}
    ordered = sorted(candidates, key=lambda c: c.figure_id)
    faces = _Faces(ordered, codes)
    clusters = _Clusters(sorted(existing, key=lambda c: c.cluster_id), codes, faces.emb.shape[1])
    run = _Run(faces, clusters, thresholds)
    everyone = numpy.arange(len(ordered))
    _join(run, everyone, range(len(run.clusters.keys)))
    pool = _unplaced(run, everyone)
    created = _link(run, pool)
    leftover = _unplaced(run, pool)
    if created and len(leftover):
        _join(run, leftover, created)
    return _result(run)


def _unplaced(run: _Run, faces: numpy.ndarray) -> numpy.ndarray:
    return faces[run.cluster_of[faces] < 0]


# -- step 1 and 3: nearest centroid within ``join`` --------------------------------------------


def _join(run: _Run, faces: numpy.ndarray, which: Sequence[int]) -> None:
    """Place ``faces`` in their nearest cluster among ``which`` (cluster indices)."""
    which = list(which)
    if not which or not len(faces):
        return
    if len(faces) * len(which) > EXACT_PAIRS:
        _join_indexed(run, faces, which)
        return
    right = _right(run.clusters.centroids(which))
    limit = run.thresholds.join**2
    best, dist2 = _nearest(run.faces.left[faces], right)
    proposals = [
        (float(d), int(f), which[int(b)])
        for f, b, d in zip(faces, best, dist2, strict=True)
        if d < limit
    ]
    for _ in range(MAX_ROUNDS):
        losers = _accept(run, proposals)
        if not losers:
            return
        proposals = _retry(run, numpy.array(losers), which, right, limit)


def _join_indexed(run: _Run, faces: numpy.ndarray, which: list[int]) -> None:
    """Step 1/3 through an ANN index over the centroids: each face's ``JOIN_NEIGHBOURS``
    nearest clusters (exact distances, nearest first) are its proposals, and a face refused
    for a same-file conflict proposes the next of its list that does not hold its file."""
    limit = run.thresholds.join**2
    centroids = run.clusters.centroids(which)
    neighbours, dist2 = ann_neighbours(centroids, run.faces.emb[faces], JOIN_NEIGHBOURS)
    rank = dict.fromkeys(faces.tolist(), 0)
    row_of = {int(f): row for row, f in enumerate(faces)}

    def proposal(face: int) -> tuple[float, int, int] | None:
        row = row_of[face]
        taken = run.clusters.by_file.get(int(run.faces.files[face]), set())
        while rank[face] < neighbours.shape[1]:
            col, d = int(neighbours[row, rank[face]]), float(dist2[row, rank[face]])
            if col < 0 or not d < limit:
                return None
            if which[col] not in taken:
                return (d, face, which[col])
            rank[face] += 1
        return None

    proposals = [p for f in faces.tolist() if (p := proposal(f)) is not None]
    for _ in range(MAX_ROUNDS):
        losers = _accept(run, proposals)
        if not losers:
            return
        proposals = [p for f in losers if (p := proposal(f)) is not None]


def ann_neighbours(
    base: numpy.ndarray, queries: numpy.ndarray, k: int
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The ``k`` approximate nearest ``base`` rows of each query: positions (-1 where fewer
    were found) and exact squared distances, nearest first. The HNSW graph (faiss) is built
    on a fixed random orthogonal projection to ``INDEX_DIM`` dimensions, which keeps
    distances within a few percent (Johnson-Lindenstrauss) at half the cost; the distances
    returned are recomputed on the full embeddings. Queries run in chunks so that the
    intermediate arrays stay small."""
    base = numpy.ascontiguousarray(base, dtype=numpy.float32)
    index, project = _hnsw(base)
    return _search(index, project, base, queries, k)


def leader_pairs(
    emb: numpy.ndarray, files: numpy.ndarray, radius: float
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Pairs (a, b) of rows of ``emb`` closer than ``radius`` (exact distances, other files)
    that connect the rows nearly as the full graph of such pairs does (a spanning set, not
    every pair), without an index over every row: *leader* clustering over an HNSW index of
    representatives.

    Rows are taken in chunks of ``LEADER_CHUNK``. Each row asks the index of leaders for its
    ``LEADER_NEIGHBOURS`` nearest ones and is linked to every one closer than ``radius``.
    A row with no leader that close is *uncovered*: it is linked to the uncovered rows of its
    chunk closer than ``radius`` (exact, one matrix product) and to the members of the stars
    of its leaders within ``2 radius`` (by the triangle inequality, a row within ``radius`` of
    a member of a star lies within ``2 radius`` of its leader; the first ``STAR_MEMBERS``
    members of each star are kept for this), and the uncovered rows that no earlier one of
    its chunk covers become leaders. A person's photos form a blob tighter than ``radius``,
    so the index holds ~one row per person, not one per face: a first run over a library of
    n faces of p persons builds an index of ~p rows and makes n cheap searches in it.

    What this may miss, against all close pairs: an edge between two covered rows of
    different stars (each star is still connected inside; two stars of one person stay apart
    only if no row between them was uncovered), and leaders the approximate search misses."""
    emb = numpy.ascontiguousarray(emb, dtype=numpy.float32)
    leaders = _Leaders(emb, files, radius)
    start = 0
    while start < len(emb):
        # the first chunk is all leaders-to-be, compared exactly among themselves: keep it small
        size = LEADER_CHUNK if start else LEADER_FIRST_CHUNK
        leaders.take(numpy.arange(start, min(len(emb), start + size)))
        start += size
    leaders.link_leaders()
    return leaders.pairs()


class _Leaders:
    """State of :func:`leader_pairs`: the HNSW index of leaders, each leader's first star
    members, and the pairs found so far."""

    def __init__(self, emb: numpy.ndarray, files: numpy.ndarray, radius: float) -> None:
        self.emb, self.files, self.limit = emb, files, radius**2
        self.index, self.project = _empty_hnsw(emb.shape[1])
        self.rows = numpy.empty(0, dtype=numpy.int64)  # row of each leader
        self.stars = numpy.empty((0, STAR_MEMBERS), dtype=numpy.int64)  # -1: free slot
        self.counts = numpy.empty(0, dtype=numpy.int64)
        self.a: list[numpy.ndarray] = []
        self.b: list[numpy.ndarray] = []

    def pairs(self) -> tuple[numpy.ndarray, numpy.ndarray]:
        if not self.a:
            return numpy.empty(0, dtype=numpy.int64), numpy.empty(0, dtype=numpy.int64)
        return numpy.concatenate(self.a), numpy.concatenate(self.b)

    def link_leaders(self) -> None:
        """Pairs between leaders that the graph's bottom layer links: building it searched
        each leader's nearest earlier leaders, so a leader made for a face whose own
        person's leader the search missed is linked back to it here at no search cost."""
        for start, links in _bottom_links(self.index, len(self.rows)):
            ordinal = numpy.repeat(numpy.arange(start, start + len(links)), links.shape[1])
            other = links.ravel()
            self._keep_close(self.rows[ordinal[other >= 0]], self.rows[other[other >= 0]])

    def take(self, rows: numpy.ndarray) -> None:
        """One chunk: link its rows to the leaders, then the uncovered ones among themselves
        and to nearby stars; the uncovered ones not covered in the chunk become leaders."""
        if not len(self.rows):
            self._found(rows)
            return
        near, dist2, hit = self._hits(rows, HNSW_EF_SEARCH)
        lone = numpy.flatnonzero(~hit.any(axis=1))
        if len(lone) and LEADER_RETRY_EF:  # a greedy search misses some: search wider
            near[lone], dist2[lone], hit[lone] = self._hits(rows[lone], LEADER_RETRY_EF)
        r, c = numpy.nonzero(hit)
        self._keep(rows[r], self.rows[near[r, c]])
        covered = hit.any(axis=1)
        nearest = numpy.where(hit, dist2, numpy.inf).argmin(axis=1)
        first = near[numpy.arange(len(rows)), nearest]  # the nearest hit, for covered rows
        self._join_stars(rows[covered], first[covered])
        lone = numpy.flatnonzero(~covered)
        if len(lone):
            self._link_to_stars(rows[lone], near[lone], dist2[lone])
            # the exact comparison among them is quadratic: many (early on, when most
            # persons have no leader yet) are placed a block at a time, the rest searched
            # again among the leaders the block made
            self._found(rows[lone[:LEADER_FIRST_CHUNK]])
            if len(lone) > LEADER_FIRST_CHUNK:
                self.take(rows[lone[LEADER_FIRST_CHUNK:]])

    def _hits(
        self, rows: numpy.ndarray, ef: int
    ) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """:meth:`_nearest_leaders` with beam ``ef``, and which of them are links (closer than
        the radius, another file)."""
        self.index.hnsw.efSearch = max(ef, LEADER_NEIGHBOURS)
        near, dist2 = self._nearest_leaders(rows)
        other = self.files[self.rows[numpy.maximum(near, 0)]] != self.files[rows][:, None]
        return near, dist2, (near >= 0) & (dist2 < self.limit) & other

    def _nearest_leaders(self, rows: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Each row's approximate nearest leaders (ordinals, -1 for none) and their exact
        squared distances (``|x|^2 + |y|^2 - 2 x.y``, without a rows x k x d temporary)."""
        x = self.emb[rows]
        _, near = self.index.search(numpy.ascontiguousarray(x @ self.project), LEADER_NEIGHBOURS)
        y = self.emb[self.rows[numpy.maximum(near, 0)]]
        dist2 = (
            numpy.einsum("ij,ij->i", x, x)[:, None]
            + numpy.einsum("ikj,ikj->ik", y, y)
            - 2.0 * numpy.einsum("ij,ikj->ik", x, y)
        )
        dist2[near < 0] = numpy.inf
        return near, dist2

    def _link_to_stars(
        self, rows: numpy.ndarray, near: numpy.ndarray, dist2: numpy.ndarray
    ) -> None:
        """Pairs between uncovered ``rows`` and the kept members of the stars of their
        leaders within ``2 radius``."""
        close = (near >= 0) & (dist2 < 4 * self.limit)
        r, c = numpy.nonzero(close)
        if not len(r):
            return
        members = self.stars[near[r, c]]  # pairs x STAR_MEMBERS rows, -1 for free slots
        row = numpy.repeat(rows[r], STAR_MEMBERS)
        member = members.ravel()
        self._keep_close(row[member >= 0], member[member >= 0])

    def _found(self, rows: numpy.ndarray) -> None:
        """Uncovered ``rows`` of one chunk: exact pairs among them, and the greedy leaders
        (in row order, a row no earlier leader of the chunk covers); the others join the
        star of the first leader that covers them."""
        x = self.emb[rows]
        close = _left(x) @ _right(x).T < self.limit
        numpy.fill_diagonal(close, False)
        close &= self.files[rows][:, None] != self.files[rows][None, :]
        i, j = numpy.nonzero(numpy.triu(close, 1))
        self._keep(rows[i], rows[j])
        owner = numpy.full(len(rows), -1, dtype=numpy.int64)
        lead: list[int] = []
        for r in range(len(rows)):
            if owner[r] < 0:
                owner[r] = len(lead)
                taken = close[r] & (owner < 0)
                owner[taken] = len(lead)
                lead.append(r)
        first = len(self.rows)
        leads = rows[numpy.array(lead, dtype=numpy.int64)]
        self.index.add(numpy.ascontiguousarray(self.emb[leads] @ self.project))
        self.rows = numpy.concatenate([self.rows, leads])
        self.stars = numpy.vstack(
            [self.stars, numpy.full((len(leads), STAR_MEMBERS), -1, dtype=numpy.int64)]
        )
        self.counts = numpy.concatenate([self.counts, numpy.zeros(len(leads), numpy.int64)])
        self._join_stars(rows, owner + first)

    def _join_stars(self, rows: numpy.ndarray, leaders: numpy.ndarray) -> None:
        """Record ``rows`` as members of the stars of ``leaders`` (up to ``STAR_MEMBERS``
        per star)."""
        if not len(rows):
            return
        order = numpy.argsort(leaders, kind="stable")
        rows, leaders = rows[order], leaders[order]
        starts = numpy.flatnonzero(numpy.r_[True, leaders[1:] != leaders[:-1]])
        runs = numpy.diff(numpy.r_[starts, len(leaders)])
        rank = numpy.arange(len(leaders)) - numpy.repeat(starts, runs)
        slot = self.counts[leaders] + rank
        room = slot < STAR_MEMBERS
        self.stars[leaders[room], slot[room]] = rows[room]
        numpy.add.at(self.counts, leaders, 1)

    def _keep_close(self, a: numpy.ndarray, b: numpy.ndarray) -> None:
        """Keep the candidate pairs (a[i], b[i]) closer than the radius and of other files,
        in chunks so that the gathered rows stay small."""
        step = max(1, CHUNK_ENTRIES // self.emb.shape[1])
        for start in range(0, len(a), step):
            x, y = a[start : start + step], b[start : start + step]
            d2 = numpy.square(self.emb[x] - self.emb[y]).sum(axis=1)
            keep = (d2 < self.limit) & (self.files[x] != self.files[y])
            self._keep(x[keep], y[keep])

    def _keep(self, a: numpy.ndarray, b: numpy.ndarray) -> None:
        if len(a):
            self.a.append(a)
            self.b.append(b)


def _hnsw(base: numpy.ndarray) -> tuple[Any, numpy.ndarray]:
    """An HNSW index over the projected ``base`` rows, and the projection."""
    index, project = _empty_hnsw(base.shape[1])
    index.add(numpy.ascontiguousarray(base @ project))
    return index, project


def _empty_hnsw(dim: int) -> tuple[Any, numpy.ndarray]:
    """An empty HNSW index over ``INDEX_DIM``-d projections of ``dim``-d rows, and the
    projection."""
    import faiss  # deferred: only large runs need it, and it starts an OpenMP pool

    project = _projection(dim)
    # Vectors stored as float16: the search is bound by memory reads, and half the bytes
    # per vector made it 1.4-1.6x faster with the same recall (distances are recomputed
    # exactly on the full embeddings afterwards, so the rounding only steers the beam).
    fp16 = faiss.ScalarQuantizer.QT_fp16  # the stubs know one overload of the constructor
    index = faiss.IndexHNSWSQ(project.shape[1], fp16, HNSW_M)  # type: ignore[arg-type]
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index, project


def _search(
    index: Any, project: numpy.ndarray, base: numpy.ndarray, queries: numpy.ndarray, k: int
) -> tuple[numpy.ndarray, numpy.ndarray]:
    queries = numpy.ascontiguousarray(queries, dtype=numpy.float32)
    index.hnsw.efSearch = max(JOIN_EF_SEARCH, k)
    k = min(k, len(base))
    positions = numpy.empty((len(queries), k), dtype=numpy.int64)
    dist2 = numpy.empty((len(queries), k), dtype=numpy.float32)
    step = max(1, CHUNK_ENTRIES // (k * base.shape[1]))
    for start in range(0, len(queries), step):
        chunk = queries[start : start + step]
        _, found = index.search(numpy.ascontiguousarray(chunk @ project), k)
        exact = numpy.square(base[found] - chunk[:, None, :]).sum(axis=2)
        exact[found < 0] = numpy.inf
        order = numpy.argsort(exact, axis=1, kind="stable")
        positions[start : start + step] = numpy.take_along_axis(found, order, axis=1)
        dist2[start : start + step] = numpy.take_along_axis(exact, order, axis=1)
    return positions, dist2


def _bottom_links(index: Any, n: int) -> Iterable[tuple[int, numpy.ndarray]]:
    """The bottom-layer links of a faiss HNSW graph over ``n`` rows, in chunks of rows:
    (first row, links of each row with -1 for none)."""
    import faiss

    hnsw = index.hnsw
    degree = int(hnsw.nb_neighbors(0))
    offsets = faiss.vector_to_array(hnsw.offsets)[:n].astype(numpy.int64)
    neighbours = faiss.vector_to_array(hnsw.neighbors)
    step = max(1, CHUNK_ENTRIES // (4 * degree * index.d))  # the callers gather full rows
    for start in range(0, n, step):
        chunk = offsets[start : start + step, None] + numpy.arange(degree)[None, :]
        yield start, neighbours[chunk].astype(numpy.int64)


def _projection(dim: int) -> numpy.ndarray:
    """A fixed random orthogonal ``dim`` x ``INDEX_DIM`` matrix (identity if not larger)."""
    if dim <= INDEX_DIM:
        return numpy.eye(dim, dtype=numpy.float32)
    gaussian = numpy.random.default_rng(PROJECTION_SEED).normal(size=(dim, dim))
    q, _ = numpy.linalg.qr(gaussian)
    return numpy.ascontiguousarray(q[:, :INDEX_DIM], dtype=numpy.float32)


def _nearest(left: numpy.ndarray, right: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Index of and squared distance to the nearest ``right`` row for every ``left`` row."""
    rows = max(1, CHUNK_ENTRIES // max(len(right), 1))
    best = numpy.empty(len(left), dtype=numpy.int64)
    dist2 = numpy.empty(len(left), dtype=numpy.float32)
    for start in range(0, len(left), rows):
        block = left[start : start + rows] @ right.T
        best[start : start + rows] = block.argmin(axis=1)
        dist2[start : start + rows] = block[numpy.arange(len(block)), best[start : start + rows]]
    return best, numpy.maximum(dist2, 0.0)


def _accept(run: _Run, proposals: list[tuple[float, int, int]]) -> list[int]:
    """Accept proposals closest first; a cluster already holding the face's file refuses it.
    Returns the refused faces."""
    losers = []
    for dist2, face, cluster in sorted(proposals):
        file_code = int(run.faces.files[face])
        if run.clusters.has_file(cluster, file_code):
            losers.append(face)
            continue
        run.clusters.add(cluster, run.faces.ids[face], file_code, run.faces.emb[face])
        run.cluster_of[face] = cluster
        run.distance[face] = math.sqrt(dist2)
    return losers


def _retry(
    run: _Run, losers: numpy.ndarray, which: list[int], right: numpy.ndarray, limit: float
) -> list[tuple[float, int, int]]:
    """Next proposals for refused faces: nearest cluster that does not hold their file.
    Distances use the centroids of the start of this step, like the first proposals."""
    dist2 = run.faces.left[losers] @ right.T
    column = {cluster: col for col, cluster in enumerate(which)}
    for row, face in enumerate(losers):
        taken = run.clusters.by_file.get(int(run.faces.files[face]), set())
        dist2[row, [column[c] for c in taken if c in column]] = numpy.inf
    best = dist2.argmin(axis=1)
    return [
        (float(dist2[row, b]), int(face), which[int(b)])
        for row, (face, b) in enumerate(zip(losers, best, strict=True))
        if dist2[row, b] < limit
    ]


# -- step 2: link the pool's qualified faces into new clusters --------------------------------


def _link(run: _Run, pool: numpy.ndarray) -> list[int]:
    """New clusters from the qualified faces of ``pool``; returns their cluster indices."""
    pool = pool[run.faces.qualified[pool]]
    if len(pool) < run.thresholds.min_size:
        return []
    a, b = _pool_edges(run.faces, pool, run.thresholds.link)
    labels = _components(len(pool), a, b)
    components = [pool[m] for m in _groups(labels) if len(m) >= run.thresholds.min_size]
    whole = _whole(run.faces, components, run.thresholds.link)
    groups: list[numpy.ndarray] = []
    for members, is_whole in zip(components, whole.tolist(), strict=True):
        found = [members] if is_whole else _split(run.faces, members, run.thresholds.link)
        groups.extend(g for g in found if len(g) >= run.thresholds.min_size)
    return list(_create(run, groups))


def _whole(faces: _Faces, components: list[numpy.ndarray], link: float) -> numpy.ndarray:
    """Which components are one group as they are: every pair closer than ``link`` and of
    distinct files (what :func:`_split` checks first). Components of equal size are checked
    together with batched matrix products, because a first run has ~one per person."""
    whole = numpy.zeros(len(components), dtype=bool)
    sizes = numpy.array([len(c) for c in components], dtype=numpy.int64)
    for size in numpy.unique(sizes[sizes <= BATCH_COMPONENT]).tolist():
        which = numpy.flatnonzero(sizes == size)
        step = max(1, CHUNK_ENTRIES // (size * (size + faces.left.shape[1])))
        for start in range(0, len(which), step):
            rows = which[start : start + step]
            members = numpy.stack([components[i] for i in rows.tolist()])
            whole[rows] = _all_close_distinct(faces, members, link)
    return whole


def _all_close_distinct(faces: _Faces, members: numpy.ndarray, link: float) -> numpy.ndarray:
    """For each row of ``members`` (G x m face indices): all pairs closer than ``link``
    and no two faces of one file."""
    left = faces.left[members]
    right = _right(faces.emb[members.ravel()]).reshape(left.shape)
    dist2 = numpy.matmul(left, right.transpose(0, 2, 1))
    close = dist2.reshape(len(members), -1).max(axis=1) < link**2
    files = numpy.sort(faces.files[members], axis=1)
    distinct = (numpy.diff(files, axis=1) != 0).all(axis=1)
    return close & distinct


def _pool_edges(
    faces: _Faces, pool: numpy.ndarray, link: float
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Edges (positions in ``pool``) between faces closer than ``link``, not of one file,
    that connect the pool as all such edges do: all of them (exactly) for a small pool,
    else those of :func:`leader_pairs`."""
    if len(pool) ** 2 > EXACT_PAIRS:
        return leader_pairs(faces.emb[pool], faces.files[pool], link)
    return _close_pairs(faces, pool, link)


def _close_pairs(
    faces: _Faces, pool: numpy.ndarray, link: float
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Every pair (row, column) of pool positions closer than ``link``, not of one file."""
    limit = link**2
    right = _right(faces.emb[pool])
    step = max(1, CHUNK_ENTRIES // len(pool))
    found_a, found_b = [], []
    for start in range(0, len(pool), step):
        r, c = numpy.nonzero(faces.left[pool[start : start + step]] @ right.T < limit)
        a = r + start
        keep = faces.files[pool[a]] != faces.files[pool[c]]
        found_a.append(a[keep])
        found_b.append(c[keep])
    return numpy.concatenate(found_a), numpy.concatenate(found_b)


def _components(n: int, a: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
    """Connected-component label (smallest member position) of each of ``n`` nodes:
    min-label propagation over the edges with pointer jumping, all in numpy."""
    labels = numpy.arange(n)
    while True:
        low = numpy.minimum(labels[a], labels[b])
        new = labels.copy()
        numpy.minimum.at(new, a, low)
        numpy.minimum.at(new, b, low)
        new = new[new]
        if numpy.array_equal(new, labels):
            return labels
        labels = new


def _groups(labels: numpy.ndarray) -> Iterable[numpy.ndarray]:
    order = numpy.argsort(labels, kind="stable")
    bounds = numpy.flatnonzero(numpy.diff(labels[order])) + 1
    return numpy.split(order, bounds)


def _split(faces: _Faces, members: numpy.ndarray, link: float) -> list[numpy.ndarray]:
    """Groups of one component: the whole component when every pair is closer than ``link``
    and of distinct files (the common case), else average-linkage agglomeration."""
    if len(members) > MAX_COMPONENT:
        return _split_large(faces, members, link)
    emb = faces.emb[members]
    dist = numpy.sqrt(numpy.maximum(_left(emb) @ _right(emb).T, 0.0))
    files = faces.files[members]
    dist[files[:, None] == files[None, :]] = numpy.inf  # also the diagonal
    numpy.fill_diagonal(dist, 0.0)
    if dist.max() < link:
        return [members]
    numpy.fill_diagonal(dist, numpy.inf)
    return [members[g] for g in _agglomerate(dist, link)]


def _split_large(faces: _Faces, members: numpy.ndarray, link: float) -> list[numpy.ndarray]:
    """A component too large to agglomerate (a chain through many people): re-link it at a
    tighter threshold and split the resulting components."""
    tighter = link * TIGHTEN
    a, b = _pool_edges(faces, members, tighter)
    out: list[numpy.ndarray] = []
    for part in _groups(_components(len(members), a, b)):
        out.extend(_split(faces, members[part], link if len(part) <= MAX_COMPONENT else tighter))
    return out


def _agglomerate(dist: numpy.ndarray, link: float) -> list[numpy.ndarray]:
    """Average-linkage agglomeration of a distance matrix (diagonal inf), stopping at
    ``link``. An infinite distance (same file) stays infinite in every average, so such
    faces are never merged."""
    n = len(dist)
    groups: list[list[int]] = [[i] for i in range(n)]
    size = numpy.ones(n)
    while True:
        i, j = divmod(int(dist.argmin()), n)
        if not dist[i, j] < link:
            break
        row = (size[i] * dist[i] + size[j] * dist[j]) / (size[i] + size[j])
        dist[i, :], dist[:, i] = row, row
        dist[j, :], dist[:, j] = numpy.inf, numpy.inf
        dist[i, i] = numpy.inf
        groups[i] += groups[j]
        groups[j] = []
        size[i] += size[j]
    return [numpy.array(sorted(g)) for g in groups if g]


def _create(run: _Run, groups: list[numpy.ndarray]) -> range:
    """New clusters holding ``groups``, all at once; similarities are distances to their
    centroids. Returns the clusters' indices."""
    if not groups:
        return range(0)
    faces = numpy.concatenate(groups)
    sizes = numpy.array([len(g) for g in groups], dtype=numpy.int64)
    group = numpy.repeat(numpy.arange(len(groups)), sizes)
    emb = run.faces.emb[faces]
    starts = numpy.r_[0, numpy.cumsum(sizes)[:-1]]
    sums = numpy.add.reduceat(emb, starts, axis=0, dtype=numpy.float64)
    ids = [run.faces.ids[f] for f in faces.tolist()]
    bounds = numpy.r_[0, numpy.cumsum(sizes)].tolist()
    members = [ids[a:b] for a, b in itertools.pairwise(bounds)]
    created = run.clusters.create_many(members, run.faces.files[faces], group, sums)
    run.cluster_of[faces] = group + created.start
    centroids = (sums / sizes[:, None]).astype(numpy.float32)
    run.distance[faces] = numpy.linalg.norm(emb - centroids[group], axis=1)
    return created


# -- result -----------------------------------------------------------------------------------


def _similarities(dist: numpy.ndarray) -> list[float]:
    """:func:`distance_to_similarity` of many distances at once (same float64 arithmetic)."""
    return (1.0 / (1.0 + numpy.exp(SIMILARITY_SLOPE * (dist - SIMILARITY_MIDPOINT)))).tolist()


def _result(run: _Run) -> Plan:
    clusters = run.clusters
    keys = numpy.array([*clusters.keys, INDEPENDENT], dtype=object)
    assignments = dict(zip(run.faces.ids, keys[run.cluster_of].tolist(), strict=True))
    placed = numpy.flatnonzero(run.cluster_of >= 0)
    ids = [run.faces.ids[f] for f in placed.tolist()]
    similarity = dict(zip(ids, _similarities(run.distance[placed]), strict=True))
    new_clusters = [
        NewCluster(clusters.keys[i], clusters.members[i], clusters.centroids([i])[0])
        for i in range(clusters.n_existing, len(clusters.keys))
    ]
    updated = {
        clusters.keys[i]: (clusters.centroids([i])[0], clusters.sizes[i])
        for i in range(clusters.n_existing)
        if clusters.members[i]
    }
    return Plan(assignments, new_clusters, similarity, updated)
