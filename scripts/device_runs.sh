#!/usr/bin/env bash
# One call on a lent GPU (the device tool): the CPU budgets' runs, executed on the GPU to save CPU hours.
#
# Every run here trains the exact config (steps included) of a CPU-budget run, so its numbers are
# comparable with the CPU's; only the hardware that executes the steps differs (bf16 autocast on
# CUDA, as on a CPU with native bf16). What it runs, all at once, one process per run:
#   - `encseg experiment --budget cpu-frontier --parallel 7`: the privacy-accuracy frontier (docs/results.md);
#   - the demo model pair at the 8000-step budget: WL (6480 steps, equal CPU time) and plain SETR-PUP (8000);
#   - probes on the development split (docs/training.md): WL at 3520 steps, with and without random rescaling,
#     and WL at 6480 steps with random rescaling (a second demo candidate, in case rescaling wins).
# Then every finished model is scored (GPU) and the results come back under $OUT: results.tgz (logs,
# configs, scores, the frontier report) and fp16 copies of the models to ship.
#
#   DEADLINE   seconds after the start when unfinished training is stopped (default 460)
#   SCALE      multiply every probe/demo step count (default 1; e.g. 0.002 for a local dry run)
#   FRONTIER   0 skips the frontier experiment (local dry runs)
#   WHEELS     folder of wheels to install first (default .whl; the GPU image lacks cryptography)
#   ONLY       frontier runs to (re)do, comma-separated (`encseg experiment --only`); nothing else is trained.
#              Each run's results.json is copied to $OUT as soon as it exists (a cut-short call keeps them).
#   PARALLEL   frontier runs at a time (default 7)
set -u
T0=$(date +%s)
DEADLINE=${DEADLINE:-460}
SCALE=${SCALE:-1}
FRONTIER=${FRONTIER:-1}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT" runs/logs
elapsed() { echo $(( $(date +%s) - T0 )); }

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
  python3 setup.py build_ext --inplace >/dev/null 2>&1 && echo "C kernel built" || echo "no C kernel: numpy path"
  PY=python3
else
  PY=${PY:-.venv/bin/python}
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
$PY - <<'EOF' || exit 1
import torch, encseg.cli  # noqa: F401  (fails fast when an import is missing)
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
E="$PY -m encseg"
[ -d data/streets-cpu-small/gtFine ] || $E data streets --out data/streets-cpu-small --train 1500 --val 100 --size 128x256 --seed 0 --workers 8 || exit 1
[ -d data/streets-dev/gtFine ] || $E data streets --out data/streets-dev --train 1 --val 100 --size 128x256 --seed 1 --workers 8 || exit 1
echo "data ready at $(elapsed)s"

steps() { $PY -c "print(max(2, round($1 * $SCALE)))"; }
WL=(--set encryption.mode=per-image --set encryption.scheme=bs-psb-np-cs --set model.decoder=token
    --set model.position_embedding=false --set model.canonical=true --set model.pixel_group=16
    --set model.colour_head=8 --set model.channels=128 --set model.luma_sort=true)
R75=(--set "data.ratio_range=[0.75, 1.5]")
pids=()
train() {  # NAME STEPS ARGS...: one training process in the background, its output in runs/logs/NAME.log
  local name=$1 n; n=$(steps "$2"); shift 2
  setsid $E train --preset streets-cpu --set data.root=data/streets-cpu-small --set run.threads=1 --no-progress \
    --set run.steps="$n" --set run.ckpt_every="$n" --set run.out="runs/$name" "$@" >"runs/logs/$name.log" 2>&1 &
  pids+=($!)
}
ONLY=${ONLY:-}
if [ "$FRONTIER" = 1 ]; then
  setsid $E experiment --budget cpu-frontier --out runs/experiment --parallel "${PARALLEL:-7}" ${ONLY:+--only "$ONLY"} \
    --privacy docs/attack-record/results.json --results runs/frontier/results.md --chart runs/frontier/results.png \
    >runs/logs/frontier.log 2>&1 &
  pids+=($!)
fi
if [ -n "$ONLY" ]; then
  (while sleep 5; do for f in runs/experiment/cpu-frontier/*/results.json; do
     [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")").json"; done; done) &
  copier=$!
else
train wl8 6480 "${WL[@]}"
train plain8000 8000 --set encryption.mode=none
train pr-wl 3520 "${WL[@]}"
train pa-wl-r75 3520 "${WL[@]}" "${R75[@]}"
train wl8-r75 6480 "${WL[@]}" "${R75[@]}"
fi

status() {
  for f in runs/*/log.csv runs/experiment/cpu-frontier/*/log.csv; do
    [ -f "$f" ] && printf '%s %s | ' "$(basename "$(dirname "$f")")" "$(tail -1 "$f" | cut -d, -f1-2)"
  done; echo
}
sleep 60
status
if grep -l Traceback runs/logs/*.log; then echo "a run failed early:"; tail -20 $(grep -l Traceback runs/logs/*.log | head -2); fi
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
while [ "$(elapsed)" -lt "$DEADLINE" ]; do
  alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 20; echo "t=$(elapsed)s"; status
done
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && { echo "stopping $p at the deadline"; kill -- -"$p" 2>/dev/null; }; done
sleep 2
echo "training over at $(elapsed)s"; tail -3 runs/logs/frontier.log 2>/dev/null
if [ -n "$ONLY" ]; then
  kill "$copier" 2>/dev/null
  for f in runs/experiment/cpu-frontier/*/results.json; do [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")").json"; done
  ls -la "$OUT"; echo "done at $(elapsed)s"; exit 0
fi

score() {  # NAME DATA ENCRYPTION [SCHEME]: one evaluation into runs/NAME/eval-<data>.json
  local name=$1 data=$2 enc=$3 tag; tag=$(basename "$data")
  [ -f "runs/$name/model.safetensors" ] || return 0
  $E evaluate --checkpoint "runs/$name/model.safetensors" --data "$data" --encryption "$enc" ${4:+--scheme $4} \
    --json "runs/$name/eval-$tag.json" 2>&1 | tail -1 | sed "s|^|$name $tag: |"
}
for n in wl8 pr-wl pa-wl-r75 wl8-r75; do
  score $n data/streets-dev per-image bs-psb-np-cs
done
score wl8 data/streets-cpu-small per-image bs-psb-np-cs
score wl8-r75 data/streets-cpu-small per-image bs-psb-np-cs
score plain8000 data/streets-dev none
score plain8000 data/streets-cpu-small none

# fp16 copies of the models worth shipping (a file coming back must stay under 16 MiB)
$PY - "$OUT" <<'EOF'
import sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from safetensors import safe_open
for name in ("wl8", "plain8000", "wl8-r75"):
    src = Path("runs") / name / "model.safetensors"
    if src.exists():
        with safe_open(str(src), "pt") as f:
            meta = f.metadata()
        t = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(src)).items()}
        save_file(t, str(Path(sys.argv[1]) / f"{name}.safetensors"), metadata=meta)
EOF
tar czf "$OUT/results.tgz" runs/logs runs/*/log.csv runs/*/config.json runs/*/model.json runs/*/eval-*.json \
  runs/experiment/cpu-frontier/*/results.json runs/experiment/cpu-frontier/*/log.csv runs/experiment/cpu-frontier/timing.json \
  runs/frontier 2>/dev/null
ls -la "$OUT"; echo "done at $(elapsed)s"
