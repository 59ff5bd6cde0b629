"""Look at a dataset before training on it: `transferlab inspect DATA` → inspect.json (this module, the analysis)
+ inspect.html (`report/inspect.py`, the page).

One pass per split decodes every image (or a seeded sample of `limit`) exactly as training would
(`source.load`), and records its stored size and mode, a 256-bit perceptual hash and an exact pixel digest;
unreadable files are listed, never fatal. Hashes are then compared across splits (train–val, train–test,
val–test) to find test images that leaked into training as copies, re-encodings or resizes.

Why 256-bit hashes (`phash(hash_size=16)`) and not imagehash's default 64: on Fashion-MNIST (28 px, centred
garments), 10,000 train × 10,000 test images gave 6,796 pairs of *different* images within 4 of 64 bits
(even the 37 pairs at distance 0 differed by 6–22 grey levels per pixel on average). With 256 bits no
unrelated pair came within 18 bits, while copies resized and re-encoded as JPEG landed at a median of 4
(at most 14) and plain JPEG q75 re-encodings of 28-px images at a median of 10 (90 % within 16). The whole
of Fashion-MNIST (70,000 images, ~70 s on 2 cores) gives 34 cross-split pairs within 16 bits: by eye, all
the same photograph of the same garment, all with the same label.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from .config import DataSpec
from .core.errors import TransferlabError
from .core.paths import atomic_write
from .core.progress import progress_bar
from .data import ImageSource, Split, UnreadableImage, make_splits, open_pools
from .data.augment import check_augment

HASH_SIZE = 16  # phash side: 16 × 16 = 256 bits
HASH_BITS = HASH_SIZE * HASH_SIZE
SPLIT_PAIRS = (("train", "test"), ("train", "val"), ("val", "test"))  # where a duplicate inflates test scores
MAX_PAIRS = 5000  # kept in inspect.json (best first); the total is always counted
_BLOCK = 1 << 21  # hash words compared per numpy step (~16 MB of XORs)


@dataclass
class SplitScan:
    """What one pass over a split's images found; `indices` are the readable images analysed, in order."""

    name: str
    split: Split
    indices: list[int] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)  # HASH_BITS / 64 uint64 words each
    digests: list[str] = field(default_factory=list)  # exact pixel content
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) as decoded
    modes: Counter = field(default_factory=Counter)  # PIL mode as stored
    unreadable: list[dict[str, str]] = field(default_factory=list)

    @property
    def source(self) -> ImageSource:
        return self.split.source


@dataclass(frozen=True)
class Pair:
    """Two images in different splits whose perceptual hashes differ in at most the threshold's bits."""

    a: SplitScan
    i: int  # position in a.indices
    b: SplitScan
    j: int
    distance: int

    @property
    def exact(self) -> bool:
        return self.a.digests[self.i] == self.b.digests[self.j]


@dataclass
class Inspection:
    """The analysis: the JSON summary, and the scans and pairs the page draws its images from."""

    summary: dict[str, Any]
    scans: dict[str, SplitScan]
    pairs: list[Pair]


def inspect_data(spec: DataSpec, out: str | Path, *, seed: int = 0, limit: int | None = None,
                 augment: tuple[str, ...] = ("light",), threshold: int) -> Inspection:
    """Analyse `spec`'s splits (as `make_splits` cuts them for `seed`); write OUT/inspect.json; return the
    analysis (`report.inspect.write_page` draws OUT/inspect.html from it). `threshold`: the most bits of
    HASH_BITS two images may differ in to count as near-duplicates (default `api.NEAR_DUPLICATE_BITS`)."""
    _check_options(limit, threshold, augment)
    splits = make_splits(open_pools(spec), spec, seed)
    scans = {name: scan_split(name, split, limit, seed) for name, split in splits.items()}
    pairs, by_splits = cross_split_duplicates(scans, threshold)
    summary = summarise(spec, scans, pairs, by_splits, seed=seed, limit=limit, threshold=threshold)
    out = Path(out)
    summary["files"] = {"json": str(out / "inspect.json"), "html": str(out / "inspect.html")}
    atomic_write(out / "inspect.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return Inspection(summary, scans, pairs)


def _check_options(limit: int | None, threshold: int, augment: tuple[str, ...]) -> None:
    # Before the long loops: a typo should cost a second, not a scan of the whole dataset.
    if limit is not None and limit < 1:
        raise TransferlabError(f"limit={limit}: give a positive number of images per split, or no limit")
    if not 0 <= threshold <= HASH_BITS:
        raise TransferlabError(f"threshold={threshold}: give a Hamming distance between 0 and {HASH_BITS} bits "
                               "(0 = identical hashes only)")
    for name in augment:
        try:
            check_augment(name)
        except TransferlabError as exc:
            raise TransferlabError(f"augment '{name}': {exc}") from None


# ---------------------------------------------------------------- one pass over a split


def scan_split(name: str, split: Split, limit: int | None, seed: int) -> SplitScan:
    """Decode each image of `split` (a seeded sample of `limit`, if given): size, mode, hashes; bad files listed."""
    indices = split.indices
    if limit is not None and limit < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(indices, size=limit, replace=False))
    scan = SplitScan(name, split)
    source = split.source
    with progress_bar(f"inspect {name}", len(indices), "img") as bar:
        for index in map(int, indices):
            try:
                image = source.load(index)
            except UnreadableImage as exc:
                scan.unreadable.append({"split": name, "file": source.describe(index),
                                        "reason": exc.reason})
            else:
                scan.indices.append(index)
                bits = imagehash.phash(image, hash_size=HASH_SIZE).hash.ravel()
                scan.hashes.append(np.packbits(bits).view(">u8").astype(np.uint64))
                scan.digests.append(_digest(image))
                scan.sizes.append(image.size)
                scan.modes[_stored_mode(source, index)] += 1
            bar()
    return scan


