#!/usr/bin/env bash
# Build and benchmark every engine of a bundle on this Jetson, then pack the results to copy home.
#
#   bash run.sh BUNDLE.tar.gz [--trtexec] [--out DIR] [--batch-sizes 1,64]
#
# 1. unbundle (every file's sha256 checked; nothing extracted from a damaged bundle)
# 2. record the device: L4T release, power mode (nvpmodel -q), clocks (jetson_clocks --show)
# 3. per engine: build with the TensorRT backend and bench it (default), or with trtexec (--trtexec)
#    and import trtexec's own figures; then a dedicated run per batch size while tegrastats samples
#    power, for mean power and energy per image
# 4. summary.md and DIR.tar.gz (bench JSONs, logs, device facts; no engines)
#
# Environment (defaults in brackets): MIMICNORM [mimicnorm-deploy], TRTEXEC [trtexec, else
# /usr/src/tensorrt/bin/trtexec], TEGRASTATS [tegrastats; "" skips power], NVPMODEL [nvpmodel],
# JETSON_CLOCKS [sudo -n jetson_clocks], MIMICNORM_DEVICE_ROOT [/], TRT_VERSION [the installed
# tensorrt module's], BENCH_SECONDS [2: timed seconds per batch size, TensorRT backend], POWER_SECONDS [10].
# Tests point these at fakes.
set -euo pipefail

fail() { echo "error: $*" >&2; exit 2; }
say() { echo "== $*" >&2; }

MIMICNORM="${MIMICNORM:-mimicnorm-deploy}"
if [ -z "${TRTEXEC:-}" ]; then
  TRTEXEC="$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)"
fi
TEGRASTATS="${TEGRASTATS-tegrastats}"
NVPMODEL="${NVPMODEL:-nvpmodel}"
JETSON_CLOCKS="${JETSON_CLOCKS:-sudo -n jetson_clocks}"
DEVICE_ROOT="${MIMICNORM_DEVICE_ROOT:-/}"
POWER_SECONDS="${POWER_SECONDS:-10}"
BENCH_SECONDS="${BENCH_SECONDS:-2}"
export TRTEXEC TEGRASTATS NVPMODEL JETSON_CLOCKS

bundle="" use_trtexec=0 out="" batch_sizes="1,64"
while [ $# -gt 0 ]; do
  case "$1" in
    --trtexec) use_trtexec=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --batch-sizes) batch_sizes="$2"; shift 2 ;;
    -*) fail "unknown option '$1'; usage: run.sh BUNDLE [--trtexec] [--out DIR] [--batch-sizes 1,64]" ;;
    *) [ -z "$bundle" ] || fail "one bundle at a time (got '$bundle' and '$1')"; bundle="$1"; shift ;;
  esac
done
[ -n "$bundle" ] || fail "usage: run.sh BUNDLE [--trtexec] [--out DIR] [--batch-sizes 1,64]"
[ -f "$bundle" ] || fail "$bundle: no such bundle; copy the .tar.gz written by 'mimicnorm-deploy bundle'"
[ -r "$DEVICE_ROOT/etc/nv_tegra_release" ] \
  || fail "$DEVICE_ROOT/etc/nv_tegra_release not found: this is not a Jetson; run run.sh on the device"
command -v ${MIMICNORM%% *} >/dev/null || fail "$MIMICNORM not found; run scripts/jetson/setup.sh and activate its venv"
if [ "$use_trtexec" = 1 ]; then
  command -v "$TRTEXEC" >/dev/null || fail "trtexec not found at $TRTEXEC; set TRTEXEC=/path/to/trtexec"
fi

out="${out:-results-$(basename "$bundle" .tar.gz)-$(date -u +%Y%m%dT%H%M%SZ)}"
[ ! -e "$out" ] || fail "$out already exists; pass a new --out"
work="$out.work"   # extracted bundle and engines: stays on the device
results="$out"     # what goes home
mkdir -p "$work" "$results/device"

say "unbundle $bundle"
$MIMICNORM unbundle "$bundle" --out "$work/bundle" >&2
manifest="$work/bundle/bundle.json"
# One line per engine: name, kind, model, calibration cache, plan ("-" where none).
engine_table() {
  python3 - "$manifest" <<'EOF'
import json, sys
manifest = json.load(open(sys.argv[1]))
print(manifest["target"]["name"])
for e in manifest["engines"]:
    print("\t".join([e["name"], e["kind"], e["model"], e["calibration_cache"] or "-", e["plan"] or "-"]))
EOF
}
engine_table > "$work/engines.tsv"
target="$(head -n 1 "$work/engines.tsv")"
trt_version="${TRT_VERSION:-$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)}"
say "target $target, TensorRT ${trt_version:-as the target defaults}"

