"""The lab example: providers compute the pipeline for an analyst; a collaborator gets it all
from the channel, nothing computed again."""

import re
import subprocess
import sys
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "lab.py"
STEPS = 6


def test_the_analyst_is_served_by_providers_and_the_collaborator_by_the_channel(tmp_path):
    r = subprocess.run([sys.executable, str(LAB), "--dir", str(tmp_path / "lab"), "--duration",
                        "3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    analyst = out.split("4. the analyst")[1].split("5. a collaborator")[0]
    collaborator = out.split("5. a collaborator")[1]
    # every step of both runs was computed by a provider, none by the analyst or collaborator
    for run in (analyst, collaborator):
        assert len(re.findall(r"computed by provider-[12]\n", run)) == STEPS, run
    # each step computed once, by the providers together; nothing again for the collaborator
    counts = re.search(r"computed by the providers: \{'provider-1': (\d+), 'provider-2': (\d+)\}",
                       analyst)
    assert counts and int(counts[1]) + int(counts[2]) == STEPS, analyst
    assert "computed by the providers since: 0 (nothing was computed again)" in collaborator
    assert "% of true spikes found and labelled" in collaborator
