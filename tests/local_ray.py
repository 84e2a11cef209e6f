"""A one-machine Ray cluster for the cluster tests: Ray imported (skipped without the cluster extra,
failed under CI=true, where it must be installed) and started with 2 CPUs."""

from __future__ import annotations

import os
from types import ModuleType

import pytest


def ray_or_skip() -> ModuleType:
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("Ray is not installed; CI installs the cluster extra (python3 install.py --cluster)")
        pytest.skip("Ray (the cluster extra) is not installed")
    return ray


def start_local_ray(ray: ModuleType) -> None:
    """``ray.init`` on this machine; started again once when Ray's own processes miss its start-up
    deadline, which happened once on two busy CI cores with nothing else wrong."""
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as error:  # Ray raises a bare Exception for this
        if "timed out during startup" not in str(error):
            raise
        ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
