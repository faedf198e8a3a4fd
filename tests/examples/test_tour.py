import subprocess
import sys
from pathlib import Path

TOUR = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "tour.py"


def test_tour_stores_and_loads():
    r = subprocess.run([sys.executable, str(TOUR), "--temp"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "sha256://" in out and "same URI" in out and "'sampling_rate': 30000" in out
    assert "every step was loaded from the cache" in out
