"""Generate the Python package `herald` from the Protobuf contracts in `proto/`.

`python scripts/generate_protos.py` regenerates `herald/` (the one package every service and the
gateway import; committed, never edited by hand). `--check` regenerates into a temporary
directory and fails when the committed package differs, so a stale package fails `make test`.

Both modes first copy `google/api/{annotations,http}.proto` from the installed
googleapis-common-protos package into `build/proto-deps/`, where `buf lint` finds them too.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

import google.api
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEPS_ROOT = ROOT / "build" / "proto-deps"
PACKAGE = "herald"
GOOGLE_API_FILES = ("annotations.proto", "http.proto")


def copy_google_api_protos() -> None:
    source = Path(google.api.__path__[0])
    target = DEPS_ROOT / "google" / "api"
    target.mkdir(parents=True, exist_ok=True)
    for name in GOOGLE_API_FILES:
        shutil.copyfile(source / name, target / name)


def generate(out_dir: Path) -> None:
    protos = sorted(str(path.relative_to(PROTO_ROOT)) for path in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{DEPS_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *protos,
    ]
    # protoc finds the mypy-protobuf plugins on PATH, next to this interpreter.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package_root = out_dir / PACKAGE
    for directory in [package_root, *(p for p in package_root.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (package_root / "py.typed").touch()


def differences(left: Path, right: Path) -> list[str]:
    comparison = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [f"only in {left.name}: {name}" for name in comparison.left_only]
    found += [f"only in generated: {name}" for name in comparison.right_only]
    found += [f"differs: {name}" for name in comparison.diff_files]
    for name, sub in comparison.subdirs.items():
        found += [f"{name}/{item}" for item in differences(Path(sub.left), Path(sub.right))]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when herald/ is stale")
    options = parser.parse_args()
    copy_google_api_protos()
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = Path(scratch)
        generate(out_dir)
        committed = ROOT / PACKAGE
        if options.check:
            stale = differences(committed, out_dir / PACKAGE) if committed.exists() else ["missing"]
            if stale:
                print("herald/ is stale; run `make proto` and commit:", *stale, sep="\n  ", file=sys.stderr)
                return 1
            return 0
        shutil.rmtree(committed, ignore_errors=True)
        shutil.copytree(out_dir / PACKAGE, committed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
