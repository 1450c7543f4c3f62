"""Does the pinning make training independent of the CPU? Train one short recipe under several settings.

On one machine, ``stm-live train`` with ``benchmarks/recipes/numerics-check.train.yaml``
(the default recipe, shortened) is run as a fresh process under each setting below, and
the resulting weights compared (model id: a hash of graph, weights, prototypes and
thresholds) along with a hash of the simulated training frames' bytes:

* ``pinned``: the default (AVX2 kernels in torch, oneDNN, MKL and OpenBLAS; 2 threads);
* ``pinned-from-other-env``: the same, started from an environment that would choose
  otherwise (AVX-512 asked of torch and MKL, SkylakeX of OpenBLAS, OMP_NUM_THREADS=1)
  and on one core (``taskset -c 0``): what another machine or another user's shell
  would bring;
* ``native``: ``--numerics native --threads 0``, this CPU's own kernels and all its cores;
* ``native-avx2``: the same with every library capped to AVX2, as an AVX2-only CPU
  would run it;
* ``native-1-core``: native on one core (``taskset -c 0``), as a 1-core machine would.

Pinned runs should agree with each other bit for bit; native runs differ wherever the
CPU's instruction set or core count does. Prints a table and writes ``--json``.

Usage:
    python benchmarks/train_numerics.py [--out runs/numerics] [--only pinned native ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "benchmarks" / "recipes" / "numerics-check.train.yaml"
AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell"}
OTHER_ENV = {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AVX512", "OPENBLAS_CORETYPE": "SkylakeX",
             "OMP_NUM_THREADS": "1"}
ONE_CORE = ["taskset", "-c", "0"]

#: name -> (command prefix, environment changes, stm-live train flags)
SETTINGS: dict[str, tuple[list[str], dict[str, str], list[str]]] = {
    "pinned": ([], {}, []),
    "pinned-from-other-env": (ONE_CORE, OTHER_ENV, []),
    "native": ([], {}, ["--numerics", "native", "--threads", "0"]),
    "native-avx2": ([], AVX2_CAPS, ["--numerics", "native", "--threads", "0"]),
    "native-1-core": (ONE_CORE, {}, ["--numerics", "native", "--threads", "0"]),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "numerics"))
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed for the one-core settings")
    base_env = {k: v for k, v in os.environ.items()
                if k not in {*AVX2_CAPS, *OTHER_ENV, "OPENBLAS_NUM_THREADS", "ONEDNN_MAX_CPU_ISA"}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.only:
        prefix, env, flags = SETTINGS[name]
        run_dir = Path(args.out) / name
        if not (run_dir / "report.json").is_file():
            cmd = [*prefix, sys.executable, "-m", "stm_live", "train", "--config", str(RECIPE), "--run-dir",
                   str(run_dir), "--out-dir", str(run_dir / "installed"), "--no-progress", "--evaluate-frames", "2",
                   "--calibrate-frames", "2", *flags]
            t0 = time.time()
            with (Path(args.out) / f"{name}.log").open("w") as log:
                done = subprocess.run(cmd, env={**base_env, **env}, stdout=log, stderr=subprocess.STDOUT, check=False)
            print(f"{name}: exit {done.returncode} after {(time.time() - t0) / 60:.1f} min", flush=True)
            if done.returncode != 0:
                return done.returncode
        report = json.loads((run_dir / "report.json").read_text())
        numerics = report["training"]["numerics"]
        results.append({"setting": name, "id": report["models"]["si001-ash3"]["id"],
                        "data_content_hash": report["training"]["data_content_hash"],
                        "torch_cpu_capability": numerics["torch_cpu_capability"],
                        "threads": numerics["torch_threads"], "pinned": numerics["pinned"],
                        "openblas": sorted({str(b["architecture"]) for b in numerics["openblas"]}),
                        "loss": report["training"]["losses"].get("loss")})
    print("\n| setting | torch kernels | threads | OpenBLAS | pinned | training frames | model id | final loss |")
    print("| --- | --- | ---: | --- | --- | --- | --- | ---: |")
    for r in results:
        print(f"| {r['setting']} | {r['torch_cpu_capability']} | {r['threads']} | {', '.join(r['openblas'])} | "
              f"{r['pinned']} | {r['data_content_hash']} | {r['id']} | {r['loss']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": f"{platform.machine()} {platform.processor()}".strip(),
                                               "cpus": os.cpu_count(), "recipe": str(RECIPE.relative_to(REPO)),
                                               "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
