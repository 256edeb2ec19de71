"""Five-point face alignment to the 112 x 112 ArcFace template (IJB-B / IJB-C protocols).

insightface's IJB evaluation (``recognition/arcface_torch/eval_ijbc.py``) estimates a
similarity transform (rotation, uniform scale, translation: skimage's
``SimilarityTransform.estimate``, i.e. Umeyama's least-squares solution) from the five
landmarks of ``*_name_5pts_score.txt`` (left eye, right eye, nose, left and right mouth
corners, in pixels of the loose crop) to :data:`ARCFACE_112`, and warps the image with
``cv2.warpAffine(img, M, (112, 112), borderValue=0)`` (bilinear, black outside). Here the
warp is Pillow's bilinear affine transform with the same pixel-centre convention (pixel
(x, y) of the output samples the input at ``M^-1 (x, y)``, integer coordinates at pixel
centres).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["ARCFACE_112", "similarity_transform", "align_face"]

#: the ArcFace 112 x 112 landmark template (x, y): eyes, nose tip, mouth corners
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama's least-squares similarity (no reflection) mapping ``src`` [K, 2] onto ``dst``
    [K, 2]: a [2, 3] float64 matrix ``M`` with ``dst ~ M @ [x, y, 1]``."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rot = u @ np.diag(sign) @ vt
    var = (s ** 2).sum() / len(src)
    scale = float((sig * sign).sum() / var) if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_face(image: Image.Image, landmarks: np.ndarray, size: int = 112) -> Image.Image:
    """Warp ``image`` so that ``landmarks`` [5, 2] land on the ArcFace template: RGB size x size."""
    m = similarity_transform(landmarks, ARCFACE_112 * (size / 112.0))
    a = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(a)[:2]
    # Pillow samples output pixel (x, y) at inv @ (x + .5, y + .5, 1) in a frame whose pixel
    # centres are at + .5: shift so that integer centres map as cv2.warpAffine maps them
    lin, t = inv[:, :2], inv[:, 2]
    c = t + 0.5 - lin @ np.array([0.5, 0.5])
    coeffs = (lin[0, 0], lin[0, 1], c[0], lin[1, 0], lin[1, 1], c[1])
    return image.transform((size, size), Image.Transform.AFFINE, coeffs,
                           resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
