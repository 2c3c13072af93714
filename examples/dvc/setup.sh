#!/usr/bin/env bash
# Make a real git + DVC repository of this example in TARGET (new or empty):
#
#   examples/dvc/setup.sh /tmp/parity-dvc
#   cd /tmp/parity-dvc && dvc repro && dvc metrics show
#
# It copies the example, writes 8 sample images (seeded: the same bytes on every run),
# tracks them with `dvc add samples`, pushes them to a local remote (TARGET/remote,
# ignored by git), and commits. Needs git, dvc, and a Python with NumPy: set PYTHON and
# DVC to choose them (default: `python3` and `dvc` on PATH). `dvc repro` runs `parity`,
# so put the project's .venv/bin on PATH (or activate it) first.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${1:?usage: setup.sh TARGET (a new or empty folder)}"
PYTHON="${PYTHON:-python3}"
DVC="${DVC:-dvc}"

mkdir -p "$target"
target="$(cd "$target" && pwd)"
if [ -n "$(ls -A "$target")" ]; then
    echo "setup.sh: $target is not empty" >&2
    exit 2
fi

cp "$here/parity.toml" "$here/dvc.yaml" "$target/"
mkdir "$target/model"
cp "$here/model/adapter.py" "$target/model/"
cd "$target"

git init -q
# The identity lives in this repository's own config, never the global one.
git config user.name >/dev/null || git config user.name "parity example"
git config user.email >/dev/null || git config user.email "parity-example@localhost"

# One .npz file per sample, holding the named input arrays of that sample (here `lr`).
# Sample i is drawn from (2026, i) alone: smooth gradients and soft blobs, not noise.
"$PYTHON" - <<'PY'
from pathlib import Path

import numpy as np

out = Path("samples")
out.mkdir()
y, x = np.meshgrid(np.linspace(0, 1, 24), np.linspace(0, 1, 24), indexing="ij")
for i in range(8):
    r = np.random.default_rng([2026, i]).random(8)
    img = r[0] * x + r[1] * y + 0.3 * np.sin(2 * np.pi * (3 * r[2] * x + 3 * r[3] * y))
    img += 0.5 * np.exp(-((x - r[4]) ** 2 + (y - r[5]) ** 2) / (0.02 + 0.05 * r[6]))
    img = (img - img.min()) / (img.max() - img.min())
    np.savez(out / f"{i:04d}.npz", lr=img.astype(np.float32))
PY

"$DVC" init -q
"$DVC" add -q samples
"$DVC" remote add -q -d local "$target/remote"
"$DVC" push -q
printf '/remote/\n' >> .gitignore
git add -A
git commit -q -m "parity DVC example: samples tracked by DVC, parity check as a stage"
echo "ready: $target (cd there, then: dvc repro && dvc metrics show)"
