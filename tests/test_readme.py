"""The README's Python cannot drift from the code: every ```python block runs as written (on a tiny model),
and every `epigraf.…` name it mentions exists."""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path

import pytest

import epigraf
import epigraf.geometry
from epigraf.checkpoint import save_checkpoint
from epigraf.compat import from_original, model_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
GRID_RESOLUTION = 24  # the snippet's mesh grid, shrunk from its default (256³) so the test takes seconds


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs_as_written(index, tmp_path, monkeypatch, original_fixtures):
    """Files the snippet names are read from and written to a temporary folder; `preset(...)` and
    `load_checkpoint("net.safetensors")` give the original's tiny model (its weights make a non-empty scene,
    which the mesh needs)."""
    monkeypatch.chdir(tmp_path)
    cfg = model_config(original_fixtures.config)
    monkeypatch.setattr(epigraf, "preset", lambda name: cfg)
    monkeypatch.setattr(epigraf.geometry, "extract_geometry",
                        functools.partial(epigraf.geometry.extract_geometry, resolution=GRID_RESOLUTION))
    G, _ = from_original(original_fixtures.config, original_fixtures.g_state)
    save_checkpoint(tmp_path / "net.safetensors", cfg, G_ema=G)
    before = set(tmp_path.iterdir())
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), namespace)
    written = set(tmp_path.iterdir()) - before
    # Every file name the snippet mentions in quotes, other than its input, was written and is not empty.
    named = {tmp_path / n for n in re.findall(r'"([\w.-]+\.(?:png|gif|glb|ply|mp4))"', BLOCKS[index])}
    assert named <= written and all(p.stat().st_size > 0 for p in named)


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


MENTIONS = sorted(set(re.findall(r"`(epigraf(?:\.\w+)+)", README)))
LISTED = [(module, name) for module, names in re.findall(r"`(epigraf(?:\.\w+)*)` \(([^)]*)\)", README)
          for name in re.findall(r"`(\w+)`", names)]


def test_readme_mentions_resolve():
    assert "epigraf.compat" in {m for m, _ in LISTED}
    for dotted in MENTIONS:
        _resolve(dotted)
    missing = [f"{module}.{name}" for module, name in LISTED if not hasattr(_resolve(module), name)]
    assert not missing, f"README names that do not exist: {missing}"


def builtin_snapshot_nimgs() -> list[int]:
    """The images at which a default `epigraf train` (builtin preset) writes its snapshots: ticks end at the first
    step past tick_kimg (the loop's rule), a snapshot every snapshot_ticks ticks and at the end."""
    from epigraf.train.options import TrainOptions

    opts = TrainOptions().with_preset_defaults()
    nimg, tick, tick_start, found = 0, 0, 0, []
    while nimg < opts.kimg * 1000:
        nimg += opts.batch_size
        if nimg >= tick_start + opts.tick_kimg * 1000 or nimg >= opts.kimg * 1000:
            tick, tick_start = tick + 1, nimg
            if tick % opts.snapshot_ticks == 0 or nimg >= opts.kimg * 1000:
                found.append(nimg)
    return found


def test_readme_snapshot_names_are_ones_a_builtin_run_writes():
    written = {f"network-{nimg:010d}.safetensors" for nimg in builtin_snapshot_nimgs()}
    named = set(re.findall(r"runs/00000-builtin/(network-\d{10}\.safetensors)", README))
    assert named and named <= written, f"{sorted(named - written)} are not among {sorted(written)}"
