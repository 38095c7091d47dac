"""Shared test fixtures."""
import importlib.util

import pytest

from helpers import ROOT


@pytest.fixture
def tool():
    """Import a script of tools/ by name, e.g. ``tool("gpu_session")`` (scripts, not a package)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
