"""`transferlab serve` under load: throughput and p50 / p99 latency over HTTP, against the same model called
directly (no HTTP, no multipart, no decode of an upload) in the same run.

Builds a real run (Fashion-MNIST, 3 classes, 40 training PNGs each; tf_efficientnet_lite0 at 64 px, `linear`),
serves it in a process of its own on a loopback port, and sends --requests uploads of
the run's real test PNGs from --clients concurrent clients. The baseline decodes the same files and calls the
model one image at a time in this process. Prints both, then the served / direct throughput ratio last.

    python benchmarks/serve.py [--requests 400] [--clients 8]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

import transferlab
from transferlab.config import DataSpec
from transferlab.data import open_pools
from transferlab.data.export import export_image_folder
from transferlab.data.images import open_image
from transferlab.deploy import load_run


def build_run(root: Path) -> tuple[Path, list[Path]]:
    """A real run to serve and real test PNGs to send: (record path, test files)."""
    pools = open_pools(DataSpec(source="fashion-mnist"))
    classes = [0, 1, 7]
    pick = lambda labels, n: np.concatenate([np.flatnonzero(labels == c)[:n] for c in classes])  # noqa: E731
    train = export_image_folder(pools.train, pick(pools.train.labels, 40), root / "train")
    test = export_image_folder(pools.test, pick(pools.test.labels, 20), root / "test")
    records = transferlab.study({"name": "serve-bench", "datasets": [{"source": str(train), "test": str(test)}],
                                 "backbones": [{"name": "tf_efficientnet_lite0", "image_size": 64}],
                                 "paradigms": ["linear"], "references": False}, root / "out")
    return root / "out" / "runs" / f"{records[0]['run_id']}.json", sorted(test.glob("*/*.png"))


def direct(record: Path, files: list[Path], n: int) -> float:
    """Images per second: decode + view + model, one image at a time, in this process."""
    model = load_run(record)
    started = time.perf_counter()
    for i in range(n):
        model.probabilities(model.view(open_image(files[i % len(files)]))[None])
    return n / (time.perf_counter() - started)


def served(record: Path, files: list[Path], n: int, clients: int) -> tuple[float, np.ndarray]:
    """(images per second, latencies in s) over HTTP, `clients` at a time, the service in its own process."""
    code = f"from transferlab.deploy.serve import serve; serve({str(record)!r}, port=0)"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        base = re.search(r"at (http://\S+)/ ", process.stdout.readline())[1]
        payloads = [(f.name, f.read_bytes()) for f in files]
        with httpx.Client(base_url=base, timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
            client.post("/predict", files={"file": payloads[0]}).raise_for_status()  # warm

            def one(i: int) -> float:
                started = time.perf_counter()
                client.post("/predict", files={"file": payloads[i % len(payloads)]}).raise_for_status()
                return time.perf_counter() - started

            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                latencies = np.array(list(pool.map(one, range(n))))
            return n / (time.perf_counter() - started), latencies
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        record, files = build_run(Path(tmp))
        baseline = direct(record, files, args.requests)
        throughput, latencies = served(record, files, args.requests, args.clients)
    print(f"direct (decode + model, no HTTP):  {baseline:7.1f} img/s")
    print(f"served ({args.clients} clients, {args.requests} requests): {throughput:7.1f} img/s, "
          f"p50 {np.percentile(latencies, 50) * 1000:.0f} ms, p99 {np.percentile(latencies, 99) * 1000:.0f} ms")
    print(f"served / direct throughput: {throughput / baseline:.2f}×")


if __name__ == "__main__":
    main()
