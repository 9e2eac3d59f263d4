"""Shared fixtures: devices to run on, and one torch thread per xdist worker."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: more intra-op threads would only fight each other.
    torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    """Each device the op must work on; CUDA is skipped, with the reason, where there is none."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA not available on this machine (CPU-only CI); run on a GPU host to cover it")
    return torch.device(request.param)
