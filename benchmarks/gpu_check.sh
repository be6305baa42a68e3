#!/usr/bin/env bash
# The GPU data path's check, for a machine with a GPU (a few minutes; stops at the first failure):
#   1. torch sees CUDA;
#   2. the quickstart runs on CUDA (teachers, then the student; the data on the GPU);
#   3. benchmarks/kd_epoch.py --device cuda: images per second of kdzoo, a plain
#      PyTorch loop and the authors' style, and of a fused 8-arm sweep against --fuse off;
#   4. with 2+ GPUs, a --nproc 2 smoke run (one epoch, the teachers from step 2's cache);
#   5. with COMPILE=1, step 3 again with --compile (a few more minutes: compilation).
#
#   benchmarks/gpu_check.sh [OUT_DIR]        # PYTHON=... to use another interpreter
set -euo pipefail
trap 'echo "== GPU check FAILED (line $LINENO)" >&2' ERR
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
OUT=${1:-$(mktemp -d -t kdzoo-gpu-check-XXXXXX)}
mkdir -p "$OUT"
echo "== results in $OUT"

echo "== 1. CUDA"
GPUS=$("$PYTHON" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("torch " + torch.__version__ + " sees no CUDA device")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}", file=sys.stderr)
print(torch.cuda.device_count())
EOF
)

echo "== 2. quickstart on CUDA"
start=$(date +%s)
"$PYTHON" -m kdzoo run examples/quickstart.yaml --set device=cuda --set output_dir="$OUT/runs" --quiet --out "$OUT/quickstart"
echo "quickstart: $(( $(date +%s) - start )) s"
"$PYTHON" - "$OUT/quickstart" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
summary = json.loads((run / "summary.json").read_text())
assert summary["device"].startswith("cuda"), summary["device"]
records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
print(f"student: device {summary['device']}, precision {summary['precision']}, test top-1 {summary['final']['test/top1/student']:.4f}, "
      f"train images/s per epoch: {', '.join(str(r['images_per_s']) for r in records)}")
EOF

echo "== 3. KD epoch (kdzoo, plain loop, authors' style) and a fused sweep"
"$PYTHON" benchmarks/kd_epoch.py --device cuda --images 20000 --rounds 3

if [ "$GPUS" -ge 2 ]; then
  echo "== 4. --nproc 2 smoke run"
  "$PYTHON" -m kdzoo run examples/quickstart.yaml --set device=cuda --set output_dir="$OUT/runs" --set epochs=1 \
    --nproc 2 --quiet --out "$OUT/nproc2"
  "$PYTHON" -c "import json, sys; s = json.load(open(sys.argv[1])); assert s['world_size'] == 2, s['world_size']; print('nproc 2: world_size 2, test top-1', s['final']['test/top1/student'])" "$OUT/nproc2/summary.json"
else
  echo "== 4. skipped: one GPU"
fi
if [ "${COMPILE:-0}" = 1 ]; then
  echo "== 5. KD epoch with torch.compile"
  "$PYTHON" benchmarks/kd_epoch.py --device cuda --images 20000 --rounds 3 --compile
fi
echo "== GPU check passed"
