"""Face boxes and five landmarks with the MTCNN cascade, in plain torch (NMS included).

The cascade follows the MTCNN paper (Zhang et al. 2016) and, for its constants (pyramid factor 0.709,
thresholds 0.6 / 0.7 / 0.7, NMS overlaps, 12 / 24 / 48 pixel inputs, (v − 127.5) / 128 normalisation), the
facenet-pytorch implementation (MIT licence, Tim Esler) whose weights we load; the code is ours:

1. **P-Net** slides over an image pyramid (the face sizes from ``min_face`` up to the image); every 12×12 window
   scoring ≥ thresholds[0] is a candidate box, regressed by P-Net's offsets; NMS per scale (IoU 0.5), then over
   all scales (IoU 0.7).
2. **R-Net** re-scores 24×24 crops of the squared candidates (≥ thresholds[1]), NMS (IoU 0.7), regression.
3. **O-Net** re-scores 48×48 crops (≥ thresholds[2]) and predicts the landmarks; regression, then NMS that
   measures overlap against the smaller box (0.7), which removes boxes nested inside a face.

Coordinates are continuous image coordinates in pixels: x to the right, y down, pixel (row i, column j) covers
[j, j + 1] × [i, i + 1]. Landmarks are ordered as seen in the image: left eye, right eye, nose tip, left and
right mouth corner (the image's left eye is the subject's right eye).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from epigraf.faces.nets import load_nets

LANDMARK_NAMES = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")


class NoFaceError(ValueError):
    """No face was found in an image."""


@dataclass
class DetectorConfig:
    """min_face: the smallest face side searched, pixels; pyramid_factor: scale step of the image pyramid;
    thresholds: face probabilities P-, R- and O-Net must reach; max_side: larger photos are shrunk to this
    longer side for detection, results mapped back to the photo's pixels."""

    min_face: float = 20.0
    pyramid_factor: float = 0.709
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    max_side: int = 1024

    def __post_init__(self) -> None:
        if self.min_face < 12:
            raise ValueError(f"min_face must be at least 12 pixels (P-Net's window), got {self.min_face}")
        if not 0 < self.pyramid_factor < 1:
            raise ValueError(f"pyramid_factor must be in (0, 1), got {self.pyramid_factor}")


@dataclass
class Face:
    """One detection: box [4] (x0, y0, x1, y1), score (O-Net's face probability), landmarks [5, 2] (x, y) in
    ``LANDMARK_NAMES`` order; all in the photo's pixels."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


def nms(boxes: Tensor, scores: Tensor, threshold: float, by_min: bool = False) -> Tensor:
    """Greedy non-maximum suppression: boxes [N, 4], scores [N] → kept indices [K], best score first.

    A box is dropped when its overlap with a kept, higher-scoring box exceeds ``threshold``; overlap is
    intersection / union, or intersection / the smaller area with ``by_min``.
    """
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i, rest = order[0], order[1:]
        keep.append(i)
        lo = torch.maximum(boxes[i, :2], boxes[rest, :2])
        hi = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (hi - lo).clamp(min=0).prod(dim=1)
        denom = torch.minimum(areas[i], areas[rest]) if by_min else areas[i] + areas[rest] - inter
        order = rest[inter <= threshold * denom]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


def regress(boxes: Tensor, offsets: Tensor) -> Tensor:
    """Boxes [N, 4] moved by the nets' offsets [N, 4], given in units of the box's width and height."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def square(boxes: Tensor) -> Tensor:
    """Boxes [N, 4] → squares [N, 4] with the same centres and side max(width, height)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], dim=1)


def _normalise(pixels: Tensor) -> Tensor:
    return (pixels - 127.5) / 128.0


def resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, C, H, W] → [B, C, *size] with an area (box) filter: the nets expect area-filtered inputs (with a
    bilinear filter a false face on the astronaut photo's suit passes R- and O-Net)."""
    return F.interpolate(image, size=size, mode="area")


