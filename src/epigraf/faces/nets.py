"""MTCNN's three networks (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks") and their weights, read from the facenet-pytorch wheel without importing the package.

The layer sizes follow facenet-pytorch's ``models/mtcnn.py`` (MIT licence, Tim Esler), because its weight files
fix them; the parameter names below are the keys of those state dicts. The package itself is never imported (it
needs torchvision and pins torch < 2.3): ``importlib.util.find_spec`` locates its folder without running it, and
the ``.pt`` files are plain state dicts read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import torch
from torch import Tensor, nn

INSTALL_HINT = "pip install --no-deps facenet-pytorch"


class FaceWeightsMissing(ImportError):
    """The MTCNN weights are not installed; the message is the one line telling how to install them."""


def weights_folder() -> Path:
    """The ``data`` folder of the installed facenet-pytorch package, found without importing it."""
    spec = find_spec("facenet_pytorch")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if all((Path(folder) / "data" / f"{name}.pt").is_file() for name in ("pnet", "rnet", "onet")):
            return Path(folder) / "data"
    raise FaceWeightsMissing(f"face detection needs the MTCNN weights of facenet-pytorch: {INSTALL_HINT} "
                             "(--no-deps: it pins torch < 2.3; only its weight files are used)")


def _flatten(x: Tensor) -> Tensor:
    """[B, C, H, W] → [B, W·H·C]: the dense layers were converted from a column-major (Caffe/MATLAB) layout, so
    their inputs flatten width-major."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal net, fully convolutional: image [B, 3, H, W] (normalised) → (box offsets [B, 4, h, w],
    face probability [B, h, w]); output cell (i, j) sees the 12×12 window at (2i, 2j) of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = nn.functional.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement net: crops [B, 3, 24, 24] → (box offsets [B, 4], face probability [B])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = nn.functional.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = nn.functional.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), self.dense5_1(x).softmax(dim=1)[:, 1]


class ONet(nn.Module):
    """Output net: crops [B, 3, 48, 48] → (box offsets [B, 4], landmarks [B, 10] as (x1..x5, y1..y5) in units of
    the crop, face probability [B])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = nn.functional.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = nn.functional.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = nn.functional.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(dim=1)[:, 1]


def load_nets(folder: Path | None = None) -> tuple[PNet, RNet, ONet]:
    """The three networks with the wheel's weights (``folder``: default ``weights_folder()``), in eval mode."""
    folder = weights_folder() if folder is None else folder
    nets = (PNet(), RNet(), ONet())
    for net, name in zip(nets, ("pnet", "rnet", "onet"), strict=True):
        net.load_state_dict(torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True))
        net.eval().requires_grad_(False)
    return nets
