#!/usr/bin/env bash
# Every GPU check of the project, for a lent GPU machine (the device tool): results under $OUT.
#   bench/gpu_check.sh model   # model-side step time on synthetic tensors (no DALI needed)
#   bench/gpu_check.sh data    # install the carried DALI wheels, then the DALI GPU pipeline, the gpu tests and an
#                              # end-to-end GPU training epoch on synthetic JPEGs
#   bench/gpu_check.sh stash   # check and copy the carried chunk(s) to /tmp/chunks (once per chunk, carry=[".gpuN"])
# The GPU machine has PyTorch (CUDA) but no DALI: its wheels travel as chunks .gpu1 … .gpu5 of .whl.tar (made by
# bench/gpu_pack.sh), one per device call since a call carries at most 64 MiB. A carried folder does not stay in
# the repo copy between calls, so each call stashes its chunk in /tmp/chunks (kept while the machine is warm:
# make the calls back to back), and `data` reassembles them from there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

case "${1:-model}" in
stash)
  for d in .gpu*/; do (cd "$d" && sha256sum -c SHA256SUMS) || exit 2; done
  mkdir -p /tmp/chunks && cp .gpu*/whl.tar.part* /tmp/chunks/ && ls -la /tmp/chunks
  ;;
model)
  for args in "" "--compile"; do
    timeout 240 python3 bench/train_step.py --device cuda --size 224 --batch 256 --amp --channels-last \
      --steps 5 --rounds 3 $args 2>&1 | tee -a "$OUT/train_step.txt"
  done
  ;;
data)
  cat /tmp/chunks/whl.tar.part* > /tmp/whl.tar && mkdir -p /tmp/whl && tar -xf /tmp/whl.tar -C /tmp/whl || exit 3
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    /tmp/whl/.whl/*.whl 2>&1 | tail -3 || exit 4
  export PYTHONPATH=$PYTHONPATH:/tmp/site
  python3 -c "import nvidia.dali as d; print('dali', d.__version__)" | tee -a "$OUT/gpu.txt"
  timeout 200 python3 bench/data.py --device gpu --policies rrc,paper --seconds 10 2>&1 | tee "$OUT/data_gpu.txt"
  # longer epochs amortise the per-epoch pipeline rebuild, as ImageNet's 5,000 batches an epoch do
  timeout 150 python3 bench/data.py --device gpu --policies rrc --images 65536 --seconds 15 2>&1 | tee -a "$OUT/data_gpu.txt"
  timeout 200 python3 bench/data.py --device gpu --policies rrc,paper --images 131072 --seconds 20 2>&1 | tee -a "$OUT/data_gpu.txt"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/sibnn/test_data_imagenet.py 2>&1 | tee "$OUT/gpu_tests.txt"
  python3 -m sibnn.data.synthetic --out /tmp/synth --classes 8 --per-class 64 --val-per-class 16 > /dev/null
  timeout 150 python3 -m sibnn.train --dataset imagenet --data-root /tmp/synth --arch resnet18 --policy rrc \
    --epochs 3 --batch-size 64 --device cuda --amp --channels-last 2>&1 | tee "$OUT/train_e2e.txt"
  ;;
esac
