"""Print the peak RSS of loading an engine and running it, measured in this fresh process.

    python -m engines.rss_probe ENGINE_DIR --batch N --iterations K

prints one JSON line: {"baseline_rss_bytes": ..., "peak_rss_bytes": ..., ...}. The baseline is
taken after importing numpy and the engine's backend (its runtime library), so peak - baseline is
what the engine itself costs.
A problem with the engine is printed as "error: ..." on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

from engines import load_runner
from engines.bench import random_input
from engines.errors import UserError
from engines.manifest import EngineManifest
from engines.registry import get_backend


def max_rss_bytes() -> int:
    """Peak RSS of this process's own address space.

    On Linux, VmHWM from /proc: ru_maxrss survives fork + exec, so a probe started by a process
    that had loaded torch would report torch's footprint, not the engine's. Elsewhere ru_maxrss
    (bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.rss_probe", description=__doc__.splitlines()[0])
    parser.add_argument("engine_dir")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args(argv)

    try:
        # Imported before the baseline is read: every deployment loads it, the engine is the rest.
        get_backend(EngineManifest.read(args.engine_dir).backend)
        baseline = max_rss_bytes()
        with load_runner(args.engine_dir) as runner:
            first_input = runner.inputs[0]
            feeds = {first_input.name: random_input(first_input, args.batch)}
            for _ in range(args.iterations):
                runner.infer(feeds)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": max_rss_bytes(),
        "batch_size": args.batch,
        "iterations": args.iterations,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
