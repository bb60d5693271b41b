"""Inverting photos into a trained generator: latent, camera, pivotal tuning (``epigraf invert``).

    from epigraf.invert import invert, load_target, InversionConfig
    target = load_target("photo.png", G.cfg.image_resolution, fit="center-crop")
    result = invert(G, target, InversionConfig(steps=300, pti_steps=100))
    save_latent(result.latent, "photo_latent.safetensors")
"""

from epigraf.invert.camera_search import candidate_angles, search_starts
from epigraf.invert.config import InversionConfig
from epigraf.invert.inversion import Inversion, invert
from epigraf.invert.latent import Latent, load_latent, mean_latent, save_latent
from epigraf.invert.losses import InceptionPerceptual, find_perceptual, psnr, ssim
from epigraf.invert.pivotal import pivotal_tune
from epigraf.invert.target import load_target

__all__ = [
    "InceptionPerceptual",
    "Inversion",
    "InversionConfig",
    "Latent",
    "candidate_angles",
    "find_perceptual",
    "invert",
    "load_latent",
    "load_target",
    "mean_latent",
    "pivotal_tune",
    "psnr",
    "save_latent",
    "search_starts",
    "ssim",
]
