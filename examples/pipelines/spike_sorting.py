"""A small spike-sorting pipeline whose every step is a cached ``@pure`` task.

synthetic extracellular recording -> bandpass (scipy.signal) -> spike
detection -> waveform features (PCA with numpy) -> clustering (k-means with
numpy), then a comparison with the ground truth the recording was made from.

Run it with ``python examples/pipelines/spike_sorting.py`` (add ``--temp`` for
a throwaway node directory). The pipeline runs twice: the second run loads
every step from the cache instead of computing it. Each task has an explicit
``name=`` so its ids do not depend on how this file is started (as a script
its module is ``__main__``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import kachery_tasks as kachery

FS = 30_000.0
SNIPPET = (-20, 40)  # samples before and after the trough
N_UNITS = 3


# ------------------------------------------------------------------ data
def _templates(n_channels: int, seed: int) -> np.ndarray:
    """One multichannel waveform (60 samples x channels) per unit."""
    rng = np.random.default_rng(seed + 1)
    t = np.arange(SNIPPET[1] - SNIPPET[0]) - (-SNIPPET[0])
    out = np.zeros((N_UNITS, t.size, n_channels), dtype=np.float32)
    for u in range(N_UNITS):
        width = 4.0 + 3.0 * u
        shape = -np.exp(-0.5 * (t / width) ** 2) + 0.35 * np.exp(-0.5 * ((t - 3 * width) / 8) ** 2)
        center = (u * (n_channels - 1)) / (N_UNITS - 1)
        gains = np.exp(-0.5 * ((np.arange(n_channels) - center) / 1.5) ** 2)
        amplitude = 120.0 + 40.0 * u + rng.uniform(-10, 10)
        out[u] = amplitude * shape[:, None] * gains[None, :]
    return out


@kachery.pure(name="examples.spike_sorting.ground_truth", version="1")
def ground_truth(duration_s: float, seed: int) -> np.ndarray:
    """Spike times (samples) and unit labels, as an (n, 2) int64 array sorted by time."""
    rng = np.random.default_rng(seed)
    n_samples = int(duration_s * FS)
    rows = []
    for u, rate in enumerate((8.0, 12.0, 5.0)[:N_UNITS]):
        n = rng.poisson(rate * duration_s)
        times = np.sort(rng.integers(-SNIPPET[0], n_samples - SNIPPET[1], size=n))
        keep = np.concatenate([[True], np.diff(times) > 90])  # refractory period, 3 ms
        rows.append(np.stack([times[keep], np.full(keep.sum(), u)], axis=1))
    events = np.concatenate(rows)
    events = events[np.argsort(events[:, 0], kind="stable")]
    return events.astype(np.int64)


@kachery.pure(name="examples.spike_sorting.synthesize_recording", version="1")
def synthesize_recording(duration_s: float, n_channels: int, seed: int) -> np.ndarray:
    """Noise, a slow LFP-like oscillation and the units' spikes: (samples, channels) float32."""
    rng = np.random.default_rng(seed + 2)
    n_samples = int(duration_s * FS)
    recording = rng.normal(0.0, 10.0, size=(n_samples, n_channels)).astype(np.float32)
    t = np.arange(n_samples, dtype=np.float32) / FS
    recording += (80.0 * np.sin(2 * np.pi * 6.0 * t))[:, None].astype(np.float32)
    templates = _templates(n_channels, seed)
    for time_, unit in ground_truth(duration_s, seed):
        start = time_ + SNIPPET[0]
        recording[start : start + templates.shape[1]] += templates[unit]
    return recording


# ------------------------------------------------------------ the steps
@kachery.pure(name="examples.spike_sorting.bandpass")
def bandpass(recording: np.ndarray, low: float, high: float) -> np.ndarray:
    """Zero-phase Butterworth band-pass filter along time."""
    from scipy import signal

    sos = signal.butter(3, [low, high], btype="bandpass", fs=FS, output="sos")
    return signal.sosfiltfilt(sos, recording, axis=0).astype(np.float32)


@kachery.pure(name="examples.spike_sorting.detect_spikes")
def detect_spikes(filtered: np.ndarray, threshold: float) -> np.ndarray:
    """Troughs below ``-threshold`` robust standard deviations, at most one per 1 ms."""
    noise = np.median(np.abs(filtered), axis=0) / 0.6745
    z = (filtered / noise).min(axis=1)
    below = z < -threshold
    is_min = np.r_[False, (z[1:-1] <= z[:-2]) & (z[1:-1] < z[2:]), False]
    candidates = np.flatnonzero(below & is_min)
    lo, hi = -SNIPPET[0], filtered.shape[0] - SNIPPET[1]
    candidates = candidates[(candidates >= lo) & (candidates < hi)]
    kept: list[int] = []
    for c in candidates[np.argsort(z[candidates])]:  # deepest first
        if _far(kept, c):
            kept.append(int(c))
    return np.sort(np.array(kept, dtype=np.int64))


