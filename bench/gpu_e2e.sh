#!/usr/bin/env bash
# One end-to-end run of the ImageNet path on a lent GPU machine (H200, 16 cores, torch + Triton, no Ray/DALI/MLflow,
# no network), results under $OUT, in under 8 minutes:
#   1. python -m jobs.run on a synthetic-ImageNet spec: ResNet-18 Si-BNN, 224 px rrc, DALI mixed, AMP, channels_last,
#      compile, one worker on the GPU, 3 epochs of 64k images, MLflow in a local sqlite store, a local Ray head with
#      the GPU; images/s read back from MLflow (e2e.txt)
#   2. bench/train_step.py on the same GPU: the ceiling, fused binarizer vs the reference (train_step.txt)
#   3. bench/data.py: DALI alone on the same images, and epochs 2..E against one long epoch (data.txt)
#   4. a 4-trial grid at 0.25 GPU per trial: how much GPU the running trials hold at once (packing.txt)
#   + the fused-binarizer tests on the GPU (tests.txt)
# The wheels come as chunks stashed in /tmp/chunks by earlier calls (bench/gpu_pack.sh prints the calls).
#
#   bash bench/gpu_e2e.sh --dry-run   # the same steps on a CPU machine: tiny sizes, no wheels, a Ray head that
#                                     # declares one fake GPU (training falls back to the CPU); tests/bench/test_gpu_e2e.py
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$(mktemp -d /tmp/sibnn-e2e-out.XXXX)}; mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/sibnn-e2e.XXXX)
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/steps.txt"; }
rc=0
step() { local name=$1; shift; "$@" || { echo "step $name failed (exit $?)" | tee -a "$OUT/steps.txt"; rc=1; }; }

if [ $DRY = 1 ]; then
  CLASSES=4 PER_CLASS=16 VAL=4 EPOCHS=3 BATCH=8 SIZE=64 CPUS=1 HEAD_CPUS=5 T_RUN=400
  STEP_ARGS="--device cpu --size 32 --batch 4 --steps 1 --rounds 1 --warmup 1"
  DATA_ARGS="--device cpu --seconds 2 --threads 2"; EPOCH_ARGS="--device cpu --images 64 --epochs 3 --threads 2"
  # T_PACK: the 4 CPU trials take ~125 s each at once on 2 cores; 180 s was 8 s short on a loaded machine
  PACK_EPOCHS=2 GPUS=0 PACK_GPUS=0 RES=CPU T_PACK=300
  # Ray Train puts GPU workers on NCCL, which CPU torch lacks: dry mode trains on CPU workers and checks the
  # packing on CPUs (4 trials x 1 CPU + their drivers on a head of 5 CPUs)
