"""The ArcFace similarity crop: 5 facial points -> a 112×112 face in the canonical position.

Both backends produce the same 5 points (eye centres, nose tip, mouth corners, in image-left to
image-right order), so the crop an embedding sees does not depend on the detector. The transform
is the least-squares similarity (rotation, uniform scale, translation; Umeyama 1991), the same
model insightface's ``face_align.norm_crop`` fits, computed here with numpy and warped with Pillow
so the dlib path needs neither OpenCV nor scikit-image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CROP_SIZE = 112
# ArcFace's canonical 5 points in a 112×112 crop: left eye, right eye, nose tip, mouth corners
# (left/right as seen in the image).
ARCFACE_POINTS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


@dataclass
class Face:
    """One detected face, in the pixel frame of the image it was found in."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    points5: np.ndarray  # [5, 2] x, y: eyes, nose tip, mouth corners
    points68: np.ndarray | None = None  # dlib's 68 landmarks when the dlib backend found it
    fit_weights: tuple[float, ...] | None = None  # per-point weights for the alignment fit (None: equal)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def size(self) -> int:
        """Face size in pixels used for the "too small" rule: the shorter side of its box."""
        return int(round(min(self.width, self.height)))


def five_points_from_68(points68: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks -> the 5 ArcFace points (eye centres are the means of the 6 eye points)."""
    p = np.asarray(points68, dtype=np.float64)
    if p.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks of shape (68, 2), got {p.shape}")
    return np.stack([p[36:42].mean(axis=0), p[42:48].mean(axis=0), p[30], p[48], p[54]])


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """2×3 matrix M of the similarity that maps ``src`` points onto ``dst`` in (weighted) least squares."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    src_mean, dst_mean = w @ src, w @ dst
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = (dst_c * w[:, None]).T @ src_c
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection is not a similarity
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    variance = (w * (src_c ** 2).sum(axis=1)).sum()
    scale = (s * d).sum() / variance if variance > 0 else 1.0
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(points5: np.ndarray, size: int = CROP_SIZE, weights=None) -> np.ndarray:
    return similarity_transform(points5, ARCFACE_POINTS * (size / CROP_SIZE), weights)


def warp_crop(rgb: np.ndarray, matrix: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp ``rgb`` (uint8 [H, W, 3]) by the 2×3 ``matrix`` into a ``size``² crop (black outside)."""
    from PIL import Image

    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)  # Pillow asks, for each output pixel, where to sample the input
    # Pillow samples pixel centres at +0.5; the matrix works in OpenCV's convention (centres at
    # integers), so shift into and out of it.
    shift_in = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    shift_out = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    m = shift_in @ inverse @ shift_out
    data = (m[0, 0], m[0, 1], m[0, 2], m[1, 0], m[1, 1], m[1, 2])
    image = Image.fromarray(np.ascontiguousarray(rgb))
    out = image.transform((size, size), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR,
                          fillcolor=(0, 0, 0))
    return np.asarray(out)


def align_face(rgb: np.ndarray, points5: np.ndarray, size: int = CROP_SIZE,
               weights=None) -> tuple[np.ndarray, np.ndarray]:
    """The ArcFace crop of the face with these 5 points, and the matrix that made it."""
    matrix = alignment_matrix(points5, size, weights)
    return warp_crop(rgb, matrix, size), matrix
