#!/usr/bin/env bash
# Issue 16's GPU checks in one run, for a session lent the device machine (one H200; its python3
# holds torch, torchvision, numpy, pandas, pyyaml, scipy, tensorboard, tqdm, pytest, ninja and
# nvcc; nothing can be fetched there). CI never runs this.
#
#   bash .ci/device-check.sh prepare   # here, once: InPlace-ABN's source and its build helper
#                                      # into .whl/ (git-ignored through .git/info/exclude)
#   device tool: run(command="bash .ci/device-check.sh", carry=[".whl"], timeout_s=570)
#
# There, in order, each step with its own time limit, everything written to $OUT as it goes:
#   1. InPlace-ABN built for the card (its setup.py compiles the CUDA kernels when torch has CUDA)
#   2. its tests with IFSS_TEST_DEVICES=cpu,cuda: the layer against BatchNorm2d + leaky_relu on
#      CUDA, a training run with model.norm=iabn under bf16 autocast
#   3. a training job started by torchrun (LOCAL_RANK picks the card; one process: NCCL refuses
#      two ranks on one device, so a DDP group needs a second GPU)
#   4. `ifss bench --device cuda` without the workflow section (no snakemake there), in two
#      records: $OUT/core/cuda.{json,md} (bf16 + channels_last vs fp32 eager, fraction of peak,
#      step overhead, evaluation, loader, memory), then $OUT/methods/ (every method, banks,
#      episodes, SimFormer, start-up) in the time left
# IFSS_CHECK_DEVICE=cpu rehearses steps 2-4 on the CPU (the quick bench; InPlace-ABN as installed).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
    set -e
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    mkdir -p .whl
    # the sdist's metadata step imports torch: the project's venv runs it
    .venv/bin/pip download -q --no-deps --no-binary :all: --no-build-isolation -d .whl \
        inplace-abn==1.1.0
    python3 -m pip download -q --no-deps --only-binary :all: --python-version 3.12 \
        --implementation cp --platform any -d .whl 'setuptools_scm<10'
    ls -l .whl
    exit 0
fi

DEVICE=${IFSS_CHECK_DEVICE:-cuda}
OUT=${OUT:-results/device-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/device-check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-560}  # seconds for the whole check (the device tool stops a command at 600)
failed=()
step() {  # step NAME SECONDS COMMAND...: run it, note a failure, go on with the next
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s, $(date -u +%T))"
    local start=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

echo "device check on $DEVICE, $(date -u +%FT%TZ)"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi -L
    "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, torch.cuda.get_device_name(0))" || exit 1
    SITE=/tmp/ifss-site
    mkdir -p "$SITE"
    export PYTHONPATH="$PYTHONPATH:$SITE" TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
    export MAX_JOBS=${MAX_JOBS:-$(nproc)}
    step "InPlace-ABN CUDA build" 300 bash -c "
        $PY -m pip install -q --no-index --no-deps --target $SITE .whl/setuptools_scm-*.whl &&
        $PY -m pip install --no-index --no-deps --no-build-isolation --target $SITE \
            .whl/inplace-abn-*.tar.gz &&
        $PY -c 'import inplace_abn, torch; from inplace_abn import InPlaceABN; \
l = InPlaceABN(4).cuda(); print(\"InPlaceABN on\", l(torch.randn(2, 4, 3, 3).cuda()).device)'"
fi

devices=cpu
[ "$DEVICE" = cpu ] || devices="cpu,$DEVICE"
step "InPlace-ABN tests on $devices" 240 env IFSS_TEST_DEVICES="$devices" \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_inplace_abn.py

synth=$(mktemp -d)
step "torchrun training job" 180 bash -c "
    $PY -m ifss synth --out $synth/data --train 60 --val 8 --size 64 &&
    $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m ifss train \
        --out $synth/run --set dataset=synthetic --set task=5-0 --set method=FT \
        --set data.root=$synth/data --set data.crop_size=64 --set model.backbone=resnet_tiny \
        --set model.head_channels=64 --set train.iterations=20 --set train.device=$DEVICE \
        --set train.amp=bf16 &&
    $PY -c 'import json, sys; m = json.load(open(\"$synth/run/metrics.json\")); \
print(\"metrics:\", {k: m[k] for k in (\"miou_base\", \"threads\", \"wall_time_s\")})'"

# the bench in two records, the issue's GPU figures first, so that a run cut short by the time
# limit (the device tool's 600 s) still brings those back: $OUT/core and $OUT/methods
quick=$([ "$DEVICE" = cuda ] && echo False || echo True)
bench() {  # bench FOLDER SECTION...
    local folder=$1
    shift
    local sections
    sections=$(printf "'%s'," "$@")
    step "ifss bench --device $DEVICE: $*" $((BUDGET - SECONDS > 60 ? BUDGET - SECONDS : 60)) \
        "$PY" -c "from ifss.bench import run_bench; run_bench('$DEVICE', $quick, '$OUT/$folder', \
cache_dir='$synth/bench-cache', sections=($sections))"
    [ -f "$OUT/$folder/$DEVICE.md" ] && cat "$OUT/$folder/$DEVICE.md"
}
bench core precision step eval loader memory
bench methods methods banks episodes simformer startup

if [ ${#failed[@]} -gt 0 ]; then
    printf 'device check: failed: %s\n' "${failed[@]}"
    exit 1
fi
echo "device check: every step passed"
