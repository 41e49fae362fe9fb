"""Checkpoint files on disk: the checksum a p2p checkpoint carries, and the one way p2p reads a
checkpoint file (`read_checkpoint_file`), so that every command and the API answer a missing,
truncated, corrupt or foreign file with the same one-line `CheckpointError`.

The checksum (payload key `checksum`, "sha256:<hex>") covers every other entry of the payload:
each tensor's dtype, shape and bytes and each plain value, in the payload's order (pickle keeps
dict order, so the walk after loading is the walk before saving). It is computed over the CPU
copies that are saved, and verified on every load: a flipped bit anywhere in the weights or the
optimizer state is caught, not trained on. Every p2p payload carries one; official pix2pix
weights (and bare state dicts) have none and load unverified.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import warnings

import torch

from p2p.errors import CheckpointError
from p2p.weights_check import check_declared_storages, check_zip_members, tensors_in

CHECKSUM_KEY = "checksum"
ALGORITHM = "sha256"


def to_cpu(obj):
    """The payload with every tensor copied to the CPU once (what is hashed is what is saved)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}|".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))
    elif isinstance(obj, int) and obj.bit_length() > 4096:  # repr refuses ints past 4300 digits
        h.update(b"I" + obj.to_bytes(obj.bit_length() // 8 + 1, "little", signed=True) + b"|")
    else:  # str, int, bool, None, torch.Size, ...: their type and repr
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())


def payload_checksum(payload: dict) -> str:
    """sha256 over every entry but the checksum itself (see the module docstring)."""
    h = hashlib.new(ALGORITHM)
    _feed(h, {k: v for k, v in payload.items() if k != CHECKSUM_KEY})
    return f"{ALGORITHM}:{h.hexdigest()}"


def sealed(payload: dict) -> dict:
    """The payload on the CPU with its checksum added: what `torch.save` writes."""
    cpu = to_cpu({k: v for k, v in payload.items() if k != CHECKSUM_KEY})
    cpu[CHECKSUM_KEY] = payload_checksum(cpu)
    return cpu


def verify(obj, path) -> None:
    """Raise CheckpointError when a p2p payload's checksum is missing or wrong."""
    if not isinstance(obj, dict) or obj.get("format") != "p2p":
        return
    stored = obj.get(CHECKSUM_KEY)
    if stored is None:
        raise CheckpointError(f"{path} is corrupt: a p2p checkpoint without its checksum", str(path))
    actual = payload_checksum(obj)
    if actual != stored:
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents (stored "
                              f"{str(stored)[:19]}..., computed {actual[:19]}...): damaged on disk or in a copy",
                              str(path))


def _reason(error: Exception) -> str:
    """The informative part of a torch.load error: the unpickler's complaint, or the first sentence."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    blocked = [ln for ln in lines if "GLOBAL" in ln and "WeightsUnpickler error:" not in ln]
    if blocked:  # "Trying to load unsupported GLOBAL posix.mkdir whose module posix is blocked."
        return blocked[0].rstrip(".")[:120]
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error:" in ln:
            after = ln.split("WeightsUnpickler error:", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return after.split(" was not an allowed")[0][:120]
    first = lines[0].split(". ")[0] if lines else type(error).__name__
    return first[:120]


def read_checkpoint_file(path: str | os.PathLike) -> object:
    """torch.load with weights_only=True (tensors and plain containers only, no pickled code
    runs), checksum verified. Every way a file can fail is one CheckpointError naming it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}", path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is not a file (give a checkpoint such as checkpoints/last.pt)", path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror or e}", path) from None
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint (a failed copy?)", path)
    try:
        # what the file declares is bounded by its size before torch allocates it (p2p.weights_check)
        check_zip_members(path, size)
        check_declared_storages(path, size)
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise beside the error below
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        # a class or a function (torch words it "Unsupported global" or, for a blocked module such
        # as os, "unsupported GLOBAL ... is blocked"): anything but tensors and containers
        # (junk bytes fail the same way, as "Unsupported operand": those are not pickled objects)
        if "unsupported global" in str(e).lower() or (
                "Weights only load failed" in str(e) and "unsupported operand" not in str(e).lower()):
            raise CheckpointError(f"{path} holds pickled Python objects, not only tensors ({_reason(e)}): not a "
                                  f"p2p checkpoint or official pix2pix weights (torch.load weights_only refused "
                                  f"it)", path) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file ({size:,} bytes, starting {head!r})",
                              path) from None
    except MemoryError:
        raise CheckpointError(f"{path} is too large for the memory left ({size:,} bytes)", path) from None
    except Exception as e:  # RuntimeError, EOFError, ValueError, OSError ... from torch's readers
        if head == b"PK\x03\x04":  # a zip archive, torch's format, whose end is missing or broken
            raise CheckpointError(f"{path} is truncated or damaged ({size:,} bytes; {_reason(e)})", path) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file ({size:,} bytes, starting {head!r})",
                              path) from None
    for _ in tensors_in(obj, path):  # refuses nesting the walks below could not recurse through
        pass
    verify(obj, path)
    return obj
