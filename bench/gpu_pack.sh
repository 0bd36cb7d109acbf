#!/usr/bin/env bash
# Download DALI 2.4.0 (cuda130) and what it needs, as wheels for the GPU machine's Python 3.12, and split them into
# chunks .gpu1 … .gpuN of under 60 MB each (a device call carries at most 64 MiB). Ignored by git (.git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "$@"; }
dl nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-libnvcomp-cu13==5.3.0.16 \
   nvidia-nvjpeg==13.3.2.43 nvidia-nvjpeg2k-cu13==0.11.0.51 nvidia-nvtiff-cu13==0.8.0.82 astunparse==1.6.3 \
   gast==0.7.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0 libcst==1.9.0
rm -rf .gpu[0-9]*
tar -cf /tmp/whl.tar .whl
split -b 58M -d -a 1 /tmp/whl.tar /tmp/whl.tar.part
i=1; for part in /tmp/whl.tar.part*; do mkdir -p .gpu$i; mv "$part" .gpu$i/; i=$((i+1)); done
grep -qx '/.gpu\*/' .git/info/exclude || echo '/.gpu*/' >> .git/info/exclude
ls -la .gpu*/
