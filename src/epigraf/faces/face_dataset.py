"""Photos → a posed face dataset: FFHQ-aligned crops in a zip with ``dataset.json`` (docs/cameras.md, "Faces").

``dataset.json`` holds ``camera_angles`` (our convention, from ``head_pose.estimate_pose``) and ``camera``: the FFHQ
presets' fov and radius, the camera the crops are framed for. Photos that cannot be read or show no face are
skipped with their reasons; every kept photo's detection is returned for the report. The zip is written to a
temporary file and renamed, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from epigraf.config import FFHQ_CAMERA
from epigraf.data.sources import Source, image_key, open_image, open_source
from epigraf.faces.detector import FaceDetector, NoFaceError
from epigraf.faces.photo import align_face, photo_array
from epigraf.files import atomic_write, check_output_path


@dataclass
class FaceRecord:
    """One kept photo: its name in the source and in the zip, the face box [4], landmarks [5, 2] (photo pixels),
    detection score, camera angles [3] (yaw, pitch, roll), the pose fit's rms (crop pixels), and the share of
    the crop outside the photo."""

    source: str
    name: str
    box: list[float]
    landmarks: list[list[float]]
    score: float
    angles: list[float]
    rms: float
    outside: float


@dataclass
class FaceDataset:
    """What was written: the zip's path, its resolution, the kept photos and the skipped (name, reason) pairs."""

    path: str
    resolution: int
    records: list[FaceRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def angles(self) -> np.ndarray:
        """Camera angles of the kept photos [N, 3]."""
        return np.array([r.angles for r in self.records], dtype=np.float64).reshape(-1, 3)


def build_face_dataset(source_path: str | os.PathLike, out_path: str | os.PathLike, resolution: int,
                       detector: FaceDetector, *, overwrite: bool = False, progress: bool = False) -> FaceDataset:
    """Align the largest face of every photo in a folder or zip into a zip at ``out_path``. ValueError (nothing
    written) when the source has no photos or no photo shows a face."""
    out_path = os.fspath(out_path)
    if not out_path.endswith(".zip"):
        raise ValueError(f"the output must be a .zip file, got {out_path}")
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8, got {resolution}")
    check_output_path(out_path, [source_path], overwrite)
    source = open_source(source_path)
    names = source.images()
    if not names:
        raise ValueError(f"no images found in {source_path}")
    result = FaceDataset(path=out_path, resolution=resolution)
    with atomic_write(out_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in tqdm(names, desc="aligning faces", unit="img", disable=not progress, dynamic_ncols=True):
            record = _add_photo(source, name, resolution, detector, zf, result.skipped)
            if record is not None:
                result.records.append(record)
        if not result.records:
            raise ValueError(f"no face found in any of the {len(names)} images of {source_path} "
                             f"(e.g. {result.skipped[0][0]}: {result.skipped[0][1]})")
        meta = {"camera_angles": {r.name: r.angles for r in result.records},
                "camera": {"fov": FFHQ_CAMERA.fov, "radius": FFHQ_CAMERA.radius}}
        zf.writestr("dataset.json", json.dumps(meta, indent=1))
    return result


def _add_photo(source: Source, name: str, resolution: int, detector: FaceDetector, zf: zipfile.ZipFile,
               skipped: list[tuple[str, str]]) -> FaceRecord | None:
    """Align one photo into ``zf``; its record, or None after adding the reason to ``skipped``."""
    try:
        with open_image(source, name) as image:
            photo = photo_array(image)
        aligned = align_face(detector, photo, resolution, name)
    except UnidentifiedImageError:
        skipped.append((name, "not an image file"))
        return None
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        skipped.append((name, f"unreadable image: {err}"))
        return None
    except NoFaceError:
        skipped.append((name, "no face found"))
        return None
    out_name = image_key(name) + ".png"
    if out_name in zf.namelist():
        skipped.append((name, f"another photo already gave {out_name}"))
        return None
    buf = io.BytesIO()
    Image.fromarray(aligned.image).save(buf, format="PNG")
    zf.writestr(out_name, buf.getvalue())
    f = aligned.face
    return FaceRecord(source=name, name=out_name, box=[round(float(v), 2) for v in f.box],
                      landmarks=[[round(float(v), 2) for v in p] for p in f.landmarks], score=round(f.score, 4),
                      angles=[float(v) for v in aligned.pose.angles], rms=round(aligned.pose.rms, 3),
                      outside=round(aligned.outside, 3))