def crops(image: Tensor, boxes: Tensor, size: int) -> Tensor:
    """image [1, 3, H, W] (0–255), boxes [N, 4] → normalised crops [N, 3, size, size]; the boxes are rounded to
    whole pixels and the parts outside the image are black."""
    _, _, h, w = image.shape
    out = []
    for x0, y0, x1, y1 in boxes.round().long().tolist():
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        inside = image[:, :, max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
        padded = F.pad(inside, (max(-x0, 0), max(x1 - w, 0), max(-y0, 0), max(y1 - h, 0)))
        out.append(resize(padded, (size, size)))
    return _normalise(torch.cat(out)) if out else image.new_zeros(0, 3, size, size)


def pyramid_scales(height: int, width: int, config: DetectorConfig) -> list[float]:
    """Scales at which P-Net's 12-pixel window covers faces of min_face pixels and larger."""
    scale, scales = 12.0 / config.min_face, []
    while min(height, width) * scale >= 12:
        scales.append(scale)
        scale *= config.pyramid_factor
    return scales


class FaceDetector:
    """The MTCNN cascade with the facenet-pytorch wheel's weights (``FaceWeightsMissing`` when absent)."""

    def __init__(self, config: DetectorConfig | None = None, weights: Path | None = None) -> None:
        self.config = config or DetectorConfig()
        self.pnet, self.rnet, self.onet = load_nets(weights)

    @torch.inference_mode()
    def detect(self, photo: np.ndarray) -> list[Face]:
        """photo uint8 [H, W, 3] (RGB) → every face found, the largest box first."""
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 photo [H, W, 3], got {photo.dtype} {list(photo.shape)}")
        image = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float()
        shrink = min(1.0, self.config.max_side / max(photo.shape[:2]))
        if shrink < 1:
            size = (round(photo.shape[0] * shrink), round(photo.shape[1] * shrink))
            image = resize(image, size)
        boxes = self._propose(image)
        boxes = self._refine(image, boxes)
        boxes, scores, landmarks = self._output(image, boxes)
        scale_back = torch.tensor([photo.shape[1] / image.shape[3], photo.shape[0] / image.shape[2]])
        faces = [Face(box=(b.view(2, 2) * scale_back).flatten().double().numpy(), score=float(s),
                      landmarks=(lm * scale_back).double().numpy())
                 for b, s, lm in zip(boxes, scores, landmarks, strict=True)]
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def largest(self, photo: np.ndarray, name: str = "the photo") -> Face:
        """The face with the largest box; ``NoFaceError`` (one line naming ``name``) when there is none."""
        faces = self.detect(photo)
        if not faces:
            raise NoFaceError(f"no face found in {name}")
        return faces[0]

    def _propose(self, image: Tensor) -> Tensor:
        """Stage 1 → squared candidate boxes [N, 4]."""
        _, _, h, w = image.shape
        found, scores = [], []
        for scale in pyramid_scales(h, w, self.config):
            sh, sw = math.ceil(h * scale), math.ceil(w * scale)
            offsets, prob = self.pnet(_normalise(resize(image, (sh, sw))))
            i, j = (prob[0] >= self.config.thresholds[0]).nonzero(as_tuple=True)
            corner = torch.stack([j, i], dim=1).float() * 2
            size = torch.tensor([sw / w, sh / h])
            boxes = torch.cat([corner / size, (corner + 12) / size], dim=1)
            boxes = regress(boxes, offsets[0, :, i, j].T)
            keep = nms(boxes, prob[0, i, j], 0.5)
            found.append(boxes[keep])
            scores.append(prob[0, i, j][keep])
        if not found:
            return torch.zeros(0, 4)
        boxes, score = torch.cat(found), torch.cat(scores)
        return square(boxes[nms(boxes, score, 0.7)])

    def _refine(self, image: Tensor, boxes: Tensor) -> Tensor:
        """Stage 2: candidates [N, 4] → squared boxes [M, 4] that R-Net keeps."""
        if len(boxes) == 0:
            return boxes
        offsets, prob = self.rnet(crops(image, boxes, 24))
        ok = prob >= self.config.thresholds[1]
        boxes, offsets, prob = boxes[ok], offsets[ok], prob[ok]
        keep = nms(boxes, prob, 0.7)
        return square(regress(boxes[keep], offsets[keep]))

    def _output(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Stage 3: boxes [M, 4] → (boxes [K, 4], scores [K], landmarks [K, 5, 2])."""
        if len(boxes) == 0:
            return boxes, torch.zeros(0), torch.zeros(0, 5, 2)
        offsets, points, prob = self.onet(crops(image, boxes, 48))
        ok = prob >= self.config.thresholds[2]
        boxes, offsets, points, prob = boxes[ok], offsets[ok], points[ok], prob[ok]
        size = boxes[:, 2:] - boxes[:, :2]
        landmarks = boxes[:, None, :2] + torch.stack([points[:, :5], points[:, 5:]], dim=2) * size[:, None]
        boxes = regress(boxes, offsets)
        keep = nms(boxes, prob, 0.7, by_min=True)
        return boxes[keep], prob[keep], landmarks[keep]
