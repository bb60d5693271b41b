"""Geometry: an analytic sphere's surface within one voxel of its radius (both iso-surface backends, given and
automatic level), closed and outward oriented; MRC / PLY / OBJ / GLB read back with minimal readers written
here; the mesh command on a tiny model."""

from __future__ import annotations

import json
import math
import struct
from collections import Counter

import numpy as np
import pytest
import torch

from epigraf.checkpoint import save_checkpoint
from epigraf.cli import main
from epigraf.export.mesh import save_mesh
from epigraf.export.mrc import write_mrc
from epigraf.geometry import auto_level, grid_axis, sample_grid
from epigraf.isosurface import Mesh, extract_isosurface, skimage_available
from epigraf.nn.generator import Generator
from test_checkpoint import tiny_model_config

RES, CUBE, RADIUS = 33, 1.0, 0.31
SPACING = CUBE / (RES - 1)
BACKENDS = ["tetrahedra", pytest.param("skimage", marks=pytest.mark.skipif(
    not skimage_available(), reason="marching cubes needs the optional mesh extra (scikit-image), not installed"))]


def sphere(profile) -> torch.Tensor:
    """Density [RES³] of a sphere of radius RADIUS at the origin, ``profile`` of the signed distance (+ inside)."""
    return sample_grid(lambda p: profile(RADIUS - p.norm(dim=1, keepdim=True)), RES, CUBE)[..., 0]


def directed_edges(faces: np.ndarray) -> Counter:
    return Counter(map(tuple, np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).tolist()))


def signed_volume(mesh: Mesh) -> float:
    a, b, c = (mesh.vertices[mesh.faces[:, i]].astype(np.float64) for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sphere_surface_is_within_a_voxel_closed_and_outward(backend):
    volume = sphere(lambda d: 40.0 * d)
    mesh = extract_isosurface(volume.numpy(), 0.0, SPACING, (-CUBE / 2,) * 3, backend)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert len(mesh.faces) > 100
    assert np.abs(radii - RADIUS).max() < SPACING
    edges = directed_edges(mesh.faces)
    # Closed and consistently oriented: every edge is used once in each direction.
    assert max(edges.values()) == 1 and all((b, a) in edges for a, b in edges)
    assert len(mesh.vertices) - len(edges) // 2 + len(mesh.faces) == 2  # Euler characteristic of a sphere
    assert signed_volume(mesh) == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.05)  # > 0: normals point out


def test_grid_points_exactly_at_the_level_do_not_break_the_surface():
    # Rounding puts many grid values exactly on the level; the surface must stay closed and oriented.
    volume = np.round(sphere(lambda d: d).numpy(), 2)
    mesh = extract_isosurface(volume, 0.0, SPACING, backend="tetrahedra")
    edges = directed_edges(mesh.faces)
    assert max(edges.values()) == 1 and all((b, a) in edges for a, b in edges)


def test_automatic_level_finds_a_sharp_sphere():
    # A hard surface: raw density jumps from −200 to 200 over about half a voxel.
    volume = sphere(lambda d: 200.0 * torch.tanh(d / (0.5 * SPACING)))
    level = auto_level(volume, SPACING)
    mesh = extract_isosurface(volume.numpy(), level, SPACING, (-CUBE / 2,) * 3)
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - RADIUS).max() < SPACING


def test_automatic_level_is_where_rays_become_half_opaque():
    # Linear raw density along x only: σ = softplus(raw) ≈ raw where large. For raw = k·(x − x₀), a ray from
    # −x reaches optical depth ln 2 at k·(x − x₀)²/2 = ln 2, so the level is sqrt(2 k ln 2) (relu: exact).
    k, x0 = 400.0, 0.0
    volume = sample_grid(lambda p: k * (p[:, :1] - x0), RES, CUBE)[..., 0]
    expected = math.sqrt(2 * k * math.log(2))
    assert auto_level(volume, SPACING, clamp_mode="relu") == pytest.approx(expected, rel=0.1)
    with pytest.raises(ValueError, match="half opaque"):
        auto_level(torch.full((8, 8, 8), -30.0), 0.1)


