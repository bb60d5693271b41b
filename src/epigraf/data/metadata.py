"""Reading ``dataset.json``: camera angles, labels and the stored camera, each checked (docs/method.md §6.1).

Parsers return plain values plus error messages instead of raising, so that a validation run can
collect every problem of a dataset at once. Matching the entries to images happens in ``validate``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from epigraf.data.sources import KeyMatch

EG3D_LABEL_SIZE = 25


@dataclass
class Parsed:
    """Entries of one dataset.json field: ``values`` key → value for the well-formed entries, the keys
    of the malformed ones (``invalid``), and the errors met while parsing."""

    values: dict[str, Any] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [*self.values, *self.invalid]


def load_json(text: bytes | str, name: str) -> tuple[dict[str, Any] | None, list[str]]:
    """Parse a metadata file; an invalid or non-object JSON is an error naming the file."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, [f"{name} is not valid JSON: {err}"]
    if not isinstance(data, dict):
        return None, [f"{name} must hold a JSON object, got {type(data).__name__}"]
    return data, []


def _entries(raw: Any, what: str) -> tuple[dict[str, Any], list[str]]:
    """A field given as {path: value} or as StyleGAN-style [[path, value], ...] → dict."""
    if isinstance(raw, dict):
        return raw, []
    if isinstance(raw, list) and all(isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str)
                                     for e in raw):
        out = {}
        duplicates = []
        for key, value in raw:
            if key in out:
                duplicates.append(key)
            out[key] = value
        errors = [f"{what} lists {len(duplicates)} paths twice, e.g. {examples(duplicates)}"] if duplicates else []
        return out, errors
    return {}, [f"{what} must map image paths to values ({{path: value}} or [[path, value], …]), "
                f"got {type(raw).__name__}"]


def examples(items: Iterable[Any], limit: int = 3) -> str:
    """A few items, quoted, with the total when there are more: "'a.png', 'b.png', … (7 in all)"."""
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_camera_angles(raw: Any) -> Parsed:
    """``camera_angles``: {path → [yaw, pitch, roll]} → {path → float64 [3]}; malformed entries are errors."""
    entries, errors = _entries(raw, "camera_angles")
    values, bad = {}, []
    for key, value in entries.items():
        if isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_number(v) for v in value):
            values[key] = np.asarray(value, dtype=np.float64)
        else:
            bad.append(key)
    if bad:
        errors.append(f"{len(bad)} camera_angles entries are not [yaw, pitch, roll] as three finite numbers, "
                      f"e.g. {examples(bad)}: {entries[bad[0]]!r}")
    return Parsed(values, bad, errors)


# Class indices make one-hot labels of max + 1 columns: a bound keeps a typo (or 10^9) from allocating GBs.
MAX_CLASSES = 100_000


def parse_labels(raw: Any) -> Parsed:
    """``labels``: {path → class index or vector}. Mixed kinds, negative classes, vectors of different
    lengths and other values are errors."""
    entries, errors = _entries(raw, "labels")
    ints = [k for k, v in entries.items() if isinstance(v, int) and not isinstance(v, bool)]
    vectors = [k for k, v in entries.items()
               if isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(x) for x in v)]
    other = [k for k in entries if k not in set(ints) | set(vectors)]
    if other:
        errors.append(f"{len(other)} labels are neither a class index (int) nor a vector of numbers, "
                      f"e.g. {examples(other)}: {entries[other[0]]!r}")
    if ints and vectors:
        errors.append(f"labels are of mixed kinds: {len(ints)} class indices (e.g. {examples(ints, 2)}) and "
                      f"{len(vectors)} vectors (e.g. {examples(vectors, 2)}); use one kind")
    negative = [k for k in ints if entries[k] < 0]
    if negative:
        errors.append(f"{len(negative)} class labels are negative, e.g. {examples(negative)}")
    huge = [k for k in ints if entries[k] >= MAX_CLASSES]
    if huge:
        errors.append(f"{len(huge)} class labels are ≥ {MAX_CLASSES:,}, e.g. {examples(huge)}: "
                      f"{entries[huge[0]]} (one-hot labels would need {entries[huge[0]] + 1:,} columns per image); "
                      "number the classes from 0")
    lengths = {len(entries[k]) for k in vectors}
    if len(lengths) > 1:
        errors.append(f"label vectors have different lengths {sorted(lengths)}")
    return Parsed({k: entries[k] for k in ints + vectors}, other, errors)


def labels_array(values: dict[str, Any], keys: list[str]) -> np.ndarray:
    """Parsed labels in ``keys`` order → float32 [N, c_dim]; class indices become one-hot (c_dim = max + 1)."""
    first = values[keys[0]]
    if isinstance(first, int):
        idx = np.asarray([values[k] for k in keys], dtype=np.int64)
        out = np.zeros((len(keys), int(idx.max()) + 1), dtype=np.float32)
        out[np.arange(len(keys)), idx] = 1.0
        return out
    return np.asarray([values[k] for k in keys], dtype=np.float32)


def parse_camera(raw: Any) -> tuple[dict[str, float] | None, list[str]]:
    """The optional ``camera`` entry {"fov": degrees, "radius": distance} that ``convert`` stores."""
    if raw is None:
        return None, []
    if not isinstance(raw, dict):
        return None, [f"dataset.json 'camera' must be an object like {{\"fov\": 12.0, \"radius\": 1.0}}, got {raw!r}"]
    errors = []
    fov, radius = raw.get("fov"), raw.get("radius")
    if fov is not None and not (_is_number(fov) and 0 < fov < 180):
        errors.append(f"dataset.json camera fov must be degrees in (0, 180), got {fov!r}")
    if radius is not None and not (_is_number(radius) and radius > 0):
        errors.append(f"dataset.json camera radius must be a positive number, got {radius!r}")
    if errors:
        return None, errors
    return {k: float(raw[k]) for k in ("fov", "radius") if raw.get(k) is not None}, []


def match_errors(what: str, match: KeyMatch, image_names: list[str], image_keys: list[str]) -> list[str]:
    """Errors for entries matching no image, ambiguous entries, and images without an entry."""
    errors = []
    if match.unmatched:
        errors.append(f"{len(match.unmatched)} {what} entries match no image, e.g. {examples(match.unmatched)}")
    if match.ambiguous:
        errors.append(f"{len(match.ambiguous)} {what} entries match an image another entry already matched, or "
                      f"several images, e.g. {examples(match.ambiguous)}")
    covered = set(match.matched.values())
    missing = [name for name, key in zip(image_names, image_keys, strict=True) if key not in covered]
    if missing:
        errors.append(f"{len(missing)} of {len(image_names)} images have no {what} entry, e.g. {examples(missing)}")
    return errors
