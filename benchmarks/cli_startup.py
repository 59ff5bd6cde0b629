"""How fast the command line answers when there is no work to do, against importing torch, in the same run.

Six commands, each a fresh `python -m transferlab` process (what a user's shell starts), timed in turn
every round so a noisy machine slows them alike:
  import torch       `python -c "import torch"`: the baseline, what any command that trains pays first
  --help             `transferlab --help`
  --version          `transferlab --version`
  bad spec           `transferlab study SPEC` on a spec with a misspelt key (one line on stderr, exit 2)
  unknown paradigm   `transferlab study SPEC` naming paradigm `linaer`
  unknown backbone   `transferlab study SPEC` naming backbone `tf_efficientnet_lit0`
The names are checked against those the registries' last import left in the cache (core/names.py): the
warm-up round, in a fresh cache folder, is the process that imports them once.
Prints the median seconds of each and its ratio to `import torch`; the last line is the worst of the
--help, bad-spec and unknown-name ratios (issue 21's target: ≤ 0.3x for each).

    python benchmarks/cli_startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
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
        os.environ["TRANSFERLAB_CACHE"] = str(Path(tmp) / "cache")  # the children's: no names remembered yet
        good = "name: typo\ndatasets: [digits]\nbackbones: [tf_efficientnet_lite0]\nparadigms: [linear]\n"
        specs = {"bad spec": good.replace("datasets", "datsets"), "unknown paradigm": good.replace("linear", "linaer"),
                 "unknown backbone": good.replace("lite0", "lit0")}
        cli = [sys.executable, "-m", "transferlab"]
        commands = {"import torch": ([sys.executable, "-c", "import torch"], 0),
                    "--help": ([*cli, "--help"], 0), "--version": ([*cli, "--version"], 0)}
        for name, text in specs.items():
            path = Path(tmp) / f"{name.replace(' ', '_')}.yaml"
            path.write_text(text)
            commands[name] = ([*cli, "study", str(path)], 2)
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
    worst = max(median[name] for name in ("--help", *specs)) / base
    print(f"ratio: {worst:.2f}x (the slowest of --help, a bad-spec error and an unknown name, vs import torch)")


if __name__ == "__main__":
    main()
