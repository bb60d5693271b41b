"""One photo → its largest face, FFHQ-aligned at a resolution, with the landmarks and the camera pose in the crop.

Shared by ``epigraf dataset faces`` and ``epigraf invert --align``. The pose is fitted to the landmarks in the
crop's pixels: the crop is a similarity transform of the photo, which leaves yaw and pitch unchanged under the
solver's orthographic model and makes the roll that of the crop (near 0: the FFHQ rule levels the eyes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from epigraf.faces.align import Alignment, crop_aligned, ffhq_alignment, outside_fraction
from epigraf.faces.detector import Face, FaceDetector
from epigraf.faces.head_pose import HeadPose, estimate_pose


@dataclass
class AlignedFace:
    """image uint8 [R, R, 3]: the aligned crop; face: the detection in the photo's pixels; landmarks [5, 2] in
    the crop's pixels; pose: fitted to those; outside: the share of the crop lying outside the photo."""

    image: np.ndarray
    face: Face
    alignment: Alignment
    landmarks: np.ndarray
    pose: HeadPose
    outside: float


def photo_array(image: Image.Image) -> np.ndarray:
    """Any PIL image → RGB uint8 [H, W, 3] (transparency composited on white)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(image.convert("RGB"))


def align_face(detector: FaceDetector, photo: np.ndarray, resolution: int, name: str = "the photo") -> AlignedFace:
    """photo uint8 [H, W, 3] → its largest face aligned at ``resolution``; ``NoFaceError`` naming ``name``."""
    face = detector.largest(photo, name)
    alignment = ffhq_alignment(face.landmarks)
    landmarks = alignment.to_crop(face.landmarks, resolution)
    return AlignedFace(image=crop_aligned(photo, alignment, resolution), face=face, alignment=alignment,
                       landmarks=landmarks, pose=estimate_pose(landmarks),
                       outside=outside_fraction(alignment, photo.shape[1], photo.shape[0]))
