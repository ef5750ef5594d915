#!/usr/bin/env bash
# The GPU check in one command (needs a CUDA GPU with torch + triton; about 8 minutes at most):
#   benchmarks/gpu_suite.sh OUT_DIR [quick]
# runs every gpu-marked test, then `fastvit bench kernels` (all ops; quick=1 with "quick"), and writes
# OUT_DIR/summary.md (test result + benchmark table), OUT_DIR/summary.json, the kernel benchmark's
# OUT_DIR/kernels/kernels.json and kernels_<op>.png, and the raw logs.
set -uo pipefail
OUT="${1:?usage: benchmarks/gpu_suite.sh OUT_DIR [quick]}"
QUICK=0
[[ "${2:-}" == "quick" ]] && QUICK=1
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh: no CUDA GPU visible')" || exit 2
START=$(date +%s)

timeout 200 python -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" tests \
  >"$OUT/gpu_tests.log" 2>&1
TESTS_RC=$?
tail -n 30 "$OUT/gpu_tests.log"

timeout 270 python -c 'import sys; from fastvit.benchmarks.kernels import main; sys.exit(main(sys.argv[1:]))' \
  "out=$OUT/kernels" "quick=$QUICK" >"$OUT/bench_kernels.log" 2>&1
BENCH_RC=$?

python - "$OUT" "$TESTS_RC" "$BENCH_RC" "$START" <<'PY'
import json, sys, time
from pathlib import Path
out, tests_rc, bench_rc, start = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
test_lines = (out / "gpu_tests.log").read_text().strip().splitlines()
bench_log = (out / "bench_kernels.log").read_text()
kernels = json.loads((out / "kernels" / "kernels.json").read_text()) if (out / "kernels" / "kernels.json").exists() else {}
summary = {"tests_rc": tests_rc, "tests": test_lines[-1] if test_lines else "", "bench_rc": bench_rc,
           "device": kernels.get("device"), "bench_rows": len(kernels.get("rows", [])),
           "seconds": round(time.time() - start)}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
table = bench_log if bench_rc == 0 else bench_log[-4000:] + f"\n(benchmark exit code {bench_rc}; 124 = timed out)"
(out / "summary.md").write_text(f"# fastvit GPU suite\n\n{json.dumps(summary, indent=1)}\n\n## gpu tests\n\n"
                                f"{test_lines[-1] if test_lines else ''}\n\n## kernel benchmarks\n\n```\n{table}\n```\n")
print((out / "summary.md").read_text())
PY
exit $(( TESTS_RC != 0 || BENCH_RC != 0 ))
