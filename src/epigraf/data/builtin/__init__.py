"""The built-in dataset: real meshes bundled with pybullet, rendered like Megascans (docs/method.md §6.3).

``catalogue``: which objects, and how each is placed in the world; ``render``: drawing them with pybullet;
``build``: rendering a whole dataset into the cache (or a folder), and reusing a finished build.
"""

from epigraf.data.builtin.build import (
    DEFAULT_RESOLUTION,
    DEFAULT_VIEWS,
    VERSION,
    BuildParams,
    build_builtin_dataset,
    cache_root,
    content_hash,
    default_dir,
    is_complete,
    load_geometry,
    object_cameras,
    read_manifest,
)
from epigraf.data.builtin.catalogue import (
    DEFAULT_SUBSET,
    EXTRA_MESHES,
    SUBSETS,
    TOYS,
    MeshObject,
    Placement,
    catalogue,
    object_mesh,
    object_radius,
    placement,
    pybullet_data_path,
    read_obj,
    subset_objects,
)
from epigraf.data.builtin.render import RenderTask, projection_matrix, ray_length_factor, render_object

__all__ = [
    "DEFAULT_RESOLUTION",
    "DEFAULT_SUBSET",
    "DEFAULT_VIEWS",
    "EXTRA_MESHES",
    "SUBSETS",
    "TOYS",
    "VERSION",
    "BuildParams",
    "MeshObject",
    "Placement",
    "RenderTask",
    "build_builtin_dataset",
    "cache_root",
    "catalogue",
    "content_hash",
    "default_dir",
    "is_complete",
    "load_geometry",
    "object_cameras",
    "object_mesh",
    "object_radius",
    "placement",
    "projection_matrix",
    "pybullet_data_path",
    "ray_length_factor",
    "read_manifest",
    "read_obj",
    "render_object",
    "subset_objects",
]
