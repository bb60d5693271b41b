"""Where dataset files come from: a folder or a zip archive, listed once and read by relative path.

Relative paths are POSIX paths from the dataset root. For a zip whose entries all live under one
top-level folder (what zipping a folder produces) that folder is the root, so a folder and its zip
list the same paths. An image's *key* is its relative path without the extension; ``dataset.json``
entries are matched to images by key (docs/method.md §6.1).
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

log = logging.getLogger(__name__)

Image.init()
# Extensions PIL can open (some registered ones, e.g. .pdf, are write-only).
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
METADATA_NAME = "dataset.json"
# macOS archive litter: resource forks that share the image's extension but are not images.
_JUNK_DIR = "__MACOSX/"


def is_image_path(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def image_key(name: str) -> str:
    """Relative path → key: normalised POSIX path without a leading './' or an image extension."""
    key = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
    return posixpath.splitext(key)[0] if is_image_path(key) else key


class Source:
    """A read-only listing of files; subclasses implement ``_list`` and ``open``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._files: list[str] | None = None

    def files(self) -> list[str]:
        """All regular files, relative POSIX paths, sorted; hidden files and macOS litter skipped."""
        if self._files is None:
            self._files = sorted(f for f in self._list() if not _is_junk(f))
        return self._files

    def images(self) -> list[str]:
        return [f for f in self.files() if is_image_path(f)]

    def metadata_files(self) -> list[str]:
        return [f for f in self.files() if posixpath.basename(f) == METADATA_NAME]

    def read(self, name: str) -> bytes:
        with self.open(name) as fh:
            return fh.read()

    def _list(self) -> Iterable[str]:
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError


def _is_junk(name: str) -> bool:
    return name.startswith(_JUNK_DIR) or any(part.startswith(".") for part in name.split("/"))


class FolderSource(Source):
    """A folder. Links to folders are followed only to a folder inside the root not listed yet: a link out of
    the root (e.g. to /) or back into the tree (``loop -> .``) is skipped with a warning, where following it
    would list the same images again or walk the whole disk. Links to files are followed wherever they point."""

    def _list(self) -> Iterable[str]:
        root = os.path.realpath(self.path)
        visited = {root}
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=True):
            # Real folders first, so that a link to a sibling is the one skipped.
            dirnames.sort(key=lambda d: os.path.islink(os.path.join(dirpath, d)))
            kept = []
            for name in dirnames:
                real = os.path.realpath(os.path.join(dirpath, name))
                if real in visited or os.path.commonpath([root, real]) != root:
                    log.warning("%s: not following the link %s (to %s): it leads %s", self.path,
                                os.path.join(dirpath, name), real,
                                "back into the dataset" if real in visited else "out of the dataset folder")
                    continue
                visited.add(real)
                kept.append(name)
            dirnames[:] = kept
            rel = os.path.relpath(dirpath, self.path)
            for name in filenames:
                yield posixpath.normpath(posixpath.join(rel.replace(os.sep, "/"), name))

    def open(self, name: str) -> BinaryIO:
        return open(os.path.join(self.path, *name.split("/")), "rb")


class ZipSource(Source):
    """A zip archive, opened lazily once per process (zip handles must not cross a DataLoader fork)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1
        self._prefix = ""

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zip

    def _list(self) -> Iterable[str]:
        names = [n for n in self._archive().namelist() if not n.endswith("/") and not _is_junk(n)]
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) == 1 and all("/" in n for n in names):
            self._prefix = tops.pop() + "/"
        return [n[len(self._prefix):] for n in names]

    def open(self, name: str) -> BinaryIO:
        self.files()  # the root prefix is known once the archive has been listed
        return self._archive().open(self._prefix + name)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None, "_pid": -1}


def open_source(path: str | os.PathLike) -> Source:
    """A folder or a zip archive; FileNotFoundError if missing, ValueError if neither."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return FolderSource(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is neither a folder nor a zip archive")
    return ZipSource(path)


def open_image(source: Source, name: str) -> Image.Image:
    """A PIL image read fully into memory (so no file handle outlives the call)."""
    return Image.open(io.BytesIO(source.read(name)))


@dataclass
class KeyMatch:
    """Result of matching metadata keys to image keys: ``matched`` maps key → image key."""

    matched: dict[str, str]
    unmatched: list[str]
    ambiguous: list[str]


def match_keys(keys: Iterable[str], image_keys: Iterable[str]) -> KeyMatch:
    """Match metadata keys (paths, with or without extension) to image keys.

    A key matches the image with the same key; failing that, the key with leading folders removed
    (metadata written relative to a parent folder, e.g. "./train/r_0" for an image "r_0"); failing that,
    the unique image whose path ends with the key (metadata relative to a subfolder). Two keys landing
    on the same image, or a suffix shared by several images, are ``ambiguous``.
    """
    images = set(image_keys)
    by_suffix: dict[str, list[str]] = {}
    for k in images:
        parts = k.split("/")
        for i in range(1, len(parts)):
            by_suffix.setdefault("/".join(parts[i:]), []).append(k)
    matched: dict[str, str] = {}
    unmatched: list[str] = []
    ambiguous: list[str] = []
    taken: set[str] = set()
    for raw in keys:
        target = _resolve(image_key(raw), images, by_suffix)
        if target is None:
            (ambiguous if len(by_suffix.get(image_key(raw), [])) > 1 else unmatched).append(raw)
        elif target in taken:
            ambiguous.append(raw)
        else:
            taken.add(target)
            matched[raw] = target
    return KeyMatch(matched, unmatched, ambiguous)


def _resolve(key: str, images: set[str], by_suffix: dict[str, list[str]]) -> str | None:
    parts = key.split("/")
    for i in range(len(parts)):
        candidate = "/".join(parts[i:])
        if candidate in images:
            return candidate
    owners = by_suffix.get(key, [])
    return owners[0] if len(owners) == 1 else None
