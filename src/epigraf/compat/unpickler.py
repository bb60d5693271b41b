"""The restricted unpickler for the original implementation's network-snapshot pickles (docs/method.md §12.3).

The original writes ``network-snapshot-<kimg>.pkl`` with a persistence mechanism that, on a normal
``pickle.load``, executes the Python source embedded in the file. This module's unpickler resolves only the
globals listed in ``docs/snapshot-format.md``: the persistence records come back as plain data, every other
class is an inert placeholder, and the embedded storages are decoded by torch's weights-only loader on CPU.
Nothing from the file is executed and no original module is imported.

It is also bounded, so that a small crafted file cannot exhaust time or memory: the opcode stream
is scanned before anything is built (opcode count, memo size, nesting), the object graph it built is
checked before anyone walks it (no cycles, bounded depth, and a bounded size *as a tree*, since shared
references let 1 KB describe a tree of 2^100 nodes), and every tensor view must lie inside its storage.

``epigraf.compat.snapshot_reader`` turns what it builds into state dicts; ``epigraf.compat.hyperparameters``
reads the configs recorded beside them.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import warnings
from collections.abc import Callable, Iterator
from typing import IO, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from epigraf.checkpoint import weights_only_refusal

__all__ = [
    "MODULE_PLACEHOLDERS",
    "Placeholder",
    "RestrictedUnpickler",
    "SnapshotFormatError",
    "UnsafePickleError",
    "check_graph",
    "check_opcodes",
]

# Bounds of the reader, each far above a real snapshot and far below what exhausts a machine (the sizes of a
# real one: docs/snapshot-format.md, "Bounds").
MAX_OPCODES = 10_000_000
MAX_MEMO = 2_000_000
MAX_DEPTH = 200
MAX_TREE_NODES = 5_000_000
MAX_TENSOR_ELEMENTS = 2**31


class UnsafePickleError(ValueError):
    """The pickle references a global outside the allow-list; nothing from it was executed."""

    def __init__(self, global_name: str, detail: str = "") -> None:
        self.global_name = global_name
        message = (
            f"refusing to load '{global_name}': it is not on the allow-list of the original's snapshot "
            "format (docs/snapshot-format.md), and loading it could execute code from the file"
        )
        super().__init__(f"{message}; {detail}" if detail else message)


class SnapshotFormatError(ValueError):
    """The file is readable safely, but is not shaped like an original network snapshot."""


class Placeholder:
    """Inert stand-in for a class that the reader must not import.

    The pickle may create it through NEWOBJ (``cls.__new__(cls, *args)``), REDUCE (``cls(*args)``),
    BUILD (``__setstate__``) and SETITEMS (``__setitem__``); each just records what it receives so
    that the caller can inspect it as data.
    """

    origin: ClassVar[str] = ""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    entries: dict[Any, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        # NEWOBJ calls only __new__, so the arguments must be captured here rather than in __init__.
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.entries = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.entries[key] = value

    def __repr__(self) -> str:
        return f"<placeholder for {self.origin}>"


def _placeholder_class(module: str, name: str) -> type[Placeholder]:
    return type(name, (Placeholder,), {"origin": f"{module}.{name}", "__module__": __name__})


_PLACEHOLDER_GLOBALS = (
    ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.modules.container", "ModuleList"),
    ("torch.nn.modules.sparse", "Embedding"),
    ("torch.optim.adam", "Adam"),
    ("src.dnnlib.util", "EasyDict"),
    ("dnnlib.util", "EasyDict"),
    ("omegaconf.dictconfig", "DictConfig"),
    ("omegaconf.listconfig", "ListConfig"),
    ("omegaconf.base", "ContainerMetadata"),
    ("omegaconf.base", "Metadata"),
    ("omegaconf.nodes", "AnyNode"),
    ("typing", "Any"),
    ("collections", "defaultdict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "int"),
)
_PLACEHOLDERS: dict[tuple[str, str], type[Placeholder]] = {
    key: _placeholder_class(*key) for key in _PLACEHOLDER_GLOBALS
}
# Ordinary torch modules pickled inside a network: their BUILD state is the module's attribute dict.
MODULE_PLACEHOLDERS = frozenset(
    _PLACEHOLDERS[key]
    for key in (
        ("torch.nn.modules.container", "Sequential"),
        ("torch.nn.modules.container", "ModuleList"),
        ("torch.nn.modules.sparse", "Embedding"),
    )
)


def _load_storage(data: bytes) -> torch.storage.TypedStorage:
    """Decode one embedded storage, replacing ``torch.storage._load_from_bytes``.

    The bytes are a whole legacy-format ``torch.save`` file. The original decodes them with an
    unrestricted ``torch.load``; here torch's weights-only loader does it, and ``map_location`` moves
    storages recorded on a GPU (``cuda:0`` in snapshots saved during training) to the CPU.
    """
    if not isinstance(data, bytes):
        raise SnapshotFormatError(f"embedded storage is {type(data).__name__}, expected bytes")
    with warnings.catch_warnings():
        # The legacy format can only hold TypedStorage, whose use torch flags as deprecated.
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
        try:
            storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafePickleError(
                "torch.storage._load_from_bytes", f"torch's weights-only loader refused its payload: "
                f"{weights_only_refusal(err)}"
            ) from None
        except (RuntimeError, EOFError) as err:
            raise SnapshotFormatError(f"cannot decode an embedded storage: {err}") from err
    if not isinstance(storage, torch.storage.TypedStorage):
        raise SnapshotFormatError(f"embedded storage bytes hold a {type(storage).__name__}, not a storage")
    return storage


def _check_no_hooks(backward_hooks: Any) -> None:
    # Hooks would be callables attached to the tensor; snapshots never carry any.
    if not isinstance(backward_hooks, dict) or backward_hooks:
        raise SnapshotFormatError("a stored tensor carries backward hooks; snapshots never do")


def _rebuild_tensor(
    storage: Any,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool,
    backward_hooks: Any,
    metadata: Any = None,
) -> Tensor:
    """``torch._utils._rebuild_tensor_v2`` after checking that its inputs are plain data."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise SnapshotFormatError(f"tensor storage is a {type(storage).__name__}, not a decoded storage")
    _check_no_hooks(backward_hooks)
    _check_view(storage._size(), storage_offset, size, stride)  # _size: size() warns that TypedStorage is deprecated
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata
    )


