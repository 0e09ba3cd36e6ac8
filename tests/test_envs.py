"""Software environments: every rule runs in a pinned conda env that provides what its script imports.

Rules, their `conda:` files and `script:`s come from Snakemake itself (its API, in a subprocess,
so the workflow's import-time side effects stay out of this process). Imports are found
statically: the rule script, then every jump_n2v module it reaches, transitively.
"""

import ast
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from conftest import TINY_CONFIG
from workflow_copy import REPO

PACKAGE_ROOT = REPO / "src"
PACKAGE = "jump_n2v"

# Import name -> the conda-forge package names that provide it (any one will do).
PROVIDERS = {
    "yaml": {"pyyaml"},
    "skimage": {"scikit-image"},
    "sklearn": {"scikit-learn"},
    "PIL": {"pillow"},
    "cv2": {"opencv", "py-opencv"},
    "torch": {"pytorch", "pytorch-gpu"},
    "matplotlib": {"matplotlib", "matplotlib-base"},
    "dask": {"dask", "dask-core"},
    "zarr": {"zarr"},
    "ome_zarr": {"ome-zarr"},
    "bioimageio": {"bioimageio.spec", "bioimageio.core"},
}
# Imported by rule scripts but never from the env: Snakemake injects the `snakemake` object.
NOT_FROM_ENV = {PACKAGE, "snakemake"}

# A dependency is pinned when it names one exact version: name=1.2.3, name==1.2.3 or
# name=1.2.3=build (conda match specs; '=1.2.3' matches 1.2.3 and its 1.2.3.x rebuilds only).
# The build part may carry a wildcard (pytorch=2.13.0=cuda*), the version may not.
CONDA_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==?(?P<version>\d+(\.\d+)+)(=(?P<build>[A-Za-z0-9_.*]+))?$")
PIP_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.\[\]-]+)==(?P<version>\d+(\.\d+)+)$")

DUMP_RULES = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

snakefile, configfile = sys.argv[1:3]
rules = []
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[Path(configfile)]),
        snakefile=Path(snakefile),
    )
    for rule in workflow._workflow.rules:
        basedir = Path(rule.basedir.get_path_or_uri(secret_free=True))
        rules.append({
            "name": rule.name,
            "conda": str((basedir / rule.conda_env).resolve()) if isinstance(rule.conda_env, str) else None,
            "script": str((basedir / rule.script).resolve()) if rule.script else None,
            "has_action": not rule.norun,
        })
