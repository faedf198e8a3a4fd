"""The spike-sorting example: it sorts, and its second run is served from the cache."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from kachery_tasks.runtime import cache

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "spike_sorting.py"


@pytest.fixture(scope="module")
def spike_sorting():
    spec = importlib.util.spec_from_file_location("spike_sorting_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _successes() -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in cache.current().records.runs(status="success"):
        counts[run.function] = counts.get(run.function, 0) + 1
    return counts


def test_pipeline_sorts_and_second_run_is_cached(spike_sorting):
    first = spike_sorting.run_pipeline(duration_s=6.0, n_channels=6, seed=3)
    assert first["accuracy"] > 0.8
    assert len(set(first["labels"].tolist())) == spike_sorting.N_UNITS
    after_first = _successes()
    steps = ["synthesize_recording", "bandpass", "detect_spikes", "waveform_features",
             "cluster", "ground_truth"]
    assert after_first == {f"examples.spike_sorting.{s}": 1 for s in steps}
    assert [name for name, cached, _ in first["steps"] if cached] == ["ground_truth"]

    second = spike_sorting.run_pipeline(duration_s=6.0, n_channels=6, seed=3)
    assert _successes() == after_first  # nothing was computed again
    assert all(cached for _, cached, _ in second["steps"])
    assert np.array_equal(second["labels"], first["labels"])
    assert np.array_equal(second["spikes"], first["spikes"])

    # the recording was made by a nested call: synthesize_recording -> ground_truth
    records = cache.current().records
    rec_id = spike_sorting.synthesize_recording.task_id(6.0, 6, 3)
    assert records.children(rec_id) == [spike_sorting.ground_truth.task_id(6.0, 3)]


def test_other_parameters_miss_the_cache(spike_sorting):
    spike_sorting.run_pipeline(duration_s=3.0, n_channels=4, seed=1)
    before = _successes()
    out = spike_sorting.run_pipeline(duration_s=3.0, n_channels=4, seed=2)
    assert not any(cached for name, cached, _ in out["steps"] if name != "ground_truth")
    assert sum(_successes().values()) == sum(before.values()) + 6


def test_main_prints_the_speedup(spike_sorting, capsys):
    spike_sorting.main(["--temp", "--duration", "3"])
    out = capsys.readouterr().out
    assert "run 1:" in out and "run 2:" in out
    assert "every step was loaded from the cache" in out
    assert out.count("computed ") == 5 and out.count("cached ") == 7
