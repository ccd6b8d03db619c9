#!/usr/bin/env bash
# One prepared check for a GPU machine: build crs_fast there (no build isolation: the image has
# torch, triton, pybind11, scikit-build-core, cmake, ninja; nvcc builds the CUDA C++ kernels),
# run the GPU tests of both GPU backends (triton and cuda) including the large shapes
# (N*V > 2^31, T >= 65,536), the op tests, the GPU benchmarks (crs_fast auto, crs_fast[triton],
# crs_fast[cuda] and the baselines), write JSON and logs to $OUT, and print a short table last.
#   bench/gpu_check.sh             on the GPU machine (device run: OUT is set there)
#   bench/gpu_check.sh --dry-run   the same steps on the CPU: Triton through its interpreter,
#                                  quick benchmark shapes (proves the script before a GPU run)
# PYTHON picks the interpreter (default python3; 3.11+ for -P, which keeps the source tree, without
# its compiled kernels, off sys.path so the installed package is tested). Exit status: 0 only if
# every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
status=0

step() {
  local name=$1
  shift
  local start=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "[gpu_check] $name: ok ($((SECONDS - start)) s)"
  else
    echo "[gpu_check] $name: FAILED ($((SECONDS - start)) s), last lines of $OUT/$name.log:"
    tail -n 25 "$OUT/$name.log"
    status=1
  fi
}

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  export TRITON_INTERPRET=1
  BENCH=(--quick --device cpu --no-memory --ops kl_penalty ppo_policy_loss ppo_value_loss token_logprobs)
else
  DEVICE=cuda
  BENCH=(--device cuda)
fi
export CRS_FAST_TEST_DEVICE=$DEVICE PYTHONUNBUFFERED=1

"$PY" -c "import torch; print('[gpu_check] torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ "$DRY" = 1 ]; then
  step build "$PY" -m pip install --no-build-isolation --no-deps --force-reinstall --no-cache-dir .
else  # the CUDA kernels must build on the GPU machine: fail loudly rather than fall back
  step build env CMAKE_ARGS="-DCRS_FAST_CUDA=ON" "$PY" -m pip install --no-build-isolation --no-deps \
    --force-reinstall --no-cache-dir .
fi
"$PY" -P -c "import crs_fast._C as c; print('[gpu_check] CUDA C++ kernels built:', c.with_cuda)" | tee "$OUT/build_info.txt"
# Every Triton configuration the launchers can choose, compiled for the GPU targets before any GPU
# minute is spent on running them (the same check CI runs without a GPU); stop here if one fails.
step compile_check env -u TRITON_INTERPRET "$PY" -P -m crs_fast.kernels.triton.compile_check --arch 80 90 \
  --out "$OUT/compile_check.json"
if [ "$status" != 0 ]; then
  echo "[gpu_check] a kernel does not compile: stopping before the GPU steps"
  exit 1
fi
step test_gpu_backends "$PY" -P -m pytest -q -p no:cacheprovider tests/triton --junitxml="$OUT/test_gpu_backends.xml"
step test_ops "$PY" -P -m pytest -q -p no:cacheprovider tests/ops --junitxml="$OUT/test_ops.xml"
step bench "$PY" -m bench.run "${BENCH[@]}" --out "$OUT" --name "$DEVICE-check"

"$PY" - "$OUT" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for path in sorted(out.glob("*-check-*.json")):
    result = json.loads(path.read_text())
    print(f"\n{result['machine']}: copy {result['limits']['copy_bytes_per_s'] / 1e9:.0f} GB/s, "
          f"bf16 matmul {result['limits']['matmul_bf16_flops'] / 1e12:.1f} TFLOP/s, crs_fast backend {result['crs_fast_backend']}")
    print(f"{'op':<18} {'shape':<30} {'provider':<17} {'ms':>10} {'best baseline':>16} {'speedup':>8} {'of limit':>9}")
    for r in result["rows"]:
        if r.get("provider", "").startswith("crs_fast") and "median_ms" in r:
            print(f"{r['op']:<18} {r['shape']:<30} {r['provider']:<17} {r['median_ms']:>10.3f} "
                  f"{r.get('best_baseline', '-'):>16} {r.get('speedup_vs_best', 0):>7.2f}x {r.get('fraction_of_limit', 0):>8.0%}")
for xml in sorted(out.glob("test_*.xml")):
    text = xml.read_text()
    import re
    m = re.search(r'tests="(\d+)".*?failures="(\d+)"', text) or re.search(r'failures="(\d+)".*?tests="(\d+)"', text)
    print(f"{xml.stem}: {m.group(0) if m else 'no summary'}")
PYEOF
exit $status
