"""Dataset validation: every problem of an image folder/zip and its ``dataset.json``, in one report.

What is checked (each problem is one message naming a few offending files):
errors — no images; unreadable or corrupt images; unsupported pixel formats (16-bit, float); images
sharing a key; non-square images; mixed sizes; several or malformed ``dataset.json``; camera angles
that are malformed, look like degrees, have pitch outside (0, π) or yaw outside [−π, π]; images without
poses and poses without images; labels of mixed kinds, malformed, negative, or not matching images; with
``coverage``, images whose coverage is missing (no alpha channel, or no stored mask in a built-in dataset).
warnings — yaw not zero-centred (with its circular mean); alpha channels (dropped, unless used as coverage); labels
that look like EG3D camera parameters; unknown ``dataset.json`` keys.

Cost: each image's header is read once (size and mode, no pixel decoding), and the last kilobyte of each PNG
and JPEG for its end marker, so a 100k-image dataset is checked in seconds and a file cut short is refused
before training starts. Corrupt data inside a complete file is only caught with ``decode=True``, which
decodes every image (what ``epigraf dataset check`` does by default); the ``ImageDataset`` constructor does
not decode and names the file if decoding fails later.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from epigraf.cameras.conventions import angle_errors, yaw_centring_warning
from epigraf.data.metadata import (
    EG3D_LABEL_SIZE,
    examples,
    labels_array,
    load_json,
    match_errors,
    parse_camera,
    parse_camera_angles,
    parse_labels,
)
from epigraf.data.sources import IMAGE_EXTENSIONS, Source, image_key, match_keys, open_source

# Modes PIL converts to 8-bit RGB without losing meaning; 16-bit and float modes would be clipped.
SUPPORTED_MODES = frozenset({"1", "L", "P", "RGB", "RGBA", "RGBX", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
KNOWN_KEYS = frozenset({"camera_angles", "labels", "camera"})


@dataclass
class DatasetIndex:
    """What a valid dataset holds, parsed once: images sorted by path and their metadata.

    names: [N] relative paths; angles: float64 [N, 3] or None; labels: float32 [N, c_dim] or None
    (class indices one-hot); label_kind: "class" | "vector" | None; camera: the stored
    {"fov", "radius"} or None.
    """

    source: Source
    names: list[str]
    resolution: int
    angles: np.ndarray | None = None
    labels: np.ndarray | None = None
    label_kind: str | None = None
    camera: dict[str, float] | None = None


@dataclass
class Report:
    """All errors and warnings of a dataset. ``index`` holds what could be parsed (None without images);
    it is complete and consistent only when there are no errors."""

    path: str
    num_images: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    index: DatasetIndex | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """ValueError listing every error (the CLI prints it as one clean message)."""
        if self.errors:
            raise ValueError(f"invalid dataset {self.path} ({len(self.errors)} problems):\n  - "
                             + "\n  - ".join(self.errors))

    def __str__(self) -> str:
        lines = [f"dataset {self.path}: {self.num_images} images"]
        if self.index is not None and self.ok:
            idx = self.index
            labels = "none" if idx.labels is None else f"{idx.labels.shape[1]}-dim {idx.label_kind}"
            lines[0] += (f", {idx.resolution}×{idx.resolution}, cameras: "
                         f"{'yes' if idx.angles is not None else 'no'}, labels: {labels}")
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  - {item}" for item in items)
        if self.ok:
            lines.append("no errors")
        return "\n".join(lines)


def validate_dataset(path: str | os.PathLike, *, decode: bool = False, yaw_tolerance: float = 0.1,
                     coverage: bool = False) -> Report:
    """Check a dataset folder or zip and collect every problem (see the module docstring).

    decode: fully decode every image (finds truncated files; slower). yaw_tolerance: |circular mean
    yaw| in radians above which yaw counts as not zero-centred. coverage: every image needs its coverage (its
    alpha channel, or in a built-in dataset its stored mask: ``geometry_file``). Raises FileNotFoundError for a
    missing path and ValueError for a file that is not a zip; everything else lands in the report.
    """
    source = open_source(path)
    report = Report(path=os.fspath(path))
    names = source.images()
    report.num_images = len(names)
    if not names:
        report.errors.append(f"no images found in {report.path} (looked for {', '.join(_common_extensions())}, "
                             "… — every format PIL can open)")
        return report
    resolution = _check_images(source, names, decode, report, coverage)
    keys = [image_key(n) for n in names]
    _check_duplicate_keys(names, keys, report)
    index = DatasetIndex(source=source, names=names, resolution=resolution or 0)
    _check_metadata(source, names, keys, index, report, yaw_tolerance)
    report.index = index
    return report


def _common_extensions() -> list[str]:
    return [e for e in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif") if e in IMAGE_EXTENSIONS]


@dataclass
class HeaderScan:
    """Every image's header: sizes and modes of the readable ones, (name, reason) of the others."""

    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def errors(self) -> list[str]:
        """Unreadable files and unsupported pixel formats, one message each."""
        errors = []
        if self.unreadable:
            shown = "; ".join(f"{n!r} ({why})" for n, why in self.unreadable[:3])
            more = f"; … ({len(self.unreadable)} in all)" if len(self.unreadable) > 3 else ""
            errors.append(f"{len(self.unreadable)} images cannot be read: {shown}{more}")
        bad = [n for n, mode in self.modes.items() if mode not in SUPPORTED_MODES]
        if bad:
            errors.append(f"{len(bad)} images have a pixel format that is not 8-bit (e.g. {bad[0]!r}: mode "
                          f"{self.modes[bad[0]]}); save them as 8-bit RGB")
        return errors

    def with_alpha(self) -> list[str]:
        return [n for n, mode in self.modes.items() if mode in ALPHA_MODES]


