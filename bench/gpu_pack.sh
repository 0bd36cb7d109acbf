#!/usr/bin/env bash
# Wheels for the lent GPU machine (Python 3.12, PyTorch + Triton + CUDA libraries, no network), for
# bench/gpu_check.sh data and bench/gpu_e2e.sh: DALI 2.4.0 (cuda130) and its nvidia libraries, Ray 2.60.0 (train,
# tune), mlflow-skinny 3.17.2 (+ SQLAlchemy/Alembic for its local sqlite store), pydantic, and what they need that the
# machine lacks (its package list: /work/.library/device/KINDS.md; torch, triton, numpy and the CUDA runtime
# libraries are never carried, the machine's own stay in use). They are tarred, split into chunks .gpu1 … .gpuN of
# 58 MiB (a device call carries at most 64 MiB with the repo), with SHA-256 sums, all ignored by git. Then it prints
# the device calls to make, back to back (the machine goes back after 30 s idle).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
W=.whl
rm -rf "$W" .gpu[0-9]* && mkdir -p "$W"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64 --platform any)
# with their dependencies, resolved for the GPU machine's Python
$PY -m pip download -q "${plat[@]}" -d "$W" 'ray[train,tune]==2.60.0' 'mlflow-skinny==3.17.2' 'sqlalchemy>=2.0,<3' \
  'alembic>=1.13,<2' 'pydantic>=2.7,<3' nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13==0.9.0.20 \
  nvidia-libnvcomp-cu13==5.3.0.16 nvidia-nvjpeg==13.3.2.43 nvidia-nvjpeg2k-cu13==0.11.0.51 \
  nvidia-nvtiff-cu13==0.8.0.82
# what the machine has already (or must keep its own of): drop
have="torch triton numpy pandas pyarrow scipy scikit-learn pillow grpcio protobuf matplotlib requests urllib3 idna \
certifi charset-normalizer packaging pyyaml click filelock fsspec msgpack aiohttp aiosignal frozenlist multidict yarl \
propcache attrs typing-extensions jinja2 markupsafe cloudpickle psutil six python-dateutil tzdata pytz contourpy \
cycler fonttools kiwisolver pyparsing joblib threadpoolctl prometheus-client rich markdown-it-py mdurl pygments \
werkzeug h11 httpx httpcore anyio sniffio typer shellingham wrapt zipp tqdm"
for f in "$W"/*.whl; do
  name=$(basename "$f" | cut -d- -f1 | tr '_A-Z' '-a-z')
  case " $have " in *" $name "*) rm "$f";; esac
  case "$name" in nvidia-cu*|nvidia-cudnn*|nvidia-nccl*|nvidia-nvjitlink*|nvidia-cuda-*) rm -f "$f";; esac
done
tar -cf /tmp/sibnn-whl.tar "$W"
rm -f /tmp/sibnn-whl.tar.part*
split -b 58M -d -a 1 /tmp/sibnn-whl.tar /tmp/sibnn-whl.tar.part
i=1
for part in /tmp/sibnn-whl.tar.part*; do
  mkdir -p .gpu$i && mv "$part" .gpu$i/whl.tar.part$((i - 1)) && (cd .gpu$i && sha256sum whl.tar.part* > SHA256SUMS)
  i=$((i + 1))
done
rm /tmp/sibnn-whl.tar
exclude=$(git rev-parse --git-common-dir)/info/exclude
for pat in '/.gpu*/' '/.whl/'; do grep -qxF "$pat" "$exclude" 2>/dev/null || echo "$pat" >> "$exclude"; done
n=$((i - 1))
echo "wheels: $(ls "$W" | wc -l) files, $(du -sh "$W" | cut -f1); chunks:"; du -sh .gpu*/
echo
echo "Device calls, back to back (each carries one chunk; the machine keeps /tmp/chunks while warm):"
for k in $(seq 1 $n); do
  echo "  run(command='bash bench/gpu_check.sh stash', carry=['.gpu$k'], timeout_s=120)"
done
echo "  run(command='bash bench/gpu_e2e.sh', timeout_s=600)"
