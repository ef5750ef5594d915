#!/usr/bin/env bash
# The GPU check in one command, at most 8 minutes on one H200:  bash benchmarks/gpu_suite.sh OUT_DIR
#   compile    every Triton launch variant compiled for sm_80 and sm_90a (python -m fastvit.kernels.aot --all:
#              no compile error, no spill, shared memory within the chip); runs on the CPUs beside tests + train
#   tests      the gpu test tier (pytest -m gpu)
#   train      a 1-rank torchrun of `fastvit train demo` in bf16 (NCCL, the auto backends, i.e. Triton for bf16 on a
#              GPU, the DALI GPU loader on a folder of JPEGs written here) and its kNN
#   step       `fastvit bench step web_dino_vitl_h200` (images/s, MFU)
#   kernels    `fastvit bench kernels` (attention dense + packed vs SDPA and flash-attn when installed, LayerNorm,
#              SwiGLU, the losses vs torch and torch.compile; registers / spills / shared memory per kernel)
#   data       `fastvit bench data` (DALI on the GPU among the loaders)
# Writes OUT_DIR/<check>.log, the checks' JSON and PNG files, summary.json and summary.png; prints one line per
# check and exits 1 when a check fails. Without a CUDA GPU it says so and exits 2, having run nothing.
set -uo pipefail
OUT="${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_suite.sh: no CUDA GPU visible (torch.cuda.is_available() is False): nothing was run"
  exit 2
fi
START=$(date +%s)
BUDGET=${GPU_SUITE_SECONDS:-480}
CPUS=$(nproc)
: >"$OUT/checks.tsv"

# remaining seconds of the budget, capped at $1
left() { local r=$((BUDGET - ($(date +%s) - START))); ((r < $1)) && echo $((r > 5 ? r : 5)) || echo "$1"; }

# run NAME LIMIT_S COMMAND...: output to OUT/NAME.log; one line "NAME rc seconds" in checks.tsv
run() {
  local name=$1 limit t0 rc
  limit=$(left "$2")
  shift 2
  t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $(($(date +%s) - t0)) "$limit" >>"$OUT/checks.tsv"
  echo "  $name done (exit $rc, $(($(date +%s) - t0)) s)"
}

# The compile sweep is CPU work: it runs beside the tests and the training run, not beside the benchmarks.
t_compile=$(date +%s)
timeout "$(left 300)" python -m fastvit.kernels.aot --all --quiet --jobs $((CPUS > 6 ? CPUS - 4 : 2)) \
  --json "$OUT/compile.json" >"$OUT/compile.log" 2>&1 &
COMPILE_PID=$!

run tests 150 python -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" tests

python - "$OUT/jpegs" <<'PY'
# Four classes of procedural images (a coloured disc on a noisy background), train and val folders.
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

rng = np.random.default_rng(0)
colors = [(220, 40, 40), (40, 200, 60), (40, 80, 220), (230, 200, 40)]
for split, count in (("train", 96), ("val", 32)):
    for c, color in enumerate(colors):
        folder = Path(sys.argv[1]) / split / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = Image.fromarray(rng.integers(0, 90, (96, 96, 3), dtype=np.uint8))
            (x, y), r = rng.integers(20, 76, 2).tolist(), int(rng.integers(12, 20))
            ImageDraw.Draw(img).ellipse([x - r, y - r, x + r, y + r], fill=color)
            img.save(folder / f"{i:04d}.jpg", quality=90)
PY
run train 150 torchrun --standalone --nproc_per_node=1 --no-python fastvit train demo \
  "train.out=$OUT/train" train.precision=bf16 train.steps=60 train.log_every=10 train.checkpoint_every=0 \
  data.loader=dali "data.source=imagefolder:$OUT/jpegs/train" "data.val_source=imagefolder:$OUT/jpegs/val"

wait "$COMPILE_PID"
rc=$?
printf 'compile\t%s\t%s\t%s\n' "$rc" $(($(date +%s) - t_compile)) 300 >>"$OUT/checks.tsv"
echo "  compile done (exit $rc)"

run step 90 fastvit bench step web_dino_vitl_h200 "out=$OUT/step"
run kernels 150 fastvit bench kernels "out=$OUT/kernels"
run data 60 fastvit bench data "out=$OUT/data"

python - "$OUT" "$START" <<'PY'
import json
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

out, start = Path(sys.argv[1]), int(sys.argv[2])


def load(path):
    try:
        return json.loads((out / path).read_text())
    except (OSError, ValueError):
        return None


def detail(name):
    """One short line of what the check measured."""
    path = out / f"{name}.log"
    log = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    if name == "compile" and (c := load("compile.json")):
        return f"{len(c['reports'])} (variant, target) compiles, {c['failed']} fail a limit"
    if name == "train":
        knn = load("train/eval.json")
        return f"kNN {json.dumps(knn)[:120]}" if knn else (log[-1][:160] if log else "no log")
    if name == "step" and (s := load("step/step.json")):
        mfu = s.get("mfu")
        return f"{s.get('images_per_s', 0):.0f} images/s, MFU {mfu:.1%}" if mfu is not None else str(s)[:160]
    if name == "kernels" and (k := load("kernels/kernels.json")):
        rows = k.get("rows", [])
        spills = [r for r in rows if r.get("spills")]
        errors = [r for r in rows if r.get("error")]
        return f"{len(rows)} rows, {len(errors)} errors, {len(spills)} compiled kernels that spill"
    return log[-1][:160] if log else "no log"


checks = []
for line in (out / "checks.tsv").read_text().splitlines():
    name, rc, seconds, limit = line.split("\t")
    rc = int(rc)
    ok = rc == 0
    if name == "kernels" and ok and (k := load("kernels/kernels.json")):
        ok = not any(r.get("error") or r.get("spills") for r in k.get("rows", []))
    if name == "train" and ok:
        ok = load("train/eval.json") is not None
    status = "PASS" if ok else ("TIMEOUT" if rc == 124 else "FAIL")
    checks.append(dict(name=name, status=status, rc=rc, seconds=int(seconds), limit=int(limit), detail=detail(name)))
summary = dict(seconds=round(time.time() - start), checks=checks, passed=all(c["status"] == "PASS" for c in checks))
(out / "summary.json").write_text(json.dumps(summary, indent=1))
for c in checks:
    print(f"{c['status']:<8}{c['name']:<9}{c['seconds']:>5} s  {c['detail']}")
verdict = "all checks pass" if summary["passed"] else "FAILED"
print(f"gpu_suite: {verdict} in {summary['seconds']} s; {out}/summary.json")

img = Image.new("RGB", (760, 40 + 22 * len(checks)), "white")
draw = ImageDraw.Draw(img)
draw.text((8, 8), f"fastvit gpu_suite: {summary['seconds']} s", fill="black")
top = max([c["seconds"] for c in checks] + [1])
for i, c in enumerate(checks):
    y = 32 + 22 * i
    draw.text((8, y + 4), f"{c['name']} {c['status']}", fill="black")
    color = (60, 170, 90) if c["status"] == "PASS" else (210, 60, 50)
    draw.rectangle([140, y + 3, 140 + max(int(560 * c["seconds"] / top), 1), y + 18], fill=color)
    draw.text((145 + int(560 * c["seconds"] / top), y + 4), f"{c['seconds']} s", fill="black")
img.save(out / "summary.png")
sys.exit(0 if summary["passed"] else 1)
PY
