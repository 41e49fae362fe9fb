"""Draw docs/demo_motorcycle.png: the demo's held-out photo, colourised by `p2p predict`.

Run after `make demo`:  .venv/bin/python docs/demo_figure.py [RUN_DIR]   (default runs/demo)

It writes the held-out photo (never trained on) to a temporary folder, colourises it with
`p2p predict` exactly as a user would, once with last.pt and once with best.pt, and lays out
grey input | p2p predict | original  per checkpoint at half size. Nothing here is part of the
package: it only illustrates the README.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from p2p.data.folder import EMBEDDED_VAL, embedded_photo

GAP = 8


def colourise(checkpoint: Path, photo: Image.Image, name: str) -> Image.Image:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / f"{name}.png", Path(tmp) / "out"
        photo.save(src)
        subprocess.run([sys.executable, "-m", "p2p", "predict", str(checkpoint), str(src), "--out", str(out)],
                       check=True)
        return Image.open(out / f"{name}.png").convert("RGB")


def main() -> None:
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
    name = EMBEDDED_VAL[0]
    original = Image.fromarray(embedded_photo(name))
    gray = original.convert("L").convert("RGB")
    rows = []
    for which in ("last", "best"):
        checkpoint = run_dir / "checkpoints" / f"{which}.pt"
        step = torch.load(checkpoint, map_location="cpu", weights_only=False)["step"]
        panels = [gray, colourise(checkpoint, original, name), original]
        rows.append((f"{which}.pt (step {step})", [im.resize((im.width // 2, im.height // 2), Image.BICUBIC)
                                                   for im in panels]))
    w, h = rows[0][1][0].size
    label_h = 18
    sheet = Image.new("RGB", (3 * w + 2 * GAP, len(rows) * (h + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, panels) in enumerate(rows):
        top = r * (h + label_h)
        draw.text((w + GAP + 4, top + 3), f"p2p predict {label}", fill="black")
        for i, panel in enumerate(panels):
            sheet.paste(panel, (i * (w + GAP), top + label_h))
    dest = Path(__file__).with_name("demo_motorcycle.png")
    sheet.save(dest, optimize=True)
    print(f"wrote {dest} ({sheet.width}x{sheet.height}): grey input | p2p predict | original, "
          + ", ".join(label for label, _ in rows))


if __name__ == "__main__":
    main()
