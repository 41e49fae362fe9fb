"""The CPU decoder standing in for nvJPEG where there is no GPU (the development machines, CI).

Only the device call is replaced: `CpuJpegDecoder` takes the same list of JPEG files the nvjpeg
backend hands to `torchvision.io.decode_jpeg(files, device="cuda")` and decodes them with
libjpeg-turbo on the CPU. The reader, the files the workers send, the window cut, the batch,
the training and the resume are the real ones. The GPU itself is tested in tests/test_gpu.py.

    python tests/helpers/jpeg_stand_in.py train ARGS...   # `p2p train ARGS` with the stand-in
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_jpeg


class CpuJpegDecoder:
    """Decodes what the nvjpeg backend would send to the GPU, on the CPU. It records each call's
    files and raises, as nvJPEG does for a file it cannot read, when a call holds one of
    `reject` (files as bytes)."""

    def __init__(self, device=None, reject=()):
        self.device = torch.device("cpu")
        self.calls: list[list[bytes]] = []
        self.reject = set(reject)

    def __call__(self, files: list[torch.Tensor]) -> list[torch.Tensor]:
        assert isinstance(files, list) and files, "the decoder gets a non-empty list of files"
        for f in files:  # what decode_jpeg(..., device="cuda") accepts (torchvision checks the same)
            assert f.dtype == torch.uint8 and f.dim() == 1 and f.device.type == "cpu" and f.numel() > 0
        raw = [bytes(f.numpy()) for f in files]
        self.calls.append(raw)
        if any(r in self.reject for r in raw):
            raise RuntimeError("Error while decoding JPEG images: rejected by the stand-in")
        return decode_jpeg(files, mode=ImageReadMode.RGB)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import p2p.data.nvjpeg as nvjpeg
    from p2p.cli import main as p2p_main

    nvjpeg.NvjpegDecoder = CpuJpegDecoder  # the one part no machine here can run
    return p2p_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
