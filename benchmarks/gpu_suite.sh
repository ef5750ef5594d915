#!/usr/bin/env bash
# The GPU check in one command, within 8 minutes on one H100 / H200 and never hanging:
#   bash benchmarks/gpu_suite.sh OUT_DIR     run every check below
#   bash benchmarks/gpu_suite.sh --plan      print each check, its cap and its exact command; run nothing (no GPU)
# Each check runs under `timeout -k GRACE CAP`: SIGTERM at its cap, SIGKILL GRACE seconds later (`fastvit train`
# traps SIGTERM, and a hung NCCL or DALI step would ignore it). The caps and graces of the checks that run one after
# another add up to at most BUDGET (480 s); compile runs in the background beside dataset, tests and train, and its
# cap fits inside theirs (tests/benchmarks/test_gpu_suite_plan.py holds both).
#   gpu       torch sees a CUDA GPU (exit 2, having run nothing else, when it does not)
#   dataset   the built-in shapes dataset as JPEG folders (class = shape, colours random: a random init cannot solve it)
#   compile   the CPU tier's compile check (python -m fastvit.kernels.aot: every recipe-shape variant + the
#             representative set, sm_80 + sm_90a); the full sweep (--all, 1,570 compiles) needs no GPU: run it on CPUs
#   tests     the gpu test tier (pytest -m gpu: attention, LayerNorm, SwiGLU, MAE and CLIP kernels, multi-crop CUDA,
#             FSDP's bf16 policy on one NCCL rank, ...)
#   train     a 1-rank torchrun of `fastvit train demo` in bf16 (NCCL, Triton, the DALI GPU loader on the JPEGs); passes
#             when the teacher's kNN beats its random initialisation's by TRAIN_MARGIN_PCT (benchmarks/gpu_suite.py)
#   step      `fastvit bench step web_dino_vitl_h200` (images/s, MFU)
#   ckpt      step time with an asynchronous checkpoint write in flight against none, the pinned staging's and the
#             blocking save's time (benchmarks/checkpoint_overlap.py, web_dino_vitl_h200: ~5 GB of state)
#   kernels   `fastvit bench kernels quick=1` (no errors, no spilled kernel binaries)
#   data      `fastvit bench data` (DALI on the GPU among the loaders)
#   summary   one line per check, OUT_DIR/summary.json and summary.png; exit 1 when a check fails
set -uo pipefail
BUDGET=480
GRACE=5
# name cap_s mode [until]: fg checks run one after another; a bg check starts where it is listed, runs beside the
# fg checks after it and is waited for when the fg check `until` ends
PLAN=(
  "gpu 12 fg"
  "dataset 15 fg"
  "compile 210 bg train"
  "tests 90 fg"
  "train 116 fg"
  "step 60 fg"
  "ckpt 45 fg"
  "kernels 60 fg"
  "data 32 fg"
  "summary 5 fg"
)
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CPUS=$(nproc)
PY=${PYTHON:-python3}  # the interpreter that holds torch and fastvit

# the command of check $1 (OUT, REPO and START set)
command_of() {
  case "$1" in
    gpu) echo "$PY" -c "'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)'" ;;
    dataset) echo "$PY" -m fastvit.benchmarks.gpu_suite dataset "$OUT/jpegs" 1000 500 ;;
    compile)
      echo "$PY" -m fastvit.kernels.aot --quiet --jobs $((CPUS > 6 ? CPUS - 4 : 2)) --json "$OUT/compile.json" ;;
    tests) echo "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" "$REPO/tests" ;;
    train)
      echo torchrun --standalone --nproc_per_node=1 --no-python fastvit train demo "train.out=$OUT/train" \
        train.precision=bf16 train.steps=250 train.log_every=25 train.checkpoint_every=0 data.loader=dali \
        "data.source=imagefolder:$OUT/jpegs/train" "data.val_source=imagefolder:$OUT/jpegs/val" ;;
    step) echo fastvit bench step web_dino_vitl_h200 "out=$OUT/step" ;;
    ckpt) echo "$PY" -m fastvit.benchmarks.checkpoint_overlap web_dino_vitl_h200 iters=3 ;;
    kernels) echo fastvit bench kernels quick=1 "out=$OUT/kernels" ;;
    data) echo fastvit bench data "out=$OUT/data" ;;
    summary) echo "$PY" -m fastvit.benchmarks.gpu_suite summary "$OUT" "$START" ;;
  esac
}

if [[ "${1:-}" == "--plan" ]]; then
  OUT=OUT_DIR START=START
  printf '%-8s %5s %5s %-8s  %s\n' check cap_s kill_s mode command
  for entry in "${PLAN[@]}"; do
    read -r name cap mode until <<<"$entry"
    [[ -n "$until" ]] && mode="$mode:$until"
    printf '%-8s %5s %5s %-8s  timeout -k %s %s %s\n' "$name" "$cap" "$GRACE" "$mode" "$GRACE" "$cap" \
      "$(command_of "$name")"
  done
  echo "budget ${BUDGET} s, kill grace ${GRACE} s per check"
  exit 0
fi

OUT="${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR | --plan}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# python -m from a neutral folder: from the repository root the source fastvit/ would shadow a regular install
cd "$OUT" || exit 1
START=$(date +%s)
: >"$OUT/checks.tsv"
declare -A CAP UNTIL BG_PID

# start NAME: its command under timeout -k, output in OUT/NAME.log; fg waits, bg returns at once
start() {
  local name=$1 cmd
  cmd=$(command_of "$name")
  (
    t0=$(date +%s)
    eval "timeout -k $GRACE ${CAP[$name]} $cmd" >"$OUT/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $(($(date +%s) - t0)) "${CAP[$name]}" >>"$OUT/checks.tsv"
    echo "  $name done (exit $rc, $(($(date +%s) - t0)) s of ${CAP[$name]})"
    exit "$rc"
  ) &
  BG_PID[$name]=$!
}

for entry in "${PLAN[@]}"; do
  read -r name cap mode until <<<"$entry"
  CAP[$name]=$cap
  UNTIL[$name]=$until
done

for entry in "${PLAN[@]}"; do
  read -r name cap mode until <<<"$entry"
  if [[ "$name" == summary ]]; then
    eval "timeout -k $GRACE $cap $(command_of summary)"
    exit $?
  fi
  start "$name"
  [[ "$mode" == bg ]] && continue
  wait "${BG_PID[$name]}"
  rc=$?
  unset "BG_PID[$name]"
  if [[ "$name" == gpu && $rc -ne 0 ]]; then
    echo "gpu_suite.sh: no usable CUDA GPU ($PY: torch.cuda.is_available() is False or torch did not import:" \
      "$(tail -n 1 "$OUT/gpu.log")): nothing else was run"
    exit 2
  fi
  for bg in "${!BG_PID[@]}"; do  # background checks that end with this one: done by now, or out of time
    if [[ "${UNTIL[$bg]}" == "$name" ]]; then
      wait "${BG_PID[$bg]}"
      unset "BG_PID[$bg]"
    fi
  done
done