# The bytes every complete file of these formats has near its end: PNG's IEND chunk, JPEG's end-of-image marker
# (entropy-coded JPEG data stuffs every 0xFF, so the marker cannot occur inside it). A few trailing bytes are
# allowed after them, as decoders allow.
_END_MARKERS = {"PNG": b"IEND", "JPEG": b"\xff\xd9"}
_TAIL_BYTES = 1024


def _check_complete(fh, image_format: str | None) -> None:
    """Raise OSError when a PNG or JPEG file lacks its end marker: truncated data that its header alone does not
    show (a copy cut short), found without decoding the image."""
    marker = _END_MARKERS.get(image_format or "")
    if marker is None:
        return
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - _TAIL_BYTES))
    if marker not in fh.read():
        raise OSError(f"the file ends before its {image_format} data does (truncated, {size:,} bytes)")


def scan_images(source: Source, names: list[str], decode: bool = False) -> HeaderScan:
    """Open every image once: its header and, for PNG and JPEG, that the file is complete (its end marker); with
    ``decode`` a full decode as well (finds corrupt data inside a complete file)."""
    scan = HeaderScan()
    for name in names:
        try:
            with source.open(name) as fh, Image.open(fh) as im:
                if decode:
                    im.load()
                else:
                    _check_complete(fh, im.format)
                scan.sizes[name] = im.size
                scan.modes[name] = im.mode
        # Decoders raise many exception types on corrupt input (OSError, SyntaxError, struct.error, …);
        # any of them means the same thing here: this file cannot be used.
        except Exception as err:  # noqa: BLE001
            scan.unreadable.append((name, f"{type(err).__name__}: {err}"))
    return scan


def builtin_geometry_root(source: Source) -> str | None:
    """``source``'s folder when it is a built-in dataset's (one with ``geometry/``, epigraf.data.builtin), whose
    stored masks are its images' coverage; None for other datasets, whose coverage is each image's alpha."""
    return source.path if os.path.isdir(os.path.join(source.path, "geometry")) else None


def geometry_file(root: str | os.PathLike, image: str) -> str:
    """Where the built-in dataset at ``root`` stores the depth and mask of ``image`` (its relative path
    ``images/<object>/<view>.png``, or its key): ``root/geometry/<object>/<view>.npz``."""
    return os.path.join(root, "geometry", *f"{image_key(image).removeprefix('images/')}.npz".split("/"))


def _check_coverage(source: Source, names: list[str], with_alpha: list[str], report: Report) -> None:
    root = builtin_geometry_root(source)
    if root is not None:
        missing = [n for n in names if not os.path.isfile(geometry_file(root, n))]
        if missing:
            report.errors.append(f"{len(missing)} images of this built-in dataset have no stored mask in geometry/ "
                                 f"(e.g. {examples(missing)}): rebuild it with `epigraf dataset builtin --force`")
        return
    without = sorted(set(names) - set(with_alpha))
    if without:
        report.errors.append(f"{len(without)} images have no alpha channel (e.g. {examples(without)}): the objects' "
                             "coverage (--d-alpha) needs RGBA images, or a built-in dataset's masks")


def _check_images(source: Source, names: list[str], decode: bool, report: Report, coverage: bool) -> int | None:
    """Read every header (and decode, if asked); return the common square resolution, if there is one."""
    scan = scan_images(source, names, decode)
    report.errors.extend(scan.errors())
    alpha = scan.with_alpha()
    if coverage:
        _check_coverage(source, names, alpha, report)
    elif alpha:
        report.warnings.append(f"{len(alpha)} images have an alpha channel, which is dropped (e.g. {examples(alpha)}); "
                               "`epigraf dataset convert` composites it onto a background instead")
    return _check_sizes(scan.sizes, report)


