#!/usr/bin/env bash
# Unpacks the include/ folder of NVIDIA's nvidia-cudnn-frontend wheel (the header-only C++
# cudnn-frontend) into DEST/include, without installing anything into Python.
#
#   scripts/fetch_cudnn_frontend.sh VERSION DEST
set -euo pipefail
version=${1:?usage: fetch_cudnn_frontend.sh VERSION DEST}
dest=${2:?usage: fetch_cudnn_frontend.sh VERSION DEST}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The wheel's headers do not depend on the Python version or platform tag it was built for.
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "nvidia-cudnn-frontend==$version" >&2
wheel=$(ls "$tmp"/nvidia_cudnn_frontend-*.whl 2>/dev/null | head -n 1)
[[ -n $wheel ]] || { echo "fetch_cudnn_frontend.sh: pip fetched no wheel of nvidia-cudnn-frontend $version" >&2; exit 1; }
python3 - "$wheel" "$tmp/out" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("include/")]
    if not any(n == "include/cudnn_frontend.h" for n in names):
        sys.exit(f"fetch_cudnn_frontend.sh: {wheel} holds no include/cudnn_frontend.h")
    for n in names:
        z.extract(n, out)
PY
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$tmp/out" "$dest"
