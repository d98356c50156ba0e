#!/bin/sh
# Build the offline wheelhouse of the images and the hash-pinned lock files from it.
#
#   compose/wheelhouse.sh [PIP]      PIP: a pip for Python 3.11 (default .venv/bin/pip)
#
# Writes (repository root as the working directory):
#   compose/wheelhouse/*.whl         every wheel the images install: hierfl's core dependencies
#                                    (fog, cloud), torch==$TORCH_VERSION and its dependencies
#                                    (edge), setuptools and wheel (to build hierfl itself);
#                                    binary wheels for CPython 3.11 on x86_64 glibc <= 2.36
#                                    (Debian bookworm, the images' base)
#   compose/requirements/server.lock what the fog and cloud images install, name==version with
#                                    the sha256 of the wheel here (pip --require-hashes)
#   compose/requirements/edge.lock   the same for the edge image (server set + torch)
#
# The Dockerfile installs from these locks: with --build-arg WHEELHOUSE=1 from
# compose/wheelhouse (no index needed: air-gapped plants), otherwise from the package index.
# Run it again after changing the dependencies in pyproject.toml and commit the locks.
set -eu

PIP=${1:-.venv/bin/pip}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
out=compose/wheelhouse
req=compose/requirements
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out" "$req"

# hierfl's core dependencies, read from pyproject.toml (the single source).
python3 - >"$tmp/server.in" <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
print("setuptools>=68")
print("wheel")
PY
{ cat "$tmp/server.in"; echo "torch==$TORCH_VERSION"; } >"$tmp/edge.in"

platforms="--platform manylinux_2_36_x86_64 --platform manylinux_2_35_x86_64
  --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform linux_x86_64"

lock() { # name: resolve NAME.in into its own folder, copy to the wheelhouse, write NAME.lock
    mkdir -p "$tmp/$1"
    # shellcheck disable=SC2086
    "$PIP" download -q --only-binary=:all: --python-version 3.11 --implementation cp \
        --abi cp311 --abi abi3 --abi none $platforms -d "$tmp/$1" -r "$tmp/$1.in"
    {
        echo "# compose/wheelhouse.sh from pyproject.toml: do not edit (pip install --require-hashes)"
        for whl in "$tmp/$1"/*.whl; do
            base=$(basename "$whl")
            name=$(printf '%s' "$base" | cut -d- -f1)
            version=$(printf '%s' "$base" | cut -d- -f2)
            hash=$("$PIP" hash -a sha256 "$whl" | sed -n 's/^--hash=//p')
            printf '%s==%s --hash=%s\n' "$name" "$version" "$hash"
        done
    } >"$req/$1.lock"
    cp -n "$tmp/$1"/*.whl "$out/"
    echo "wheelhouse: $req/$1.lock ($(grep -c '^[^#]' "$req/$1.lock") wheels)"
}

lock server
lock edge
du -sh "$out"