def _check_sizes(sizes: dict[str, tuple[int, int]], report: Report) -> int | None:
    non_square = [n for n, (w, h) in sizes.items() if w != h]
    if non_square:
        w, h = sizes[non_square[0]]
        report.errors.append(f"{len(non_square)} images are not square, e.g. {non_square[0]!r} ({w}×{h}); "
                             "centre-crop them (epigraf dataset convert --crop --resolution R)")
    by_size: dict[tuple[int, int], list[str]] = defaultdict(list)
    for name, size in sizes.items():
        by_size[size].append(name)
    if len(by_size) > 1:
        groups = sorted(by_size.items(), key=lambda kv: -len(kv[1]))
        shown = ", ".join(f"{w}×{h} ({len(ns)} images, e.g. {ns[0]!r})" for (w, h), ns in groups[:4])
        report.errors.append(f"images have mixed sizes: {shown}; resize them to one resolution "
                             "(epigraf dataset convert --resolution R)")
        return None
    if not by_size or non_square:
        return None
    return next(iter(by_size))[0]


def _check_duplicate_keys(names: list[str], keys: list[str], report: Report) -> None:
    counts = Counter(keys)
    clashes = [k for k, c in counts.items() if c > 1]
    if clashes:
        files = [n for n, k in zip(names, keys, strict=True) if k == clashes[0]]
        report.errors.append(f"{len(clashes)} image keys are shared by several files once the extension is dropped, "
                             f"e.g. {' and '.join(repr(f) for f in files)}; dataset.json cannot tell them apart")


def _check_metadata(source: Source, names: list[str], keys: list[str], index: DatasetIndex, report: Report,
                    yaw_tolerance: float) -> None:
    files = source.metadata_files()
    if len(files) > 1:
        report.errors.append(f"found {len(files)} dataset.json files ({examples(files)}); keep exactly one")
        return
    if not files:
        return
    data, errors = load_json(source.read(files[0]), files[0])
    report.errors.extend(errors)
    if data is None:
        return
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        report.warnings.append(f"{files[0]} keys {unknown} are not used (known: {sorted(KNOWN_KEYS)})")
    index.camera, errors = parse_camera(data.get("camera"))
    report.errors.extend(errors)
    if data.get("camera_angles") is not None:
        index.angles = _matched_angles(data["camera_angles"], names, keys, report, yaw_tolerance)
    if data.get("labels") is not None:
        index.labels, index.label_kind = _matched_labels(data["labels"], names, keys, report,
                                                         has_cameras=index.angles is not None)


def _matched_angles(raw: object, names: list[str], keys: list[str], report: Report,
                    yaw_tolerance: float) -> np.ndarray | None:
    parsed = parse_camera_angles(raw)
    report.errors.extend(parsed.errors)
    match = match_keys(parsed.keys, keys)
    errors = match_errors("camera_angles", match, names, keys)
    report.errors.extend(errors)
    by_image = {image: parsed.values[k] for k, image in match.matched.items() if k in parsed.values}
    present = [i for i, k in enumerate(keys) if k in by_image]
    if not present:
        return None
    angles = np.stack([by_image[keys[i]] for i in present])
    problems = angle_errors(angles, [names[i] for i in present])
    report.errors.extend(problems)
    if not problems:
        warning = yaw_centring_warning(angles, yaw_tolerance)
        if warning:
            report.warnings.append(warning)
    return angles if not (errors or problems or parsed.errors) else None


def _matched_labels(raw: object, names: list[str], keys: list[str], report: Report,
                    has_cameras: bool) -> tuple[np.ndarray | None, str | None]:
    parsed = parse_labels(raw)
    report.errors.extend(parsed.errors)
    match = match_keys(parsed.keys, keys)
    errors = match_errors("labels", match, names, keys)
    report.errors.extend(errors)
    if parsed.errors or errors or not match.matched:
        return None, None
    by_image = {image: parsed.values[k] for k, image in match.matched.items()}
    labels = labels_array(by_image, keys)
    kind = "class" if isinstance(next(iter(by_image.values())), int) else "vector"
    if kind == "vector" and labels.shape[1] == EG3D_LABEL_SIZE and not has_cameras:
        report.warnings.append("labels are 25-number vectors and there are no camera_angles: these look like EG3D "
                               "camera parameters, not class labels — convert them with "
                               "`epigraf dataset convert --format eg3d`")
    return labels, kind
