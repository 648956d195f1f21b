"""Combining the photos: one identity vector, who agrees with whom, and who looks like someone else.

The identity is the mean of the unit embeddings, renormalised (the centroid direction on the
hypersphere: what Arc2Face expects, and more stable than any single photo).

Outliers are decided by the independent judge (dlib, Euclidean distance, same person < 0.6),
which is always available, real, and not the network that later guides the optimisation. When
no judge descriptors exist, ArcFace cosine similarity is used (same person > 0.3 in practice).
A photo is an outlier when it disagrees with the majority of the others while those others agree
among themselves; with two photos that disagree nobody can tell which is right, so both get a
warning instead.
"""

from __future__ import annotations

import numpy as np

ARCFACE_SAME_PERSON_COSINE = 0.3


def mean_embedding(embeddings: list[np.ndarray]) -> np.ndarray | None:
    if not embeddings:
        return None
    stack = np.stack([e / np.linalg.norm(e) for e in embeddings]).astype(np.float64)
    mean = stack.mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm < 1e-8:  # opposite vectors cancel: no meaningful identity
        return None
    return (mean / norm).astype(np.float32)


def cosine_matrix(embeddings: list[np.ndarray]) -> np.ndarray:
    if not embeddings:
        return np.zeros((0, 0))
    stack = np.stack([e / np.linalg.norm(e) for e in embeddings]).astype(np.float64)
    return stack @ stack.T


def agreement(distances: np.ndarray | None, cosines: np.ndarray | None,
              judge_threshold: float) -> np.ndarray | None:
    """Boolean [n, n]: do photos i and j look like the same person (judge first, ArcFace otherwise)."""
    if distances is not None and distances.size and not np.isnan(distances).all():
        return np.nan_to_num(distances, nan=np.inf) < judge_threshold
    if cosines is not None and cosines.size:
        return cosines > ARCFACE_SAME_PERSON_COSINE
    return None


def find_outliers(same: np.ndarray | None) -> tuple[list[int], bool]:
    """Indices of photos that disagree with the majority, and whether the set is inconsistent
    without a clear majority (everyone disagrees, or two photos that differ)."""
    if same is None:
        return [], False
    n = same.shape[0]
    if n < 2:
        return [], False
    others_agree = [(same[i].sum() - 1) for i in range(n)]  # diagonal counts as agreeing
    if n == 2:
        return [], not bool(same[0, 1])
    outliers = [i for i in range(n) if others_agree[i] < (n - 1) / 2]
    keep = [i for i in range(n) if i not in outliers]
    if len(keep) < 2 or not all(same[i, j] for i in keep for j in keep if i != j):
        # No consistent majority: do not single anyone out, say the set is mixed.
        return [], True
    return outliers, False