def test_level_outside_the_volume_is_an_error():
    with pytest.raises(ValueError, match="outside the volume's range"):
        extract_isosurface(sphere(lambda d: d).numpy(), 5.0)


# ----------------------------------------------------------------------------- minimal readers


def read_ply(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    nv = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in header if h.startswith("element face")).split()[-1])
    verts = np.frombuffer(data, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)], count=nv, offset=end)
    faces = np.frombuffer(data, dtype=[("n", "u1"), ("idx", "<i4", 3)], count=nf, offset=end + verts.nbytes)
    assert (faces["n"] == 3).all() and end + verts.nbytes + faces.nbytes == len(data)
    return verts["xyz"], faces["idx"], verts["rgb"]


def read_obj(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    v = np.array([[float(x) for x in line.split()[1:]] for line in lines if line.startswith("v ")])
    f = np.array([[int(x) for x in line.split()[1:]] for line in lines if line.startswith("f ")])
    return v[:, :3], f - 1, np.round(v[:, 3:] * 255).astype(np.uint8)


def read_glb(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    gltf = json.loads(data[20:20 + json_len])
    bin_len, bin_type = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_type == b"BIN\0"
    binary = data[28 + json_len:28 + json_len + bin_len]
    prim = gltf["meshes"][0]["primitives"][0]
    dtypes = {5126: "<f4", 5121: "u1", 5125: "<u4"}
    widths = {"VEC3": 3, "VEC4": 4, "SCALAR": 1}

    def accessor(i):
        acc = gltf["accessors"][i]
        view = gltf["bufferViews"][acc["bufferView"]]
        flat = np.frombuffer(binary, dtype=dtypes[acc["componentType"]], offset=view["byteOffset"],
                             count=acc["count"] * widths[acc["type"]])
        return flat.reshape(acc["count"], widths[acc["type"]])

    pos = accessor(prim["attributes"]["POSITION"])
    assert np.allclose(gltf["accessors"][prim["attributes"]["POSITION"]]["min"], pos.min(axis=0))
    return pos, accessor(prim["indices"]).reshape(-1, 3), accessor(prim["attributes"]["COLOR_0"])[:, :3]


def read_mrc(path) -> tuple[dict, np.ndarray]:
    data = path.read_bytes()
    nx, ny, nz, mode = struct.unpack_from("<4i", data)
    cella = struct.unpack_from("<3f", data, 40)
    mapcrs = struct.unpack_from("<3i", data, 64)
    origin = struct.unpack_from("<3f", data, 196)
    assert data[208:212] == b"MAP " and data[212:214] == b"\x44\x44"
    assert struct.unpack_from("<i", data, 108)[0] // 10 == 2014 and len(data) == 1024 + 4 * nx * ny * nz
    # Stored with x fastest (columns), then y, then z: read as [z, y, x] and turn back into [x, y, z].
    voxels = np.frombuffer(data, "<f4", offset=1024).reshape(nz, ny, nx).transpose(2, 1, 0)
    return {"shape": (nx, ny, nz), "mode": mode, "cella": cella, "mapcrs": mapcrs, "origin": origin}, voxels


@pytest.fixture
def coloured_sphere() -> Mesh:
    mesh = extract_isosurface(sphere(lambda d: d).numpy(), 0.0, SPACING, (-CUBE / 2,) * 3, "tetrahedra")
    mesh.colors = np.random.default_rng(0).integers(0, 256, (len(mesh.vertices), 3), dtype=np.uint8)
    return mesh


@pytest.mark.parametrize("suffix, reader", [(".ply", read_ply), (".obj", read_obj), (".glb", read_glb)])
def test_mesh_files_read_back(coloured_sphere, tmp_path, suffix, reader):
    verts, faces, colors = reader(save_mesh(coloured_sphere, tmp_path / f"m{suffix}"))
    assert len(verts) > 0 and len(faces) > 0
    assert np.allclose(verts, coloured_sphere.vertices, atol=1e-6)
    assert np.array_equal(faces, coloured_sphere.faces)
    assert np.array_equal(colors, coloured_sphere.colors)


def test_unknown_mesh_suffix(coloured_sphere, tmp_path):
    with pytest.raises(ValueError, match="unknown mesh format"):
        save_mesh(coloured_sphere, tmp_path / "m.stl")


def test_mrc_reads_back_with_x_as_columns(tmp_path):
    volume = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # [x, y, z]
    header, voxels = read_mrc(write_mrc(volume, tmp_path / "v.mrc", voxel_size=0.5, origin=(-1.0, -2.0, -3.0)))
    assert header == {"shape": (2, 3, 4), "mode": 2, "cella": (1.0, 1.5, 2.0), "mapcrs": (1, 2, 3),
                      "origin": (-1.0, -2.0, -3.0)}
    assert np.array_equal(voxels, volume.numpy())


def test_grid_axis_is_centred_with_endpoints():
    axis = grid_axis(5, 0.4)
    assert torch.allclose(axis, torch.tensor([-0.2, -0.1, 0.0, 0.1, 0.2]))
    values = sample_grid(lambda p: p, 5, 0.4, chunk_points=7)  # chunks of one x-slice
    assert torch.allclose(values[4, 1, 2], torch.tensor([0.2, -0.1, 0.0]))  # index order [x, y, z]


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    """A tiny model whose raw density spans about −20 … 95, so that parts of the cube are opaque."""
    torch.manual_seed(0)
    cfg = tiny_model_config()
    G = Generator(cfg.generator)
    with torch.no_grad():
        G.field.mlp.model[1].weight[3] *= 100
    return save_checkpoint(tmp_path_factory.mktemp("net") / "net.safetensors", cfg, G_ema=G)


def test_mesh_command_writes_every_format(dense_checkpoint, tmp_path):
    assert main(["mesh", "--checkpoint", str(dense_checkpoint), "--seeds", "0-1", "--resolution", "12",
                 "--formats", "mrc", "ply", "obj", "glb", "--out", str(tmp_path)]) == 0
    for seed in ("seed0000", "seed0001"):
        header, volume = read_mrc(tmp_path / f"{seed}.mrc")
        assert header["shape"] == (12, 12, 12) and header["origin"][0] == pytest.approx(-0.2)  # 2·cube_scale
        for suffix, reader in ((".ply", read_ply), (".obj", read_obj), (".glb", read_glb)):
            verts, faces, colors = reader(tmp_path / f"{seed}{suffix}")
            assert len(verts) > 0 and len(faces) > 0 and faces.max() < len(verts)
            assert np.abs(verts).max() <= 0.2 + 1e-6 and colors.std() > 0


def test_mesh_command_with_a_given_level_and_cube(dense_checkpoint, tmp_path, capsys):
    args = ["mesh", "--checkpoint", str(dense_checkpoint), "--resolution", "10", "--out", str(tmp_path)]
    assert main([*args, "--level", "30", "--cube-size", "0.3"]) == 0
    verts, faces, _ = read_ply(tmp_path / "seed0000.ply")
    assert len(faces) > 0 and np.abs(verts).max() <= 0.15 + 1e-6
    assert main([*args, "--level", "1000", "--force"]) == 2
    assert "outside the volume's range" in capsys.readouterr().err


def test_mesh_command_keeps_existing_files_unless_forced(dense_checkpoint, tmp_path, capsys):
    """The policy shared with `epigraf import`: refuse before any work, name the file, suggest --force."""
    args = ["mesh", "--checkpoint", str(dense_checkpoint), "--seeds", "0-1", "--resolution", "8",
            "--formats", "ply", "mrc", "--out", str(tmp_path)]
    earlier = tmp_path / "seed0001.mrc"
    earlier.write_bytes(b"an earlier volume")
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"epigraf mesh: error: {earlier} exists; pass --force to overwrite"
    assert earlier.read_bytes() == b"an earlier volume" and not (tmp_path / "seed0000.ply").exists()
    assert main([*args, "--force"]) == 0
    assert earlier.read_bytes() != b"an earlier volume" and (tmp_path / "seed0000.ply").is_file()