print("RULES-JSON " + json.dumps(rules))
"""


@cache
def workflow_rules():
    snakefile = REPO / "Snakefile" if (REPO / "Snakefile").exists() else REPO / "workflow" / "Snakefile"
    result = subprocess.run(
        [sys.executable, "-c", DUMP_RULES, str(snakefile), str(TINY_CONFIG)],
        cwd=REPO, capture_output=True, text=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RULES-JSON ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(lines[-1][len("RULES-JSON "):])


def rules_with_action():
    return [rule for rule in workflow_rules() if rule["has_action"]]


def load_env(path):
    with open(path) as handle:
        env = yaml.safe_load(handle)
    if not isinstance(env, dict) or not isinstance(env.get("dependencies"), list):
        raise AssertionError(f"{path}: not a conda environment file (no 'dependencies' list)")
    return env


def env_packages(env):
    """(conda packages, pip packages) of an env file as {name: spec}."""
    conda, pip = {}, {}
    for dependency in env["dependencies"]:
        if isinstance(dependency, dict):
            for spec in dependency.get("pip", []):
                name = re.split(r"[=<>!~ ;\[]", spec, maxsplit=1)[0]
                pip[name.lower()] = spec
        else:
            name = re.split(r"[=<>!~ ]", str(dependency), maxsplit=1)[0]
            conda[name.lower()] = str(dependency)
    return conda, pip


# --- static import analysis -----------------------------------------------------------------


def _guarded_by_import_error(node, parents):
    """True when the import sits in a `try:` whose handler catches ImportError (an optional import)."""
    child = node
    parent = parents.get(child)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                names = []
                if handler.type is None:
                    return True
                for item in handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]:
                    if isinstance(item, ast.Name):
                        names.append(item.id)
                if {"ImportError", "ModuleNotFoundError", "Exception"} & set(names):
                    return True
        child, parent = parent, parents.get(parent)
    return False


def module_file(module):
    """The source file of a jump_n2v module name, or None if there is none."""
    path = PACKAGE_ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def imported_modules(path, module=None):
    """Absolute module names imported by a file (relative imports resolved against `module`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _guarded_by_import_error(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = (module or "").split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module
        found.add(source)
        # `from pkg import name` may import the submodule pkg.name.
        if source.split(".")[0] == PACKAGE:
            found.update(f"{source}.{alias.name}" for alias in node.names if module_file(f"{source}.{alias.name}"))
    return found


def third_party_imports(script):
    """Top-level names of the non-stdlib modules a rule script needs, through jump_n2v transitively."""
    needed = {}
    seen_modules = set()
    queue = [(Path(script), None)]
    while queue:
        path, module = queue.pop()
        for name in imported_modules(path, module):
            top = name.split(".")[0]
            if top == PACKAGE:
                parts = name.split(".")
                # Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c.
                for depth in range(1, len(parts) + 1):
                    sub = ".".join(parts[:depth])
                    source = module_file(sub)
                    if source is not None and sub not in seen_modules:
                        seen_modules.add(sub)
                        queue.append((source, sub))
            elif top not in sys.stdlib_module_names and top not in NOT_FROM_ENV and top != "__future__":
                needed.setdefault(top, str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path))
    return needed


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.workflow  # the rules come from Snakemake (workflow_rules)
def test_every_rule_that_does_work_names_an_existing_env_file_under_envs():
    rules = rules_with_action()
    assert rules, "the workflow has no rules"
    for rule in rules:
        assert rule["conda"], f"rule {rule['name']} has no conda: directive"
        conda = Path(rule["conda"])
        assert conda.is_file(), f"rule {rule['name']}: conda env {conda} does not exist"
        assert conda.parent == REPO / "envs", f"rule {rule['name']}: env {conda} is not under envs/"


@pytest.mark.workflow  # the rules come from Snakemake (workflow_rules)
def test_every_env_file_is_used_by_a_rule():
    used = {Path(rule["conda"]) for rule in rules_with_action() if rule["conda"]}
    for env in sorted((REPO / "envs").glob("*.yaml")):
        assert env in used, f"{env.relative_to(REPO)} is not used by any rule"


@pytest.mark.parametrize("env_path", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_env_dependency_is_pinned_to_one_version(env_path):
    env = load_env(env_path)
    assert "conda-forge" in env.get("channels", []), f"{env_path.name}: conda-forge is not a channel"
    for dependency in env["dependencies"]:
        if isinstance(dependency, dict):
            for spec in dependency.get("pip", []):
                assert PIP_PIN.match(spec), f"{env_path.name}: pip dependency {spec!r} is not pinned (name==X.Y.Z)"
            continue
        spec = str(dependency).replace(" ", "")
        assert CONDA_PIN.match(spec), f"{env_path.name}: dependency {dependency!r} is not pinned to one version"


def test_n2v_env_installs_a_cuda_build_of_pytorch():
    conda, pip = env_packages(load_env(REPO / "envs" / "n2v.yaml"))
    assert "torch" not in pip, "torch from pip gets the CPU or a default-CUDA wheel; use conda-forge's CUDA build"
    assert "pytorch" in conda, "envs/n2v.yaml has no pytorch"
    build = CONDA_PIN.match(conda["pytorch"].replace(" ", "")).group("build") or ""
    assert "cuda" in build, f"pytorch is not pinned to a CUDA build (build string {build!r}; want e.g. =cuda*)"
    assert "cpuonly" not in conda
    # The CUDA runtime the build links against is pinned too, so the env is the same on every cluster.
    assert "cuda-version" in conda, "pin cuda-version so the CUDA build resolves to one CUDA release"


@pytest.mark.workflow  # the rules come from Snakemake (workflow_rules)
def test_rule_scripts_exist():
    for rule in rules_with_action():
        if rule["script"]:
            assert Path(rule["script"]).is_file(), f"rule {rule['name']}: script {rule['script']} does not exist"


@pytest.mark.workflow  # the rules come from Snakemake (workflow_rules)
def test_every_module_a_rule_script_imports_is_in_its_env():
    problems = []
    for rule in rules_with_action():
        if not rule["script"] or not rule["conda"] or not Path(rule["script"]).is_file():
            continue
        conda, pip = env_packages(load_env(rule["conda"]))
        provided = set(conda) | set(pip)
        for module, where in sorted(third_party_imports(rule["script"]).items()):
            candidates = PROVIDERS.get(module, {module.lower()})
            if not candidates & provided:
                problems.append(f"rule {rule['name']}: {module} (imported in {where}) is not in "
                                f"{Path(rule['conda']).name}; add one of {sorted(candidates)}")
    assert not problems, "\n".join(problems)


def test_import_analysis_follows_the_package_transitively(tmp_path):
    # The analysis itself: a script importing jump_n2v.n2v must pick up torch through the package.
    script = tmp_path / "rule.py"
    script.write_text("import os\nfrom jump_n2v.n2v import model\n")
    needed = third_party_imports(script)
    assert "torch" in needed and "os" not in needed and PACKAGE not in needed
    optional = tmp_path / "optional.py"
    optional.write_text("try:\n    import cupy\nexcept ImportError:\n    cupy = None\nimport numpy\n")
    assert set(third_party_imports(optional)) == {"numpy"}