def _digest(image: Image.Image) -> str:
    """Exact pixel content (size included): equal digests = the same picture, whatever the file format."""
    digest = hashlib.blake2b(b"%dx%d|" % image.size, digest_size=16)
    digest.update(image.tobytes())
    return digest.hexdigest()


def _stored_mode(source: ImageSource, index: int) -> str:
    """The image's mode before the RGB conversion: from the file header (not decoded again) or the array."""
    paths = getattr(source, "paths", None)
    if paths is not None:
        try:
            with Image.open(paths[index]) as header:
                return header.mode
        except (OSError, ValueError):
            return "?"
    images = getattr(source, "images", None)
    if images is not None:
        return "L" if images.ndim == 3 else "RGB"
    return "RGB"


# ---------------------------------------------------------------- duplicates across splits


def cross_split_duplicates(scans: dict[str, SplitScan], threshold: int) -> tuple[list[Pair], dict[str, Any]]:
    """Pairs within `threshold` bits across splits (closest first, at most MAX_PAIRS) and counts per split pair."""
    pairs: list[Pair] = []
    by_splits: dict[str, Any] = {}
    for first, second in SPLIT_PAIRS:
        a, b = scans.get(first), scans.get(second)
        if a is None or b is None:
            continue
        found, counts = _near_pairs(a, b, threshold)
        pairs += found
        by_splits[f"{first}-{second}"] = counts
    pairs.sort(key=lambda p: (p.distance, p.a.name, p.b.name, p.i, p.j))
    return pairs[:MAX_PAIRS], by_splits


