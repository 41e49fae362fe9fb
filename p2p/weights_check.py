"""Bounds for weights files from elsewhere, checked before anything is allocated.

A weights file is untrusted: `torch.load(weights_only=True)` runs no code, but it allocates what
the file declares. A zip member (torch's format) is inflated into a buffer of its declared size,
so a deflated member of zeros makes a 1 MB file ask for gigabytes; and every storage is allocated
at the byte count its pickle declares before its bytes are read. So, before loading:

- `check_zip_members`: the members of a zip checkpoint may not declare more bytes than the file
  holds (torch.save stores them uncompressed, so its own files always pass);
- `check_declared_storages`: each tensor's declared storage fits in the file (read by a first
  load onto the "meta" device, which allocates nothing; the older non-zip format is scanned
  without unpickling, since torch allocates its storages even for "meta");

and after loading, before use:

- `check_finite`: every floating tensor is finite (NaN weights make black images that look like
  a result);
- `check_fits`: every tensor has the shape the network expects (one line naming the first that
  does not, instead of load_state_dict's multi-line error or a traceback).

`tensor_nbytes` / `check_tensor_size` are the shape arithmetic itself, for readers of other
formats (a safetensors header declares dtype, shape and offsets: check them here before
reading); `all_finite` is the test behind `check_finite`. Every failure is one `CheckpointError`
line naming the file.
"""

from __future__ import annotations

import pickletools
import warnings
import zipfile
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from p2p.errors import CheckpointError, WeightsError

MAX_DIMS = 8  # no p2p network has a tensor of more dimensions (convs: 4; optimizer state: 0-4)
ZIP_MAGIC = b"PK\x03\x04"
# element sizes of the storage classes the older non-zip format names in its pickle
_LEGACY_STORAGE_BYTES = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
                         "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
                         "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}


def tensor_nbytes(shape: Iterable[int], element_size: int) -> int:
    """Bytes of a tensor of `shape`, in Python ints (no overflow whatever the file says); a
    ValueError for a shape no tensor can have."""
    dims = list(shape)
    if len(dims) > MAX_DIMS:
        raise ValueError(f"{len(dims)} dimensions (at most {MAX_DIMS})")
    n = element_size
    for d in dims:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise ValueError(f"shape {dims[:MAX_DIMS]} is not a list of sizes")
        n *= d
    return n


def check_tensor_size(name: str, shape: Iterable[int], element_size: int, available: int, path: str) -> int:
    """A tensor `name` declared with `shape` must fit in the `available` bytes of its file;
    returns its size. CheckpointError otherwise (nothing has been allocated yet)."""
    try:
        nbytes = tensor_nbytes(shape, element_size)
    except ValueError as e:
        raise CheckpointError(f"{path}: tensor {name[:80]!r} declares {e}: refused unread", path) from None
    if nbytes > available:
        raise CheckpointError(f"{path}: tensor {name[:80]!r} declares {nbytes:,} bytes, more than the file's "
                              f"{available:,}: a damaged or hostile file, refused before allocating", path)
    return nbytes