def _check_view(storage_size: int, offset: Any, size: Any, stride: Any) -> None:
    """Refuse a view reaching outside its storage: torch would grow the storage to fit it (a 100000×100000
    view of 4 elements allocates 40 GB) before any shape is checked."""
    def whole_numbers(x: Any) -> bool:
        return isinstance(x, tuple) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in x)

    if not (whole_numbers(size) and whole_numbers(stride) and whole_numbers((offset,)) and len(size) == len(stride)):
        raise SnapshotFormatError(f"a tensor has a malformed shape {size!r:.80}, stride {stride!r:.80} or "
                                  f"offset {offset!r:.40}")
    numel = 1
    for n in size:
        numel *= n
    if numel > MAX_TENSOR_ELEMENTS:
        raise SnapshotFormatError(f"a tensor of shape {list(size)} ({numel:,} elements) exceeds the "
                                  f"{MAX_TENSOR_ELEMENTS:,} this reader accepts")
    if numel and offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True)) >= storage_size:
        raise SnapshotFormatError(f"a tensor of shape {list(size)} (stride {list(stride)}, offset {offset}) "
                                  f"reaches outside its storage of {storage_size} elements")


def _reconstruct_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for the empty array that a pickled ndarray starts as (its data arrives with
    BUILD, which checks the sizes); any other shape would allocate before anything checks it."""
    if subtype is not np.ndarray or shape != (0,):
        raise SnapshotFormatError(f"a numpy array is rebuilt with shape {shape!r:.80}; pickled arrays start empty")
    return np.ndarray.__reduce__(np.zeros(0))[0](subtype, shape, dtype)


def _rebuild_parameter(data: Any, requires_grad: bool, backward_hooks: Any) -> torch.nn.Parameter:
    """``torch._utils._rebuild_parameter`` after checking that its inputs are plain data."""
    if type(data) is not Tensor:
        raise SnapshotFormatError(f"parameter data is a {type(data).__name__}, not a tensor")
    _check_no_hooks(backward_hooks)
    return torch.nn.Parameter(data, requires_grad=requires_grad)


def _persistent_record(meta: Any) -> dict[str, Any]:
    """Stand-in for ``_reconstruct_persistent_obj``: the record's ``meta`` dict, kept as data.

    The original would execute ``meta['module_src']`` and instantiate ``meta['class_name']``.
    """
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise SnapshotFormatError("a persistent-object record has no 'state' dict")
    return meta


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # numpy 2 renamed numpy.core to numpy._core; files name whichever the writer had, and the
    # functions are taken from live objects so that this works on either numpy version.
    scalar = np.float64(0).__reduce__()[0]
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        table.update(
            {
                (module, "_reconstruct"): _reconstruct_array,
                (module, "scalar"): scalar,
                (module, "ndarray"): np.ndarray,
                (module, "dtype"): np.dtype,
            }
        )
    return table


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("src.torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    **_numpy_globals(),
    **_PLACEHOLDERS,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of the original's snapshot format.

    Every lookup of a class or function goes through :meth:`find_class` (GLOBAL, STACK_GLOBAL, INST,
    OBJ and the copyreg extension codes alike), so refusing there refuses before anything is called.
    """

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self._file = file

    def load(self) -> Any:
        """The object, after ``check_opcodes`` on the stream and before anything else sees it, ``check_graph``."""
        start = self._file.tell()
        check_opcodes(self._file)
        self._file.seek(start)
        try:
            data = super().load()
        except RecursionError as err:
            raise SnapshotFormatError(f"the pickle nests objects deeper than Python can build ({err})") from None
        check_graph(data)
        return data

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent id", f"snapshots contain no persistent ids (got a {type(pid).__name__})")