else
  CLASSES=100 PER_CLASS=656 VAL=10 EPOCHS=3 BATCH=256 SIZE=224 CPUS=12 HEAD_CPUS=16 T_RUN=330
  STEP_ARGS="--device cuda --size 224 --batch 256 --amp --channels-last --compile --steps 5 --rounds 2"
  DATA_ARGS="--device gpu --seconds 15"; EPOCH_ARGS="--device gpu --images 8192 --epochs 4"
  PACK_EPOCHS=2 GPUS=1 PACK_GPUS=0.25 RES=GPU T_PACK=180
  log "install the carried wheels"
  ls /tmp/chunks/whl.tar.part* > /dev/null || { echo "no chunks in /tmp/chunks: run the stash calls first"; exit 3; }
  mkdir -p /tmp/whl && cat /tmp/chunks/whl.tar.part* | tar -x -C /tmp/whl || exit 3
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    /tmp/whl/.whl/*.whl 2>&1 | tail -3
  export PYTHONPATH=$PYTHONPATH:/tmp/site PATH=/tmp/site/bin:$PATH
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
fi
$PY -c "import torch, ray, mlflow, nvidia.dali as d, pydantic; print('torch', torch.__version__, 'ray', ray.__version__,
'mlflow', mlflow.__version__, 'dali', d.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$OUT/gpu.txt"

# -- a local Ray head with the GPU (dry: one fake GPU); stopped by its process id at exit
# (Ray's drivers connect through the node's address, not 127.0.0.1: the head takes the address Ray picks)
NODE_IP=$($PY -c "from ray.util import get_node_ip_address as ip; print(ip())")
read -r PORT P1 P2 P3 P4 P5 < <($PY -c "
import socket; ss = [socket.socket() for _ in range(6)]; [s.bind(('$NODE_IP', 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])")
# token authentication on, as every Ray of the project: the head and every driver here inherit the token
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$($PY -c "import secrets; print(secrets.token_hex(32))")
setsid $PY -m ray.scripts.scripts start --head --block --port="$PORT" --node-ip-address="$NODE_IP" \
  --num-cpus=$HEAD_CPUS --num-gpus=1 --include-dashboard=false --disable-usage-stats --temp-dir="$WORK/ray" \
  --ray-client-server-port=$P1 --dashboard-agent-listen-port=$P2 --dashboard-agent-grpc-port=$P3 \
  --metrics-export-port=$P4 --runtime-env-agent-port=$P5 > "$WORK/ray.log" 2>&1 &
RAYPID=$!
cleanup() { kill -TERM -- -$RAYPID 2>/dev/null; wait $RAYPID 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
export RAY_ADDRESS=$NODE_IP:$PORT
for i in $(seq 20); do
  timeout 30 $PY -c "import ray; ray.init(logging_level='ERROR'); assert ray.cluster_resources().get('GPU') == 1" \
    2>>"$WORK/ray_wait.log" && break
  [ $i = 20 ] && { echo "the Ray head did not come up:"; tail -5 "$WORK/ray.log" "$WORK/ray_wait.log"; exit 4; }
  sleep 2
done

log "data: $CLASSES classes x $PER_CLASS images"
step data $PY bench/e2e.py data "$WORK/data" --classes $CLASSES --per-class $PER_CLASS --val-per-class $VAL
mkdir -p "$WORK/bench" && ln -s "$WORK/data" "$WORK/bench/raw"

log "1. jobs.run, one worker on the GPU"
ARGS="--epochs $EPOCHS --batch $BATCH --image-size $SIZE --gpus $GPUS --cpus $CPUS --amp --compile"
$PY bench/e2e.py spec --data "$WORK/data" $ARGS > "$OUT/spec_e2e.json"
URI="sqlite:///$WORK/mlflow.db"
step jobs.run timeout $T_RUN $PY -m jobs.run --spec "$OUT/spec_e2e.json" --experiment-id e2e \
  --storage-path "$WORK/storage" --mlflow-uri "$URI" > "$OUT/jobs_run.txt" 2>&1
tail -5 "$OUT/jobs_run.txt"
step mlflow $PY bench/e2e.py images-per-s --mlflow-uri "$URI" --experiment-id e2e > "$OUT/e2e.txt" 2>&1; cat "$OUT/e2e.txt"

log "2. train_step ceiling"
step train_step timeout 200 $PY bench/train_step.py $STEP_ARGS --binarizers fp,sibnn,sibnn-fused,sibnn-ref \
  > "$OUT/train_step.txt" 2>&1; cat "$OUT/train_step.txt"

log "3. DALI alone"
step data.py timeout 60 $PY bench/data.py --data "$WORK/bench" --policies rrc $DATA_ARGS > "$OUT/data.txt" 2>&1
step epochs timeout 120 $PY bench/data.py --epochs-check $EPOCH_ARGS >> "$OUT/data.txt" 2>&1; cat "$OUT/data.txt"

log "4. four trials at 0.25 GPU"
$PY bench/e2e.py spec --data "$WORK/data" --epochs $PACK_EPOCHS --batch 8 --image-size 32 --gpus $PACK_GPUS --cpus 1 \
  --seeds 4 > "$OUT/spec_pack.json"
$PY bench/e2e.py watch-gpus --address "$RAY_ADDRESS" --out "$OUT/packing.txt" --seconds 170 --resource $RES &
WATCH=$!
step packing timeout $T_PACK $PY -m jobs.run --spec "$OUT/spec_pack.json" --experiment-id pack \
  --storage-path "$WORK/storage" --mlflow-uri "$URI" > "$OUT/jobs_pack.txt" 2>&1
kill $WATCH 2>/dev/null; wait $WATCH 2>/dev/null
tail -6 "$OUT/jobs_pack.txt"; cat "$OUT/packing.txt" 2>/dev/null || echo "packing: no GPU use seen" | tee -a "$OUT/steps.txt"

if [ $DRY = 0 ]; then
  log "fused-binarizer tests on the GPU"
  SIBNN_FUSED_DEVICE=cuda SIBNN_EXPECT_TRITON=1 step tests timeout 120 $PY -m pytest -q -p no:cacheprovider \
    tests/sibnn/test_fused.py -k "float32_reference or compiles" > "$OUT/tests.txt" 2>&1; tail -5 "$OUT/tests.txt"
fi
log "done (exit $rc)"
exit $rc
