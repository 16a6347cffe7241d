"""The environment of the `lepton` CLI and the local stack, read here only (the functions'
own is read by lepton_runtime.settings)."""

from __future__ import annotations

import os

DEFAULT_STATE_DIR = ".lepton"


def state_dir() -> str:
    """Where the local stack keeps its state: LEPTON_STATE_DIR, else ./.lepton."""
    return os.environ.get("LEPTON_STATE_DIR", DEFAULT_STATE_DIR)
