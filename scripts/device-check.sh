#!/usr/bin/env bash
# The CUDA path, checked on a GPU host: the reference model on the CPU and on CUDA in one
# interpreter (examples/gpu/parity.toml), with the fingerprint's torch/CUDA section.
# Needs python3 with torch, numpy, safetensors, click, filelock and packaging>=25.
# Writes the JSON report to ${OUT:-.}/gpu-report.json. Exit status: parity's.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 - <<'PY'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "numpy", "safetensors", "click", "filelock", "packaging"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except ImportError as e:
        print(name, "MISSING", e)
import torch
print("cuda available:", torch.cuda.is_available(), torch.version.cuda)
PY
PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" python3 -c 'from parity.cli import main; main()' \
    check --config examples/gpu/parity.toml --json "$out/gpu-report.json"
status=$?
python3 - "$out/gpu-report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for name, env in r["environments"].items():
    print(name, json.dumps(env.get("libraries", {}).get("torch")))
for o in r["outputs"]:
    print(o["name"], "passed" if o["passed"] else "FAILED", "mismatched", o["mismatched"], "/",
          o["total"], "max_abs", o["max_abs_diff"], "atol_to_pass", o["atol_to_pass"])
PY
exit $status
