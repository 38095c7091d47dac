"""Test-wide settings: notebooks run on smoke settings and write their pictures to a temp dir."""
import os
import tempfile

os.environ["MDDPM_SMOKE"] = "1"
os.environ.setdefault("MDDPM_OUTPUTS", tempfile.mkdtemp(prefix="mddpm-test-outputs-"))
