"""Check MONAI Label's environment (run with its interpreter), or list the package's missing core requirements.

``python scripts/check_monailabel_env.py``: exit 0 when monailabel, monai, torch, torchvision, pydicom and
dissect_monai import with the recipe's versions (monailabel 0.8.5, monai 1.4.0, pydicom < 3), else exit 1 naming
what is wrong.

``python scripts/check_monailabel_env.py --missing-requirements setup.cfg``: print, one a line, the
``install_requires`` entries of ``setup.cfg`` whose distribution is not installed at all. Installed distributions
with another version are kept (the MONAI Label recipe's pins win) and only reported on stderr.
"""

from __future__ import annotations

import argparse
import configparser
import importlib
import sys
from importlib import metadata

from packaging.requirements import Requirement

EXPECTED = {"monailabel": "0.8.5", "monai": "1.4.0"}


def missing_requirements(setup_cfg: str) -> list[str]:
    """Requirements of ``[options] install_requires`` in ``setup_cfg`` whose distribution is not installed."""
    parser = configparser.ConfigParser()
    if not parser.read(setup_cfg):
        raise FileNotFoundError(f"{setup_cfg}: not found")
    lines = parser.get("options", "install_requires", fallback="").splitlines()
    missing = []
    for line in (x.strip() for x in lines):
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            print(f"keeping {req.name} {version} from the MONAI Label recipe (package asks {req})", file=sys.stderr)
    return missing


def check_environment() -> list[str]:
    """Problems with the current interpreter's MONAI Label environment (empty when it is ready)."""
    problems = []
    for name, version in EXPECTED.items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
        if found != version:
            problems.append(f"{name} {found} installed, the recipe needs {version}")
    try:
        if int(metadata.version("pydicom").split(".")[0]) >= 3:
            problems.append("pydicom >= 3 installed, pydicom-seg in MONAI Label needs pydicom < 3")
    except metadata.PackageNotFoundError:
        problems.append("pydicom is not installed")
    for module in ("torch", "torchvision", "monailabel.tasks.infer.bundle", "dissect_monai.networks"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # report any import failure, whatever its type
            problems.append(f"import {module} failed: {exc!r}")
    return problems


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--missing-requirements", metavar="SETUP_CFG", help="list uninstalled core requirements")
    opts = args.parse_args()
    if opts.missing_requirements:
        print("\n".join(missing_requirements(opts.missing_requirements)))
        return 0
    problems = check_environment()
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print("MONAI Label environment OK: " + ", ".join(f"{k} {metadata.version(k)}" for k in EXPECTED))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
