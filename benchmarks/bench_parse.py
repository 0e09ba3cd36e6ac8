"""What parsing the workflow costs: CPU time (user + system, steadier than wall time on a shared
machine) of `snakemake --list-rules` (a parse, no DAG) and of `snakemake -n` (parse and plan) with
the demo config, medians over repeats, and which heavy modules a parse imports.

    .venv/bin/python benchmarks/bench_parse.py [--repeats 5]

Run from the repository root; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ["pandas", "numpy", "tifffile", "zarr", "numcodecs", "s3fs", "scipy", "skimage", "torch", "matplotlib"]

# Parse the Snakefile in-process through Snakemake's API and report the heavy modules then loaded.
PARSE_MODULES = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=Path(sys.argv[1]),
                            config_settings=ConfigSettings(configfiles=[Path(sys.argv[2])]))
    assert workflow._workflow.rules  # the Snakefile is parsed on first use
print("MODULES " + json.dumps({name: name in sys.modules for name in sys.argv[3:]}))
"""


def median_cpu_seconds(command: list[str], cwd: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(command, cwd=cwd, check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    with tempfile.TemporaryDirectory() as workdir:
        (Path(workdir) / "config").mkdir()
        (Path(workdir) / "config" / "plates.tsv").write_bytes((REPO / "config" / "plates.tsv").read_bytes())
        config = ["--configfile", str(REPO / "config" / "config.yaml"), "--directory", workdir]
        list_rules = median_cpu_seconds([*snakemake, *config, "--list-rules"], REPO, args.repeats)
        dry_run = median_cpu_seconds([*snakemake, *config, "--dry-run"], REPO, args.repeats)
        result = subprocess.run([sys.executable, "-c", PARSE_MODULES, str(REPO / "Snakefile"), str(REPO / "config" / "config.yaml"),
                                 *HEAVY], cwd=REPO, check=True, capture_output=True, text=True)
    modules = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("MODULES "))[8:])
    print(json.dumps({"list_rules_cpu_s": list_rules, "dry_run_cpu_s": dry_run,
                      "imported_by_parse": [name for name, loaded in modules.items() if loaded]}))


if __name__ == "__main__":
    main()
