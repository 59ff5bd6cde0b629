"""How fast the command line answers when there is no work to do, against importing torch, in the same run.

Four commands, each a fresh `python -m transferlab` process (what a user's shell starts), timed in turn
every round so a noisy machine slows them alike:
  import torch       `python -c "import torch"`: the baseline, what any command that trains pays first
  --help             `transferlab --help`
  --version          `transferlab --version`
  bad spec           `transferlab study SPEC` on a spec with a misspelt key (one line on stderr, exit 2)
Prints the median seconds of each and its ratio to `import torch`; the last line is the worse of the
--help and bad-spec ratios (issue 21's target: ≤ 0.3x for both).

    python benchmarks/cli_startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], expect: int) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != expect:
        sys.exit(f"{' '.join(command)} exited {result.returncode}, expected {expect}: {result.stderr.strip()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "typo.yaml"
        spec.write_text("name: typo\ndatsets: [digits]\nbackbones: [tf_efficientnet_lite0]\nparadigms: [linear]\n")
        cli = [sys.executable, "-m", "transferlab"]
        commands = {"import torch": ([sys.executable, "-c", "import torch"], 0),
                    "--help": ([*cli, "--help"], 0), "--version": ([*cli, "--version"], 0),
                    "bad spec": ([*cli, "study", str(spec)], 2)}
        for command, expect in commands.values():  # warm the file cache: every arm reads its files once first
            timed(command, expect)
        seconds = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, (command, expect) in commands.items():
                seconds[name].append(timed(command, expect))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    base = median["import torch"]
    print(f"{args.rounds} rounds, each command a fresh process, timed in turn")
    for name, value in median.items():
        print(f"{name:<13} {value:6.3f} s  {value / base:5.2f}x import torch")
    worst = max(median["--help"], median["bad spec"]) / base
    print(f"ratio: {worst:.2f}x (the slower of --help and a bad-spec error, vs import torch)")


if __name__ == "__main__":
    main()
