"""epigraf: EpiGRAF 3D-aware GANs in pure PyTorch.

    from epigraf import Generator, preset
    G = Generator(preset("ffhq256").generator).eval()
"""
# ruff: noqa: E402 (the imports of torch must follow request_huge_pages)

from epigraf.process_settings import request_huge_pages

# Before torch is first imported: its CPU allocator reads the setting once (epigraf.process_settings).
request_huge_pages()

from epigraf.cameras import Cameras
from epigraf.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from epigraf.config import (
    CameraConfig,
    DiscriminatorConfig,
    GeneratorConfig,
    ModelConfig,
    PatchConfig,
    RenderConfig,
    preset,
)
from epigraf.nn.discriminator import Discriminator
from epigraf.nn.generator import Generator, GeneratorOutput
from epigraf.patches import PatchParams, extract_patches, sample_patch_params

__all__ = [
    "CameraConfig",
    "Cameras",
    "Checkpoint",
    "Discriminator",
    "DiscriminatorConfig",
    "Generator",
    "GeneratorConfig",
    "GeneratorOutput",
    "ModelConfig",
    "PatchConfig",
    "PatchParams",
    "RenderConfig",
    "extract_patches",
    "load_checkpoint",
    "preset",
    "sample_patch_params",
    "save_checkpoint",
]
__version__ = "0.1.0"
