"""Mesh files written directly (no mesh library): PLY (binary), OBJ (text) and GLB (binary glTF 2.0).

Coordinates are world units in the model's frame (+y up, the frontal camera on +x); faces are
counter-clockwise seen from outside; vertex colours are written when the mesh has them.

    save_mesh(mesh, "scene.glb")   # format from the suffix: .ply, .obj, .glb
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from epigraf.isosurface import Mesh

MESH_FORMATS = ("ply", "obj", "glb")

# glTF constants (glTF 2.0 specification, §3.6 and §5.24).
_GLTF_FLOAT, _GLTF_UNSIGNED_BYTE, _GLTF_UNSIGNED_INT = 5126, 5121, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_TRIANGLES = 4


def save_mesh(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write ``mesh`` in the format named by the suffix (.ply, .obj, .glb)."""
    path = Path(path)
    writers = {".ply": write_ply, ".obj": write_obj, ".glb": write_glb}
    if path.suffix.lower() not in writers:
        raise ValueError(f"unknown mesh format {path.suffix!r}; use one of {['.' + f for f in MESH_FORMATS]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writers[path.suffix.lower()](mesh, path)
    return path


def write_ply(mesh: Mesh, path: str | os.PathLike) -> None:
    """Binary little-endian PLY: vertex x, y, z (float) [+ red, green, blue (uchar)]; face uchar-counted int lists."""
    v = mesh.vertices.astype("<f4")
    header = ["ply", "format binary_little_endian 1.0", "comment written by epigraf", f"element vertex {len(v)}",
              "property float x", "property float y", "property float z"]
    fields = [("xyz", "<f4", (3,))]
    if mesh.colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        fields.append(("rgb", "u1", (3,)))
    header += [f"element face {len(mesh.faces)}", "property list uchar int vertex_indices", "end_header"]
    verts = np.empty(len(v), dtype=fields)
    verts["xyz"] = v
    if mesh.colors is not None:
        verts["rgb"] = mesh.colors
    faces = np.empty(len(mesh.faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    faces["n"] = 3
    faces["idx"] = mesh.faces
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(verts.tobytes())
        f.write(faces.tobytes())


def write_obj(mesh: Mesh, path: str | os.PathLike) -> None:
    """Wavefront OBJ: ``v x y z [r g b]`` (colours in [0, 1], the common vertex-colour extension), ``f`` 1-based."""
    cols = [mesh.vertices.astype(np.float64)]
    if mesh.colors is not None:
        cols.append(mesh.colors / 255.0)
    verts = np.concatenate(cols, axis=1)
    with open(path, "w", encoding="ascii") as f:
        f.write("# written by epigraf\n")
        np.savetxt(f, verts, fmt="v " + " ".join(["%.7g"] * verts.shape[1]))
        np.savetxt(f, mesh.faces + 1, fmt="f %d %d %d")


def write_glb(mesh: Mesh, path: str | os.PathLike) -> None:
    """Binary glTF 2.0 (.glb): one mesh, one triangle primitive with POSITION, COLOR_0 and uint32 indices.

    Colours are normalised unsigned-byte RGBA: glTF requires vertex attributes aligned to 4 bytes, which RGB
    bytes (3 per vertex) are not.
    """
    positions = np.ascontiguousarray(mesh.vertices, dtype="<f4")
    indices = np.ascontiguousarray(mesh.faces, dtype="<u4")
    colors = np.full((len(positions), 4), 255, dtype=np.uint8)
    if mesh.colors is not None:
        colors[:, :3] = mesh.colors
    blobs = [positions.tobytes(), colors.tobytes(), indices.tobytes()]  # each a multiple of 4 bytes
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    targets = (_ARRAY_BUFFER, _ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER)
    views = [{"buffer": 0, "byteOffset": int(offsets[i]), "byteLength": len(b), "target": targets[i]}
             for i, b in enumerate(blobs)]
    accessors = [
        {"bufferView": 0, "componentType": _GLTF_FLOAT, "count": len(positions), "type": "VEC3",
         "min": positions.min(axis=0).tolist(), "max": positions.max(axis=0).tolist()},
        {"bufferView": 1, "componentType": _GLTF_UNSIGNED_BYTE, "normalized": True, "count": len(colors),
         "type": "VEC4"},
        {"bufferView": 2, "componentType": _GLTF_UNSIGNED_INT, "count": int(indices.size), "type": "SCALAR"},
    ]
    gltf = {
        "asset": {"version": "2.0", "generator": "epigraf"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2,
                                    "mode": _TRIANGLES}]}],
        "buffers": [{"byteLength": int(offsets[-1])}],
        "bufferViews": views,
        "accessors": accessors,
    }
    json_chunk = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    json_chunk += b" " * (-len(json_chunk) % 4)  # chunks are 4-byte aligned: JSON pads with spaces
    bin_chunk = b"".join(blobs)
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    with open(path, "wb") as f:
        f.write(struct.pack("<4sII", b"glTF", 2, total))
        f.write(struct.pack("<I4s", len(json_chunk), b"JSON") + json_chunk)
        f.write(struct.pack("<I4s", len(bin_chunk), b"BIN\0") + bin_chunk)
