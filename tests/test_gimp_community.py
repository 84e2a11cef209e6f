"""A community model dropped into the models folder enhances a layer in the real GIMP 3.

A small random SPAN network stands in for a downloaded file; the backend runs on the host with its
own home folder, and the plug-in in the chroot finds the model in the backend's list like any other.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.SPAN import SPAN
from test_gimp_e2e import gimp_root, gimp_version  # noqa: F401 - the chroot fixtures, shared

from image_enhancer.client.grpc_client import EnhancerClient

sys.path.insert(0, str(Path(__file__).resolve().parent / "gimp"))
from chroot_gimp import ChrootGimp, backend_process, free_address  # noqa: E402

pytestmark = [pytest.mark.gimp, pytest.mark.slow]

MODEL = "2x-community-span"


@pytest.fixture(scope="module")
def community_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("home")
    (home / "models").mkdir()
    torch.manual_seed(0)
    network = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2)
    tensors = {k: v.contiguous() for k, v in network.state_dict().items()}
    save_file(tensors, home / "models" / f"{MODEL}.safetensors")
    env = {**os.environ, "IMAGE_ENHANCER_HOME": str(home)}
    with backend_process(free_address(), home / "serve.log", env) as address:
        yield address

def test_a_community_span_model_enhances_a_layer(
    gimp_root: Path, gimp_version: str, community_backend: str  # noqa: F811
) -> None:
    with EnhancerClient(community_backend) as client:
        listed = {m.name: m for m in client.list_models()}
        assert (listed[MODEL].architecture, listed[MODEL].scale) == ("SPAN", 2)
        photo = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        direct = client.enhance_array(photo, model=MODEL)
    gimp = ChrootGimp(gimp_root, community_backend, ["/usr/bin/false"], gimp_version)
    try:
        result = gimp.run_job("span-x2", photo, arguments={"model": MODEL, "scale": "x2"})
        assert result["status"] == "success", result.get("error")
        assert result["layers"][0] == ["photo (AI x2, 2x-community-span)", 64, 48, 0, 0]
        enhanced = gimp.read(result, "new_layer", np.uint8, 3)
        assert int(np.abs(enhanced.astype(int) - direct.astype(int)).max()) <= 1
    finally:
        gimp.remove()