def _far(kept: list[int], c: int) -> bool:
    return not kept or min(abs(c - k) for k in kept) > 30


@kachery.pure(name="examples.spike_sorting.waveform_features")
def waveform_features(filtered: np.ndarray, spikes: np.ndarray, n_components: int) -> np.ndarray:
    """The first principal components of each spike's multichannel snippet."""
    offsets = np.arange(SNIPPET[0], SNIPPET[1])
    snippets = filtered[spikes[:, None] + offsets[None, :]]  # (spikes, samples, channels)
    flat = snippets.reshape(len(spikes), -1).astype(np.float64)
    flat -= flat.mean(axis=0)
    _, vectors = np.linalg.eigh(flat.T @ flat)  # eigenvalues in ascending order
    return flat @ vectors[:, ::-1][:, :n_components]


@kachery.pure(name="examples.spike_sorting.cluster")
def cluster(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means (k-means++ start, Lloyd iterations) in numpy: one label per spike."""
    rng = np.random.default_rng(seed)
    centers = [features[rng.integers(len(features))]]
    for _ in range(1, k):
        d2 = np.min([((features - c) ** 2).sum(axis=1) for c in centers], axis=0)
        centers.append(features[rng.choice(len(features), p=d2 / d2.sum())])
    centers = np.array(centers)
    labels = np.zeros(len(features), dtype=np.int64)
    for _ in range(100):
        d = ((features[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        new = d.argmin(axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        centers = np.array([features[labels == j].mean(axis=0) if np.any(labels == j)
                            else centers[j] for j in range(k)])
    return labels


# -------------------------------------------------------------- pipeline
def run_pipeline(duration_s: float = 20.0, n_channels: int = 8, seed: int = 0) -> dict:
    """Run every step; report how many were computed and how many came from the cache."""
    steps = []
    ids = {}  # step name -> task id (where its result came from is in the records)

    def step(task, *args):
        cached = task.is_cached(*args)
        t0 = time.perf_counter()
        value = task(*args)
        steps.append((task.name.rsplit(".", 1)[-1], cached, time.perf_counter() - t0))
        ids[steps[-1][0]] = task.task_id(*args)
        return value

    recording = step(synthesize_recording, duration_s, n_channels, seed)
    filtered = step(bandpass, recording, 300.0, 6000.0)
    spikes = step(detect_spikes, filtered, 5.0)
    features = step(waveform_features, filtered, spikes, 3)
    labels = step(cluster, features, N_UNITS, seed)
    truth = step(ground_truth, duration_s, seed)
    return {
        "spikes": spikes,
        "labels": labels,
        "accuracy": accuracy(truth, spikes, labels),
        "steps": steps,
        "ids": ids,
    }


def accuracy(truth: np.ndarray, spikes: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of true spikes found (within 0.5 ms) with the best-matching cluster label."""
    idx = np.searchsorted(spikes, truth[:, 0])
    hits = 0
    votes = np.zeros((N_UNITS, N_UNITS), dtype=np.int64)
    matched = []
    for (t, unit), i in zip(truth, idx):
        near = [j for j in (i - 1, i) if 0 <= j < len(spikes) and abs(spikes[j] - t) <= 15]
        if near:
            matched.append((unit, labels[near[0]]))
            votes[unit, labels[near[0]]] += 1
    best = votes.argmax(axis=1)
    hits = sum(1 for unit, label in matched if best[unit] == label)
    return hits / len(truth)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--temp", action="store_true", help="use a throwaway node directory")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of recording (20)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kachery-spikes-") as tmp:
        if args.temp:
            os.environ["KACHERY_TASKS_DIR"] = str(Path(tmp) / "node")
        times = []
        for run in (1, 2):
            t0 = time.perf_counter()
            out = run_pipeline(duration_s=args.duration)
            times.append(time.perf_counter() - t0)
            computed = [name for name, cached, _ in out["steps"] if not cached]
            print(f"run {run}: {times[-1]:.3f} s; {len(out['spikes'])} spikes in "
                  f"{len(set(out['labels'].tolist()))} clusters, "
                  f"{100 * out['accuracy']:.1f}% of true spikes found and labelled")
            for name, cached, dt in out["steps"]:
                print(f"    {name:<22} {'cached' if cached else 'computed':<9} {dt * 1000:8.1f} ms")
            if run == 1 and not computed:
                print("    (every step was already cached on this node)")
        print(f"the second run took {100 * times[1] / times[0]:.1f}% of the first: "
              "every step was loaded from the cache")


if __name__ == "__main__":
    main()