say "device facts"
cp "$DEVICE_ROOT/etc/nv_tegra_release" "$results/device/nv_tegra_release"
$NVPMODEL -q > "$results/device/nvpmodel.txt" 2>&1 || echo "warning: '$NVPMODEL -q' failed; power mode unknown" >&2
if $JETSON_CLOCKS --show > "$results/device/jetson_clocks.txt" 2>&1; then
  grep -q "^GPU MinFreq=\([0-9]*\) MaxFreq=\1 " "$results/device/jetson_clocks.txt" \
    || echo "warning: GPU clocks are not locked; run 'sudo jetson_clocks' for stable latency" >&2
else
  echo "warning: '$JETSON_CLOCKS --show' failed (needs root); clock lock state not recorded" >&2
fi
export MIMICNORM_DEVICE_ROOT="$DEVICE_ROOT"

trt_args=()
[ -n "$trt_version" ] && trt_args=(--trt-version "$trt_version")
test_set="$work/bundle/data/test.npz"

bench_with_trtexec() {  # name kind model cache plan
  local name="$1" model="$work/bundle/$3" cache="$4" plan="$5"
  local norm="${name%%/*}" variant="${name#*/}"
  local dir="$results/$norm/trtexec/$variant"
  local args=("$model" --target "$target" "${trt_args[@]}" --batch-sizes "$batch_sizes" --out-dir "$dir"
              --timing-cache "$work/timing.cache" --write-script "$dir/trtexec.sh")
  [ "$cache" != "-" ] && args+=(--calib-cache "$work/bundle/$cache")
  [ "$cache" != "-" ] && [ "$plan" != "-" ] && args+=(--plan "$work/bundle/$plan")
  mkdir -p "$dir"
  $MIMICNORM trtexec "${args[@]}" >&2
  POWER_SECONDS="$POWER_SECONDS" bash "$dir/trtexec.sh" || fail "trtexec failed for $name; see $dir/b*.log"
  local import=() batch
  for batch in ${batch_sizes//,/ }; do
    import+=(--times "$dir/b$batch.times.json" --log "$dir/b$batch.log")
  done
  local first="${batch_sizes%%,*}"
  $MIMICNORM import-trtexec "${import[@]}" --profile "$dir/b$first.profile.json" \
    --layers "$dir/b$first.layers.json" --target "$target" --fingerprint \
    --out "$results/$norm/bench/$variant.json" >&2
}

bench_with_backend() {  # name kind model cache plan
  local name="$1" model="$work/bundle/$3" cache="$4" plan="$5"
  local norm="${name%%/*}" variant="${name#*/}" engine="$work/engines/$1"
  local sizes=(${batch_sizes//,/ })
  local largest
  largest="$(printf '%s\n' "${sizes[@]}" | sort -n | tail -n 1)"
  # one engine for every batch size: the profile spans them, tuned for the first (latency at batch 1)
  local args=("$model" --out "$engine" --backend tensorrt --target "$target" --min-batch 1
              --opt-batch "${sizes[0]}" --max-batch "$largest" --timing-cache-dir "$work/timing")
  [ "$cache" != "-" ] && args+=(--calibration-cache "$work/bundle/$cache")
  [ "$cache" != "-" ] && [ "$plan" != "-" ] && args+=(--plan "$work/bundle/$plan")  # a Q/DQ file carries its plan
  $MIMICNORM build "${args[@]}" >&2
  local eval_args=()
  [ -f "$test_set" ] && eval_args=(--eval "$test_set")
  $MIMICNORM bench "$engine" --out "$results/$norm/bench/$variant.json" --batch-sizes "$batch_sizes" \
    --duration "$BENCH_SECONDS" "${eval_args[@]}" >&2
  [ -n "$TEGRASTATS" ] || return 0
  local batch dir="$results/$norm/power/$variant"
  mkdir -p "$dir"
  for batch in ${batch_sizes//,/ }; do
    $TEGRASTATS --interval 100 > "$dir/b$batch.tegrastats.log" & local sampler=$!
    $MIMICNORM bench "$engine" --out "$work/power.json" --batch-sizes "$batch" --duration "$POWER_SECONDS" >&2
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
  done
}

attach_power() {  # name, directory holding b<batch>.tegrastats.log
  local norm="${1%%/*}" variant="${1#*/}" batch
  [ -n "$TEGRASTATS" ] || return 0
  for batch in ${batch_sizes//,/ }; do
    $MIMICNORM import-tegrastats --bench "$results/$norm/bench/$variant.json" \
      --log "$2/b$batch.tegrastats.log" --batch-size "$batch" >&2
  done
}

while IFS=$'\t' read -r name kind model cache plan; do
  say "$name ($kind)"
  mkdir -p "$results/${name%%/*}/bench"
  if [ "$use_trtexec" = 1 ]; then
    bench_with_trtexec "$name" "$kind" "$model" "$cache" "$plan"
    attach_power "$name" "$results/${name%%/*}/trtexec/${name#*/}"
  else
    bench_with_backend "$name" "$kind" "$model" "$cache" "$plan"
    attach_power "$name" "$results/${name%%/*}/power/${name#*/}"
  fi
done < <(tail -n +2 "$work/engines.tsv")

say "pack $results.tar.gz"
$MIMICNORM pack-results "$results" --target "$target" --out "$results.tar.gz"
