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
``EXACT_PAIRS`` distance pairs a step uses an approximate-nearest-neighbour index instead
(faiss HNSW on a 64-d random projection, exact distances recomputed): step 1 asks an index
over the K centroids for each face's ``JOIN_NEIGHBOURS`` nearest clusters
(``ann_neighbours``; the retries walk that list), step 2 links each pooled face to the faces
closer than ``link`` among its ``LINK_NEIGHBOURS`` nearest and among its links in the
graph's bottom layer (``ann_self_pairs``: building the graph has already found each face's
nearest earlier faces, so those links cost no search and repair the faces a greedy search
misses). Building and querying HNSW is O(n log n), so a first run over a whole library
(K = 0, P ~ all faces) is near-linear, in one pass. Everything around the index is numpy
over arrays (placement, new clusters, the check that a component is one group, batched by
component size), with no Python loop over faces. What the index may miss is a neighbour,
which rarely matters because a person's faces are linked many times over and a component is
re-checked exactly by step 2's agglomeration (O(m^2)..O(m^3) per component of m faces — one
person's photos in practice; a component larger than ``MAX_COMPONENT`` is first split at a
tighter threshold). With the index, results can differ from the exact path on a face whose
nearest neighbours the index misses (and, as faiss builds the graph on all cores, between
runs); tests/unit/test_clustering.py checks that both paths give the same clusters.

Why HNSW (measured on benchmarks/cluster_scale.py's synthetic faces, 250k and 1M, CPU
seconds on the shared 2-core machine): the faces of one person form a tight blob (0.3-0.47)
with other persons ~0.95 away, but the blobs are spread isotropically over 128 dimensions,
so space partitions do not follow persons. faiss IVF with a k-means quantizer trained on a
sample (4,096 lists, nprobe 8 at 1M) kept only 0.79 of the link neighbours, and its coarse
assignment alone cost as much as the HNSW search; with 15,600 lists and an HNSW quantizer it
kept 0.41 (a list keeps a person together only when it holds fewer than ~5-8 persons, i.e.
>= n/100 lists trained on nearly every face). Random-projection trees or LSH split a
0.4-wide blob at most cuts (LSH with this 2x distance gap needs ~n^0.4 tables). faiss
NN-descent (``IndexNNDescentFlat``, K=16) found the links (component recall 0.9996 at 250k)
but cost 2.3x the HNSW build. HNSW (M=16, efConstruction=40): bottom-layer links alone put
0.957 of same-person pairs into one component at 250k, the k-NN search 0.992, both 0.993.
"""

from __future__ import annotations

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
LINK_NEIGHBOURS = 16  # faces the index proposes per pooled face
HNSW_M = 16  # graph degree (faiss's default); index memory ~ n (4 d + 8 M) bytes
HNSW_EF_CONSTRUCTION = 40  # build-time beam (faiss's default)
HNSW_EF_SEARCH = 16  # query-time beam; at least k
INDEX_DIM = 64  # the index navigates on a random projection of the embeddings to this
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

    def create(self, figure_ids: list[str], file_codes: list[int], emb: numpy.ndarray) -> int:
        """A new cluster of the given faces (distinct files); returns its index."""
        cluster = len(self.keys)
        self.keys.append(NEW_KEY.format(cluster - self.n_existing))
        self.sums.append(emb.sum(axis=0, dtype=numpy.float64))
        self.sizes.append(len(figure_ids))
        self.members.append(figure_ids)
        for file_code in file_codes:
            self.by_file.setdefault(file_code, set()).add(cluster)
        return cluster


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


def ann_self_pairs(
    emb: numpy.ndarray, k: int, radius: float
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Pairs (a, b) of rows of ``emb`` closer than ``radius`` (exact distances) among the
    candidates of an HNSW index: each row's ``k`` approximate nearest rows, plus the links of
    the graph's bottom layer, which building it has found already (each row's nearest rows
    among those added before it, and the rows added later that chose it). The links cost no
    search, and they connect a person's faces where a greedy search from the top misses
    some. Candidates are filtered chunk by chunk, so memory stays ~ the pairs kept."""
    emb = numpy.ascontiguousarray(emb, dtype=numpy.float32)
    index, project = _hnsw(emb)
    found, dist2 = _search(index, project, emb, emb, k)
    keep = (found >= 0) & (dist2 < radius**2)
    a = [numpy.nonzero(keep)[0]]
    b = [found[keep]]
    del found, dist2, keep
    for start, links in _bottom_links(index, len(emb)):
        rows = numpy.repeat(numpy.arange(start, start + len(links)), links.shape[1])
        cols = links.ravel()
        rows, cols = rows[cols >= 0], cols[cols >= 0]
        close = numpy.square(emb[rows] - emb[cols]).sum(axis=1) < radius**2
        a.append(rows[close])
        b.append(cols[close])
    return numpy.concatenate(a), numpy.concatenate(b)


def _hnsw(base: numpy.ndarray) -> tuple[Any, numpy.ndarray]:
    """An HNSW index over the projected ``base`` rows, and the projection."""
    import faiss  # deferred: only large runs need it, and it starts an OpenMP pool

    project = _projection(base.shape[1])
    index = faiss.IndexHNSWFlat(project.shape[1], HNSW_M)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(numpy.ascontiguousarray(base @ project))
    return index, project


def _search(
    index: Any, project: numpy.ndarray, base: numpy.ndarray, queries: numpy.ndarray, k: int
) -> tuple[numpy.ndarray, numpy.ndarray]:
    queries = numpy.ascontiguousarray(queries, dtype=numpy.float32)
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
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
    created: list[int] = []
    for members, is_whole in zip(components, whole.tolist(), strict=True):
        groups = [members] if is_whole else _split(run.faces, members, run.thresholds.link)
        created.extend(_create(run, g) for g in groups if len(g) >= run.thresholds.min_size)
    return created


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
    """Edges (positions in ``pool``) between faces closer than ``link``, not of one file:
    all of them (exactly) for a small pool, else those among each face's
    ``LINK_NEIGHBOURS`` approximate nearest faces."""
    if len(pool) ** 2 > EXACT_PAIRS:
        return _indexed_pairs(faces, pool, link)
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


def _indexed_pairs(
    faces: _Faces, pool: numpy.ndarray, link: float
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Pairs of pool positions closer than ``link`` and not of one file, among each face's
    approximate nearest neighbours and the index graph's links (``ann_self_pairs``)."""
    a, b = ann_self_pairs(faces.emb[pool], LINK_NEIGHBOURS, link)
    keep = faces.files[pool[a]] != faces.files[pool[b]]  # also drops each face itself
    return a[keep], b[keep]


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


def _create(run: _Run, group: numpy.ndarray) -> int:
    """A new cluster holding ``group``; similarities are distances to its centroid."""
    emb = run.faces.emb[group]
    ids = [run.faces.ids[f] for f in group.tolist()]
    cluster = run.clusters.create(ids, run.faces.files[group].tolist(), emb)
    run.cluster_of[group] = cluster
    run.distance[group] = numpy.linalg.norm(emb - emb.mean(axis=0, dtype=numpy.float64), axis=1)
    return cluster


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