_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
# Opcodes that pop back to the last MARK.
_POP_MARK_OPCODES = frozenset({"TUPLE", "LIST", "DICT", "APPENDS", "SETITEMS", "ADDITEMS", "FROZENSET", "INST",
                               "OBJ", "POP_MARK"})


def check_opcodes(file: IO[bytes]) -> None:
    """Scan one pickle's opcode stream without building anything; raise SnapshotFormatError when it has more
    than MAX_OPCODES opcodes (objects), MAX_MEMO memo entries or MAX_DEPTH nested MARKs, or is malformed."""
    ops = memo = depth = 0
    try:
        for opcode, _, _ in pickletools.genops(file):
            ops += 1
            memo += opcode.name in _MEMO_OPCODES
            depth += (opcode.name == "MARK") - (opcode.name in _POP_MARK_OPCODES)
            if ops > MAX_OPCODES or memo > MAX_MEMO or depth > MAX_DEPTH:
                what = ("opcodes", MAX_OPCODES) if ops > MAX_OPCODES else ("memo entries", MAX_MEMO) \
                    if memo > MAX_MEMO else ("nested marks", MAX_DEPTH)
                raise SnapshotFormatError(f"the pickle has more than {what[1]:,} {what[0]}; no snapshot has")
    except ValueError as err:
        if isinstance(err, SnapshotFormatError):
            raise
        raise SnapshotFormatError(f"not a readable pickle: {err}") from err


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield value
    elif isinstance(node, (list, tuple, set, frozenset)):
        yield from node
    elif isinstance(node, Placeholder):
        yield from (node.args, node.kwargs, node.entries)
        if node.origin.startswith("omegaconf.") and isinstance(node.state, dict):
            # OmegaConf nodes point back at their parent, the one cycle of the format; no reader follows it.
            yield from (v for k, v in node.state.items() if k != "_parent")
        else:
            yield node.state


def check_graph(root: Any) -> None:
    """Raise SnapshotFormatError if the unpickled graph has a cycle, is nested deeper than MAX_DEPTH, or
    would have more than MAX_TREE_NODES nodes when walked as a tree (what the readers below do).

    Linear in the graph's size: each node's tree size is computed once (by id) and reused."""
    tree_size: dict[int, int] = {}
    on_path: set[int] = set()
    keep_alive: list[Any] = []  # ids stay unique only while their objects live

    def size(node: Any, depth: int) -> int:
        key = id(node)
        if key in tree_size:
            return tree_size[key]
        if key in on_path:
            raise SnapshotFormatError("the pickle's objects contain themselves (a reference cycle); no snapshot does")
        if depth > MAX_DEPTH:
            raise SnapshotFormatError(f"the pickle nests objects more than {MAX_DEPTH} deep; no snapshot does")
        on_path.add(key)
        total = 1
        for child in _children(node):
            total += size(child, depth + 1)
            if total > MAX_TREE_NODES:
                raise SnapshotFormatError(f"the pickle's objects, with their shared references expanded, exceed "
                                          f"{MAX_TREE_NODES:,} nodes; no snapshot does")
        on_path.discard(key)
        tree_size[key] = total
        keep_alive.append(node)
        return total

    size(root, 0)
