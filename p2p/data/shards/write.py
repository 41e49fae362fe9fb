"""Writing shards: samples into plain tars (`TarWriter`), one whole shard with its index and
sidecar (`write_shard`), many shards over a process pool (`write_shards`), and the manifest
that sums up the sidecars (`build_manifest`).

Each shard is written to a temporary name, fsynced and renamed, then its index and sidecar the
same way, so a crash never leaves half a shard and the sidecar marks a shard complete only
after its tar and index are in place. A write that fails (a full disk, an I/O error) removes
what it had written of that shard and fails it with one line naming the file, about how much
space the shard needs and how much is free; complete shards stay, and re-running finishes. The bytes depend on the plan alone: the same shards come
out of any --workers.
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from typing import Callable

from p2p.atomic import fsync_dir, write_bytes, write_error
from p2p.data.shards.encode import Skip, process_item
from p2p.data.shards.labels import process_label_item
from p2p.data.shards.format import FORMAT, FORMAT_VERSION, SPLITS, skip_record
from p2p.data.shards.index import Component, format_index
from p2p.data.shards.plan import OutputOptions, ShardTask, images_per_shard
from p2p.data.shards.scan import Scan
from p2p.errors import WriteError
from p2p.specs.tasks import TASKS

# (images done, images to write): called in the main process while shards are written
Progress = Callable[[int, int], None]


class TarWriter:
    """A plain tar writer that never writes PAX headers (DALI's reader rejects them).

    Each member gets one USTAR header when its name fits (100 characters, or up to 255 split
    at a '/' into USTAR's prefix field), else a GNU long-name (`L`) record before the header:
    DALI reads both, and DALI's `wds2idx` tool mis-computes offsets after `L` records (it uses
    GNU tar's block number of the `L` record), which is one reason the index is written here.
    mtime 0, uid/gid 0, empty user names, mode 0644: the same input gives the same bytes.
    `add` returns the member's data offset for the DALI index."""

    def __init__(self, f):
        self.f = f
        self.pos = 0

    def add(self, name: str, data: bytes) -> int:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mtime = 0
        ti.mode = 0o644
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.type = tarfile.REGTYPE
        try:
            header = ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
        except ValueError:  # name too long for USTAR
            header = ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
        offset = self.pos + len(header)
        pad = (-len(data)) % tarfile.BLOCKSIZE
        self.f.write(header)
        self.f.write(data)
        if pad:
            self.f.write(b"\0" * pad)
        self.pos = offset + len(data) + pad
        return offset

    def close(self) -> None:
        """Two zero blocks, then zeros up to a 10240-byte record, as tar does."""
        end = self.pos + 2 * tarfile.BLOCKSIZE
        end += (-end) % tarfile.RECORDSIZE
        self.f.write(b"\0" * (end - self.pos))
        self.pos = end


class SizeStats:
    """Image sizes seen (count, orientation, min/max/sum of width, height, short side); a
    sidecar holds one shard's, the manifest their merge."""

    KEYS = ("width", "height", "short")

    def __init__(self):
        self.n = 0
        self.portrait = self.landscape = self.square = 0
        self.mins = {k: None for k in self.KEYS}
        self.maxs = {k: None for k in self.KEYS}
        self.sums = {k: 0 for k in self.KEYS}

    def add(self, w: int, h: int) -> None:
        self.n += 1
        for k, v in (("width", w), ("height", h), ("short", min(w, h))):
            self.mins[k] = v if self.mins[k] is None else min(self.mins[k], v)
            self.maxs[k] = v if self.maxs[k] is None else max(self.maxs[k], v)
            self.sums[k] += v
        if w > h:
            self.landscape += 1
        elif h > w:
            self.portrait += 1
        else:
            self.square += 1

    def to_dict(self) -> dict:
        return {"n": self.n, "portrait": self.portrait, "landscape": self.landscape, "square": self.square,
                "min": self.mins, "max": self.maxs, "sum": self.sums}

    def merge(self, d: dict) -> None:
        if not d or not d.get("n"):
            return
        self.n += d["n"]
        self.portrait += d["portrait"]
        self.landscape += d["landscape"]
        self.square += d["square"]
        for k in self.KEYS:
            lo, hi = d["min"][k], d["max"][k]
            self.mins[k] = lo if self.mins[k] is None else min(self.mins[k], lo)
            self.maxs[k] = hi if self.maxs[k] is None else max(self.maxs[k], hi)
            self.sums[k] += d["sum"][k]

    def summary(self) -> dict:
        if not self.n:
            return {"n": 0}
        return {"n": self.n, "portrait": self.portrait, "landscape": self.landscape, "square": self.square,
                **{k: {"min": self.mins[k], "mean": round(self.sums[k] / self.n, 1), "max": self.maxs[k]}
                   for k in self.KEYS}}


# Called after every item a shard writer finishes, in whichever process writes it: the
# single-process run's progress, or a pool worker's shared counter (set by _init_worker).
# A process-wide hook because write_shard(task) is what the pool sends to its workers.
_item_done: Callable[[], None] | None = None


def _init_worker(counter) -> None:
    global _item_done

    def tick():
        with counter.get_lock():
            counter.value += 1

    _item_done = tick


def write_shard(t: ShardTask) -> dict:
    """Write one shard (tar, idx, sidecar; each to .tmp, fsync, rename) and return its sidecar."""
    t0 = time.perf_counter()
    os.makedirs(t.folder, exist_ok=True)
    base = os.path.join(t.folder, t.stem)
    for suffix in (".meta.json", ".tar", ".idx"):  # the sidecar first: no stale "complete" mark
        _remove(base + suffix)
    skipped: list[dict] = []
    samples: list[tuple[list[Component], bool]] = []
    src_stats, out_stats = SizeStats(), SizeStats()
    tmp = base + ".tar.tmp"
    w = None
    try:
        with open(tmp, "wb") as f:
            w = TarWriter(f)
            _fill(t, w, samples, skipped, src_stats, out_stats)
            w.close()
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a full disk, an I/O error: no partial tar is left behind
        _remove(tmp)
        # the space the whole shard needs, from the bytes per image written before it failed
        needed = int(w.pos / len(samples) * len(t.items)) if w is not None and samples else None
        raise write_error(base + ".tar", e, needed, kept="nothing of this shard is left behind", approx=True) from None
    upscaled = sum(up for _, up in samples)
    nbytes = w.pos
    if samples:
        os.replace(tmp, base + ".tar")
        try:
            write_bytes(base + ".idx", format_index([comps for comps, _ in samples]).encode("utf-8"))
        except OSError:
            _remove(base + ".tar")  # no tar without its index: the next run writes both again
            raise
    else:  # DALI cannot index an empty tar: a shard whose every input was skipped has no files
        os.remove(tmp)
        nbytes = 0
    meta = {
        "split": t.split, "index": t.index, "plan": t.plan, "options": t.opts.as_dict(),
        "planned": len(t.items), "count": len(samples), "bytes": nbytes,
        "skipped": skipped, "upscaled": upscaled,
        "sizes": {"source": src_stats.to_dict(), "output": out_stats.to_dict()},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    try:
        write_bytes(base + ".meta.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    except OSError:
        for suffix in (".tar", ".idx"):  # not complete without its sidecar: leave no half of a shard
            _remove(base + suffix)
        raise
    fsync_dir(t.folder)
    return meta


def _fill(t: ShardTask, w: TarWriter, samples: list, skipped: list, src_stats: SizeStats,
          out_stats: SizeStats) -> None:
    """Encode every item of the shard into the tar; `samples` gets (index components, upscaled)
    per stored image, `skipped` a record per skipped one."""
    for item in t.items:
        try:
            try:
                encode = process_label_item if TASKS[t.opts.task].input_kind == "labels" else process_item
                jpg, meta, src_size, out_size = encode(item, t.opts)
            except Skip:
                raise
            except MemoryError:
                raise Skip("too_large", "out of memory while decoding") from None
            except Exception as e:  # a bug or an exotic file must not stop the run
                raise Skip("decode_error", f"{type(e).__name__}: {e}") from None
        except Skip as e:
            skipped.append(skip_record(item.shown, e.reason, e.detail))
        else:
            js = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            members = {**(jpg if isinstance(jpg, dict) else {"jpg": jpg}), "json": js}  # labels: png, jpg
            samples.append(([Component(ext, w.add(f"{item.key}.{ext}", data), len(data), f"{item.key}.{ext}")
                             for ext, data in members.items()], bool(meta.get("upscaled"))))
            src_stats.add(*src_size)
            out_stats.add(*out_size)
        if _item_done is not None:
            _item_done()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def failure_text(e: Exception) -> str:
    """How a failed shard is reported: a WriteError's own line, else the type and message."""
    return str(e) if isinstance(e, WriteError) else f"{type(e).__name__}: {e}"


def write_shards(todo: list[ShardTask], workers: int, progress: Progress | None = None
                 ) -> tuple[list[dict], list[tuple[ShardTask, str]]]:
    """Write the shards, in parallel when there are several: (sidecars written, (task, error)
    of every shard that failed). `progress` hears of every item in the main process."""
    global _item_done
    results: list[dict] = []
    failures: list[tuple[ShardTask, str]] = []
    if not todo:
        return results, failures
    total = sum(len(t.items) for t in todo)
    report = progress or (lambda done, total: None)
    nproc = max(1, min(workers, len(todo)))
    if nproc == 1:
        done = 0

        def tick():
            nonlocal done
            done += 1
            report(done, total)

        _item_done = tick
        try:
            report(0, total)
            for t in todo:
                try:
                    results.append(write_shard(t))
                except Exception as e:
                    failures.append((t, failure_text(e)))
        finally:
            _item_done = None
        return results, failures

    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # fork: the workers start in milliseconds with everything imported (p2p.data imports torch:
    # seconds per process under spawn/forkserver) and only use PIL, numpy and files. The pool
    # is created and fed before the first report, so that a progress bar's refresh thread
    # starts after the fork.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    counter = ctx.Value("q", 0)
    with ProcessPoolExecutor(nproc, mp_context=ctx, initializer=_init_worker, initargs=(counter,)) as ex:
        futures = {ex.submit(write_shard, t): t for t in todo}
        pending = set(futures)
        report(0, total)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    results.append(fut.result())
                except Exception as e:
                    failures.append((futures[fut], failure_text(e)))
            report(counter.value, total)
    return results, failures


def sidecar_usable(meta: dict) -> bool:
    """Whether a sidecar found in OUT holds what `build_manifest` reads, with the right types (a
    damaged or hand-edited one: the shard is written again rather than trusted)."""
    try:
        for side in ("source", "output"):
            stats = SizeStats()
            stats.merge(meta["sizes"][side])
            json.dumps(stats.summary(), allow_nan=False)
        int_fields = [meta["count"], meta["bytes"], meta.get("upscaled", 0)]
        return (all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in int_fields)
                and isinstance(meta["skipped"], list)
                and all(isinstance(r, dict) and isinstance(r.get("path"), str) and isinstance(r.get("reason"), str)
                        for r in meta["skipped"]))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return False


def build_manifest(opts: OutputOptions, tasks: list[ShardTask], done: dict, found: Scan, paths: dict,
                   run: dict) -> dict:
    """The manifest: `paths` (source, b_dir, val_dir), the options, every complete shard's
    counts and sizes from its sidecar (`done`: (split, index) -> sidecar), what was skipped,
    and `run` (what this run did)."""
    from p2p.version import __version__

    splits: dict[str, dict] = {}
    skipped = list(found.skipped)
    src_stats, out_stats = SizeStats(), SizeStats()
    upscaled = 0
    for split in SPLITS:
        shards = []
        count = nbytes = 0
        for t in (t for t in tasks if t.split == split):
            meta = done.get((split, t.index))
            if meta is None:
                continue
            skipped.extend(meta["skipped"])
            src_stats.merge(meta["sizes"]["source"])
            out_stats.merge(meta["sizes"]["output"])
            upscaled += meta.get("upscaled", 0)
            if meta["count"]:
                shards.append({"file": f"{t.stem}.tar", "index": f"{t.stem}.idx",
                               "count": meta["count"], "bytes": meta["bytes"]})
                count += meta["count"]
                nbytes += meta["bytes"]
        splits[split] = {"shards": shards, "count": count, "bytes": nbytes,
                         "planned_shards": sum(1 for t in tasks if t.split == split)}
    skipped.sort(key=lambda r: (r["path"], r["reason"]))
    counts: dict[str, int] = {}
    for r in skipped:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "p2p_version": __version__,
        "task": opts.task,
        **paths,
        "options": opts.as_dict(),
        "layout": {
            "image": "<key>.jpg: RGB JPEG, short side = size"
            + ("; A|B side by side, each half size x size" if opts.paired else ""),
            "meta": "<key>.json: source path, source width/height (after EXIF orientation)",
            "index": "DALI wds2idx v1.2 (<shard>.idx)",
            "chroma_subsampling": "4:4:4" if opts.quality >= 90 else "4:2:0",
            "images_per_shard": images_per_shard(opts),
            **(opts.layout() if hasattr(opts, "layout") else {}),  # labels: the map member
        },
        "complete": all((t.split, t.index) in done for t in tasks),
        "train": splits["train"],
        "val": splits["val"],
        "count": splits["train"]["count"] + splits["val"]["count"],
        "sizes": {"source": src_stats.summary(), "output": out_stats.summary(), "upscaled": upscaled},
        "skipped_counts": dict(sorted(counts.items())),
        "skipped": skipped,
        "renamed_keys": dict(sorted(found.renamed.items())),
        "ignored": found.ignored,
        "run": run,
    }