def check_zip_members(path: str, size: int) -> None:
    """The members of a zip checkpoint declare no more bytes than the file has (read from the
    central directory; nothing is inflated)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # torch's reader words the damage itself (read_checkpoint_file)
    declared = 0
    for info in members:
        declared += info.file_size
        if info.file_size > size or declared > size:
            how = "compressed, which torch.save never does" if info.compress_type != zipfile.ZIP_STORED else "stored"
            raise CheckpointError(f"{path}: its zip member {info.filename[:80]!r} ({how}) declares "
                                  f"{info.file_size:,} bytes, {declared:,} in all, in a {size:,}-byte file: a zip "
                                  f"bomb or a damaged file, refused before inflating", path)


MAX_NESTING = 64  # a p2p payload nests 6 levels (optimizer state); the checksum walk recurses


def tensors_in(obj, path: str, prefix: str = "", depth: int = 0):
    """(name, tensor) of every tensor in a loaded payload; a CheckpointError for nesting deeper
    than MAX_NESTING (which would exhaust the recursion of every walk that follows)."""
    if depth > MAX_NESTING:
        raise CheckpointError(f"{path}: nested more than {MAX_NESTING} levels deep: not a checkpoint", path)
    if isinstance(obj, torch.Tensor):
        yield prefix or "<top>", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            name = k if isinstance(k, str) else type(k).__name__
            yield from tensors_in(v, path, f"{prefix}.{name[:80]}" if prefix else name[:80], depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors_in(v, path, f"{prefix}[{i}]", depth + 1)


def _legacy_declared(path: str):
    """(storage class, bytes) of each storage the older non-zip format's pickles declare, read
    by scanning the pickle opcodes (nothing is unpickled): a persistent id is ("storage",
    <torch.XStorage>, key, location, numel, ...), the class possibly memoized and fetched again."""
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info
            for _ in pickletools.genops(f):
                pass
        memo: dict[int, int] = {}
        memo_count, pending, last_global = 0, None, None
        for opcode, arg, _ in pickletools.genops(f):
            name = opcode.name
            if name in ("GLOBAL", "STACK_GLOBAL"):
                cls = str(arg).split(" ")[-1] if arg else ""
                last_global = _LEGACY_STORAGE_BYTES.get(cls)
                pending = last_global or pending
                continue
            if name in _PUT_OPS:
                index = memo_count if name == "MEMOIZE" else arg
                memo_count += 1
                if last_global:
                    memo[index] = last_global
            elif name in _GET_OPS and arg in memo:
                pending = memo[arg]
            elif name in _INT_OPS and pending:
                yield pending, int(arg) * pending
                pending = None
            last_global = None


def check_declared_storages(path: str, size: int) -> None:
    """Every tensor a checkpoint declares fits in the file, before torch allocates it."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC
    if not is_zip:
        try:
            declared = list(_legacy_declared(path))
        except Exception:  # not a pickle p2p can scan: torch.load answers it (read_checkpoint_file)
            return
        for element_size, nbytes in declared:
            check_tensor_size("a storage", [nbytes // element_size], element_size, size, path)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skeleton = torch.load(path, map_location="meta", weights_only=True)
    for name, t in tensors_in(skeleton, path):
        check_tensor_size(name, [t.untyped_storage().nbytes()], 1, size, path)


def check_finite(state: Mapping, what: str) -> None:
    """Every floating tensor of a state dict is finite; else one WeightsError naming the first
    that is not (a run that diverged saved them, or someone planted them)."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.numel():
            if not all_finite(t):
                bad = int((~torch.isfinite(t)).sum())
                raise WeightsError(_named(what, f"tensor {str(name)[:80]!r} holds {bad:,} NaN or infinite value(s) "
                                          f"of {t.numel():,}: refused (outputs would be NaN: black images, null "
                                          f"scores); use an earlier checkpoint"), what)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of a floating tensor is finite."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.float16):
        return bool(np.isfinite(t.detach().numpy()).all())  # no torch dispatch: a state dict is hundreds of tensors
    return bool(torch.isfinite(t).all())


def check_fits(net: torch.nn.Module, state: Mapping, what: str) -> None:
    """Every tensor of `state` that `net` has is a tensor of the shape `net` expects."""
    expected = net.state_dict()
    for name, t in state.items():
        want = expected.get(name)
        if want is None:
            continue  # extra or missing keys: load_state_dict names them
        if not isinstance(t, torch.Tensor):
            raise WeightsError(_named(what, f"{str(name)[:80]!r} is a {type(t).__name__}, not a tensor"), what)
        if tuple(t.shape) != tuple(want.shape):
            raise WeightsError(_named(what, f"size mismatch for {str(name)[:80]}: shape {list(t.shape)[:MAX_DIMS]} in "
                                            f"the file, {list(want.shape)} in the network"), what)


def _named(what: str, text: str) -> str:
    return f"{what}: {text}" if what else text

