import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["smearflow", "smearflow.cli", "smearflow.pipeline", "smearflow.db"])
def test_importing_stays_light(module):
    code = (
        f"import sys, {module}; "
        "heavy = [m for m in ('tensorflow', 'keras', 'cv2', 'jax', 'torch') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_answers_without_heavy_imports():
    out = subprocess.run([sys.executable, "-m", "smearflow", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "analyze" in out.stdout and "counts" in out.stdout
