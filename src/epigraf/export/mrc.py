"""Density volumes as MRC2014 files (mode 2, float32), the format ChimeraX and other volume viewers open.

Written directly: a 1024-byte header (no extended header) followed by the voxels with x varying fastest.
Lengths are the volume's world units, stored where MRC expects Ångström, so the volume lines up with the
meshes written for the same scene.

    write_mrc(volume, "scene.mrc", voxel_size=geo.spacing, origin=geo.origin)   # volume [X, Y, Z]
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch

HEADER_BYTES = 1024
MODE_FLOAT32 = 2
MRC_VERSION = 20141  # MRC2014, update 1 (the version current writers record)


def mrc_header(shape: tuple[int, int, int], voxel_size: float, origin: tuple[float, float, float],
               dmin: float, dmax: float, dmean: float, rms: float, label: str = "epigraf raw density") -> bytes:
    """The 1024-byte MRC2014 header of a float32 volume of ``shape`` = (NX, NY, NZ), little-endian."""
    nx, ny, nz = shape
    head = struct.pack("<3i i 3i 3i 3f 3f 3i 3f i i", nx, ny, nz, MODE_FLOAT32, 0, 0, 0, nx, ny, nz,
                       nx * voxel_size, ny * voxel_size, nz * voxel_size, 90.0, 90.0, 90.0,
                       1, 2, 3,  # MAPC, MAPR, MAPS: columns = x, rows = y, sections = z
                       dmin, dmax, dmean,
                       1, 0)  # ISPG 1: a single volume; NSYMBT 0: no extended header
    # EXTRA (words 25–49): EXTTYP at word 27 and NVERSION at word 28, the rest zero.
    extra = bytes(8) + struct.pack("<4si", b"\0\0\0\0", MRC_VERSION) + bytes(100 - 16)
    tail = struct.pack("<3f 4s 4B f i", *origin, b"MAP ", 0x44, 0x44, 0, 0, rms, 1)  # MACHST: little-endian
    labels = label.encode("ascii")[:80].ljust(80) + bytes(80 * 9)
    return head + extra + tail + labels


def write_mrc(volume: np.ndarray | torch.Tensor, path: str | os.PathLike, voxel_size: float = 1.0,
              origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Path:
    """volume [X, Y, Z] (index order x, y, z; x slowest, as our grids) → MRC file with x as the columns.

    voxel_size: grid spacing; origin: world position of voxel [0, 0, 0].
    """
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu().numpy()
    volume = np.asarray(volume, dtype="<f4")
    if volume.ndim != 3:
        raise ValueError(f"an MRC volume must be [X, Y, Z], got {list(volume.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mean = float(volume.mean(dtype=np.float64))
    header = mrc_header(volume.shape, voxel_size, origin, float(volume.min()), float(volume.max()), mean,
                        float(volume.std(dtype=np.float64)))
    with open(path, "wb") as f:
        f.write(header)
        # MRC stores sections (z), then rows (y), then columns (x) fastest: the transpose of our [x, y, z].
        f.write(np.ascontiguousarray(volume.transpose(2, 1, 0)).tobytes())
    return path
