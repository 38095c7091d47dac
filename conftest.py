"""Test-wide settings: notebooks run on smoke settings and write their pictures to a temp dir,
removed when the run ends (unless MDDPM_OUTPUTS names a folder of the user's)."""
import os
import shutil
import tempfile

os.environ["MDDPM_SMOKE"] = "1"
_CREATED = None
if "MDDPM_OUTPUTS" not in os.environ:
    _CREATED = os.environ["MDDPM_OUTPUTS"] = tempfile.mkdtemp(prefix="mddpm-test-outputs-")


def pytest_unconfigure(config):
    """Remove the pictures this run wrote: each run wrote up to 20 MB that stayed in the temp folder."""
    if _CREATED:
        shutil.rmtree(_CREATED, ignore_errors=True)
