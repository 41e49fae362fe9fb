"""Reading a W&B offline run back (wandb >= 0.19 keeps no summary or config files offline; its
only record is `run-<id>.wandb`): the file is a LevelDB-style log (32 KiB blocks of chunks with a
7-byte header: crc32c, little-endian length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte W&B
header, each record a `wandb_internal_pb2.Record` protobuf."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, raw, buf = HEADER, [], b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        buf += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            raw.append(buf)
            buf = b""
    out = []
    for r in raw:
        rec = pb.Record()
        rec.ParseFromString(r)
        out.append(rec)
    return out


def history(path: Path) -> list[dict]:
    """One dict per logged step: key ('a/b' for nested keys) -> decoded JSON value."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({("/".join(i.nested_key) or i.key): json.loads(i.value_json) for i in rec.history.item})
    return rows


def config(path: Path) -> dict:
    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "config":
            out.update({u.key: json.loads(u.value_json) for u in rec.config.update})
    return out