def _near_pairs(a: SplitScan, b: SplitScan, threshold: int) -> tuple[list[Pair], dict[str, Any]]:
    """Brute force in blocks of rows: XOR + popcount is ~1e9 word comparisons per second, so even
    60,000 × 10,000 images take seconds, and it is exact (no index to miss a pair)."""
    counts: dict[str, Any] = {"pairs": 0, "exact_pairs": 0, "images": {a.name: 0, b.name: 0}}
    if not a.hashes or not b.hashes:
        return [], counts
    hashes_a, hashes_b = np.stack(a.hashes), np.stack(b.hashes)
    rows = max(1, _BLOCK // hashes_b.size)
    near_a, near_b = np.zeros(len(hashes_a), bool), np.zeros(len(hashes_b), bool)
    found: list[tuple[int, int, int]] = []
    with progress_bar(f"duplicates {a.name}–{b.name}", len(hashes_a), "img") as bar:
        for start in range(0, len(hashes_a), rows):
            block = hashes_a[start:start + rows]
            distance = np.bitwise_count(block[:, None, :] ^ hashes_b[None, :, :]).sum(axis=-1, dtype=np.int32)
            close = distance <= threshold
            i, j = np.nonzero(close)
            counts["pairs"] += len(i)
            # Equal pixels give equal hashes, so only distance-0 pairs need their digests compared.
            counts["exact_pairs"] += sum(a.digests[start + x] == b.digests[y]
                                         for x, y in zip(i.tolist(), j.tolist(), strict=True) if distance[x, y] == 0)
            near_a[start:start + len(block)] |= close.any(axis=1)
            near_b |= close.any(axis=0)
            found += zip((i + start).tolist(), j.tolist(), distance[i, j].tolist(), strict=True)
            if len(found) > 2 * MAX_PAIRS:  # a degenerate set (say, blank images) must not fill memory
                found = sorted(found, key=lambda f: f[2])[:MAX_PAIRS]
            bar(len(block))
    counts["images"] = {a.name: int(near_a.sum()), b.name: int(near_b.sum())}
    return [Pair(a, i, b, j, d) for i, j, d in found], counts


# ---------------------------------------------------------------- the summary (inspect.json)


def summarise(spec: DataSpec, scans: dict[str, SplitScan], pairs: list[Pair], by_splits: dict[str, Any], *,
              seed: int, limit: int | None, threshold: int) -> dict[str, Any]:
    train = scans["train"].source
    splits = {name: _split_summary(scan) for name, scan in scans.items()}
    summary = {
        "dataset": spec.label,
        "data": {"source": spec.source, "val": spec.val, "test": spec.test},
        "classes": list(train.classes),
        "multi_label": bool(train.multi_label),
        "settings": {"seed": seed, "split_seed": spec.split_seed, "limit": limit,
                     "hash": f"phash {HASH_SIZE}×{HASH_SIZE} ({HASH_BITS} bits)", "threshold": threshold},
        "splits": splits,
        "unreadable": [u for scan in scans.values() for u in scan.unreadable],
        "duplicates": {"threshold": threshold, "by_splits": by_splits, "pairs": [pair_summary(p) for p in pairs],
                       "listed": len(pairs), "total": sum(s["pairs"] for s in by_splits.values())},
    }
    if train.multi_label:
        summary["label_sets"] = label_sets(train)
    summary["reading"] = list(dict.fromkeys(n for scan in scans.values() for n in scan.source.notes
                                            if "labels split at" in n))
    summary["findings"] = summary["reading"] + findings(summary)
    return summary


def label_sets(source, shown: int = 12) -> list[dict[str, Any]]:
    """The most frequent label sets of a multi-label source, as read (what a wrong separator would show at
    once: one 'set' per combination of tags, each a single made-up class)."""
    matrix = source.label_matrix(np.arange(len(source)))
    sets = Counter(tuple(c for c, on in zip(source.classes, row, strict=True) if on) for row in matrix)
    return [{"labels": list(labels), "images": n} for labels, n in sets.most_common(shown)]


def _split_summary(scan: SplitScan) -> dict[str, Any]:
    source, indices = scan.source, scan.split.indices
    counts = source.label_matrix(indices).sum(axis=0)  # every image of the split, analysed or not
    summary = {
        "source": source.name,
        "images": len(indices),
        "analysed": len(scan.indices),
        "unreadable": len(scan.unreadable),
        "per_class": {c: int(n) for c, n in zip(source.classes, counts, strict=True)},
        "sizes": dict(Counter(f"{w}x{h}" for w, h in scan.sizes).most_common()),
        "modes": dict(scan.modes.most_common()),
    }
    if source.multi_label:
        summary["without_labels"] = int((source.label_matrix(indices).sum(axis=1) == 0).sum())
    if scan.sizes:
        wh = np.asarray(scan.sizes)
        summary["width"], summary["height"] = _spread(wh[:, 0]), _spread(wh[:, 1])
    return summary


def _spread(values: np.ndarray) -> dict[str, float]:
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def pair_summary(pair: Pair) -> dict[str, Any]:
    label_a, label_b = _label(pair.a, pair.i), _label(pair.b, pair.j)
    return {"distance": pair.distance, "exact": pair.exact, "same_label": label_a == label_b,
            "a": {"split": pair.a.name, "file": pair.a.source.describe(pair.a.indices[pair.i]), "label": label_a},
            "b": {"split": pair.b.name, "file": pair.b.source.describe(pair.b.indices[pair.j]), "label": label_b}}


def _label(scan: SplitScan, position: int) -> str:
    row = scan.source.label_matrix(np.asarray([scan.indices[position]]))[0]
    return ", ".join(c for c, on in zip(scan.source.classes, row, strict=True) if on) or "(none)"


def findings(summary: dict[str, Any]) -> list[str]:
    """What deserves a look, one sentence each, most serious first (the page's opening list)."""
    notes = []
    for key, stats in summary["duplicates"]["by_splits"].items():
        first, second = key.split("-")
        if stats["pairs"]:
            analysed = summary["splits"][second]["analysed"]
            notes.append(f"{stats['images'][second]} of {analysed} analysed {second} images have a near-duplicate in "
                         f"{first} ({stats['pairs']} pairs, {stats['exact_pairs']} exact): they inflate "
                         f"{second} scores; remove them from one side")
    if summary["unreadable"]:
        notes.append(f"{len(summary['unreadable'])} unreadable files (listed below): training stops on them unless "
                     "run with --skip-bad")
    train = summary["splits"]["train"]["per_class"]
    for name, split in summary["splits"].items():
        missing = [c for c, n in split["per_class"].items() if n == 0]
        if missing:
            notes.append(f"{name}: no images of {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    present = [n for n in train.values() if n]
    if present and max(present) >= 3 * min(present):
        notes.append(f"train is imbalanced: the largest class has {max(present)} images, the smallest "
                     f"{min(present)}; consider class weights")
    modes = {m for split in summary["splits"].values() for m in split["modes"]}
    if len(modes) > 1:
        notes.append(f"images come in {len(modes)} modes ({', '.join(sorted(modes))}); all are converted to RGB")
    return notes
