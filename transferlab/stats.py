"""How sure a leaderboard is: 95 % intervals over seeds, and a paired comparison of two rows.

Intervals over seeds use Student's t (scipy), since a study has a handful of seeds. The paired comparison
resamples the *test images* (a paired bootstrap: both rows are scored on the same resampled images, so the
variation of the images themselves cancels), and adds a paired t-test over the seeds both rows share.
Both are hand-assembled from numpy / scipy because scikit-learn has no paired model comparison and
scipy.stats.bootstrap does not take the seed-averaged, ratio-of-sums metrics (micro-F1) used here.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from .evaluate import metric_from_outcomes

BOOTSTRAP_RESAMPLES = 2000
CHUNK = 200  # resamples scored at a time (memory: CHUNK × images × seeds)


def interval95(values: list[float] | np.ndarray) -> float:
    """Half-width of the 95 % t-interval of the mean of `values` (one per seed); NaN with fewer than two."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan")
    return float(scipy_stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


# ------------------------------------------------------------------ per-image outcomes, stored in the records

def encode_outcomes(outcomes: dict[str, np.ndarray]) -> dict[str, str]:
    """Per-image outcome arrays → base64 strings for the JSON record (uint8 / uint16 little-endian)."""
    return {name: f"{array.dtype.str}:" + base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
            for name, array in outcomes.items()}


def decode_outcomes(encoded: dict[str, str]) -> dict[str, np.ndarray]:
    out = {}
    for name, text in encoded.items():
        dtype, data = text.split(":", 1)
        out[name] = np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype))
    return out


# ------------------------------------------------------------------------------------ the paired comparison

def paired_comparison(a: list[dict[str, Any]], b: list[dict[str, Any]], metric: str, *,
                      seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any] | None:
    """Is row `a` (its runs, one per seed) better than row `b` on `metric`, and how sure is that?

    Needs both rows scored on the same test images (the records' test split indices). Returns the observed
    difference (mean over seeds of a minus b), its 95 % paired-bootstrap interval, the fraction of resamples
    in which a scores higher, and, with two or more shared seeds, a paired t-test over those seeds.
    None when the rows were not scored on the same images or their records carry no per-image outcomes.
    """
    outcomes_a, outcomes_b = _stacked_outcomes(a), _stacked_outcomes(b)
    if outcomes_a is None or outcomes_b is None or not _same_test_images(a + b):
        return None
    rng = np.random.default_rng(seed)
    n_images = next(iter(outcomes_a.values())).shape[1]
    diffs = []
    for start in range(0, resamples, CHUNK):
        picks = rng.integers(0, n_images, size=(min(CHUNK, resamples - start), n_images))
        diffs.append(_resampled(outcomes_a, picks) - _resampled(outcomes_b, picks))
    diffs = np.concatenate(diffs)
    observed = float(metric_from_outcomes(outcomes_a).mean() - metric_from_outcomes(outcomes_b).mean())
    result: dict[str, Any] = {
        "metric": metric, "difference": observed,
        "ci95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))],
        "p_better": float((diffs > 0).mean() + 0.5 * (diffs == 0).mean()), "n_images": int(n_images),
        "resamples": int(resamples), "method": "paired bootstrap over test images",
    }
    by_seed_a = {r["seed"]: r["metrics"][metric] for r in a}
    by_seed_b = {r["seed"]: r["metrics"][metric] for r in b}
    shared = sorted(set(by_seed_a) & set(by_seed_b))
    if len(shared) >= 2:
        x, y = np.array([by_seed_a[s] for s in shared]), np.array([by_seed_b[s] for s in shared])
        # Identical per-seed differences have no spread: t is undefined, and the bootstrap says it all.
        p = float(scipy_stats.ttest_rel(x, y).pvalue) if np.ptp(x - y) > 0 else None
        result["seeds_t_test"] = {"seeds": shared, "p_value": p}
    return result


def _stacked_outcomes(records: list[dict[str, Any]]) -> dict[str, np.ndarray] | None:
    """{name: seeds × images} of the records' per-image test outcomes, or None if any record lacks them."""
    decoded = [decode_outcomes(r["test_outcomes"]) for r in records if r.get("test_outcomes")]
    if len(decoded) != len(records) or not decoded:
        return None
    if len({len(next(iter(d.values()))) for d in decoded}) != 1:
        return None
    return {name: np.stack([d[name] for d in decoded]) for name in decoded[0]}


def _resampled(outcomes: dict[str, np.ndarray], picks: np.ndarray) -> np.ndarray:
    """The seed-averaged metric of each resample (rows of `picks`: image indices drawn with replacement)."""
    taken = {name: values[:, picks] for name, values in outcomes.items()}  # seeds × resamples × images
    return metric_from_outcomes(taken, axis=-1).mean(axis=0)


def _same_test_images(records: list[dict[str, Any]]) -> bool:
    tests = [tuple((r.get("split_indices") or {}).get("test", {}).get("indices") or ()) for r in records]
    return bool(tests[0]) and all(t == tests[0] for t in tests)
