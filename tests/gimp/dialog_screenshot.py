"""Screenshot of the plug-in's dialog and its preview in the real GIMP 3.2 under Xvfb, and a before/after
picture.

    sudo python tests/gimp/dialog_screenshot.py [--out docs]

Starts a backend on the host and uses the model it suggests for its device. Enhances a crop of the
sample photo through the plug-in in GIMP 3.2 non-interactively and writes it next to a plain x4
enlargement (which also gives the backend a measured speed for the model). Then opens the photo in GIMP
(chroot built with --with-xvfb), calls AI Enhance interactively so its dialog appears, and captures it
once its preview has come back.
Writes docs/gimp-dialog.png and docs/gimp-before-after.png.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from chroot_gimp import REPO, ChrootGimp, build_chroot, free_address, virtual_display
from PIL import Image

from image_enhancer.client.grpc_client import EnhancerClient

SAMPLE = REPO / "docs" / "samples" / "fallen_leaf_320x200.png"

OPEN_DIALOG = """
from gi.repository import Gimp, Gio
image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path("{sample}"))
procedure = Gimp.get_pdb().lookup_procedure("python-fu-ai-enhance")
config = procedure.create_config()
config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
config.set_property("image", image)
config.set_core_object_array("drawables", image.get_layers())
procedure.run(config)
"""

XWD_TO_PNG = """
from gi.repository import Gimp, Gio
image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path("{xwd}"))
Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path("{png}"), None)
"""


def _start_backend(address: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "image_enhancer", "serve", "--address", address, "--no-warm-up"]
    process = subprocess.Popen(command)
    with EnhancerClient(address) as client:
        client.wait_until_serving(timeout=120)
    return process


def dialog_screenshot(gimp: ChrootGimp, out: Path) -> None:
    """Show the dialog on a virtual display and capture it (no window manager: the dialog sits at 0,0)."""
    shot_dir = gimp.job_dir("screenshot")
    (gimp.host(shot_dir) / SAMPLE.name).write_bytes(SAMPLE.read_bytes())
    code = OPEN_DIALOG.format(sample=shot_dir / SAMPLE.name)
    xwd = shot_dir / "screen.xwd"
    with virtual_display(gimp.root) as display:
        # Its own process group, so that GIMP and its plug-ins go with it (the dialog never gets an answer).
        gimp_process = subprocess.Popen(
            gimp.command(code, env={"DISPLAY": display}), stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            time.sleep(30)  # GIMP starts, the plug-in asks the backend for its models, the dialog maps
            capture = ["xwd", "-root", "-silent", "-display", display, "-out", str(xwd)]
            subprocess.run(["chroot", str(gimp.root), *capture], check=True)
        finally:
            os.killpg(gimp_process.pid, signal.SIGKILL)
            gimp_process.wait()
    png = shot_dir / "screen.png"
    subprocess.run(gimp.command(XWD_TO_PNG.format(xwd=xwd, png=png)), check=True, capture_output=True)
    screen = Image.open(gimp.host(png)).convert("RGB")
    lit = np.argwhere(np.asarray(screen).sum(axis=2) > 0)
    (top, left), (bottom, right) = lit.min(axis=0), lit.max(axis=0)
    screen.crop((left, top, right + 1, bottom + 1)).save(out / "gimp-dialog.png", optimize=True)


def before_after(gimp: ChrootGimp, out: Path, model: str) -> None:
    """A crop enlarged x4 plainly (left) and by the plug-in (right)."""
    crop = np.asarray(Image.open(SAMPLE).convert("RGB"))[70:150, 185:265]  # the leaf
    arguments = {"model": model, "scale": "x4"}
    result = gimp.run_job("before-after", np.ascontiguousarray(crop), arguments=arguments)
    if result["status"] != "success":
        raise RuntimeError(result.get("error"))
    enhanced = Image.fromarray(gimp.read(result, "new_layer", np.uint8, 3))
    plain = Image.fromarray(crop).resize(enhanced.size, Image.Resampling.BICUBIC)
    pair = Image.new("RGB", (plain.width * 2 + 8, plain.height), "white")
    pair.paste(plain, (0, 0))
    pair.paste(enhanced, (plain.width + 8, 0))
    pair.save(out / "gimp-before-after.png", optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    root = build_chroot("3.2", "--with-xvfb")
    address = free_address()
    backend = _start_backend(address)
    gimp = ChrootGimp(root, address, ["/usr/bin/false"], "3.2")
    try:
        with EnhancerClient(address) as client:
            model = client.describe().suggested_model
        before_after(gimp, args.out, model)
        dialog_screenshot(gimp, args.out)
    finally:
        gimp.remove()
        backend.terminate()
        backend.wait()
    print(f"wrote {args.out / 'gimp-dialog.png'} and {args.out / 'gimp-before-after.png'} with {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
