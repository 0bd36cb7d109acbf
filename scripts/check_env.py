"""Fail the install early when the environment is not what the project was tested with.

A CPU machine must carry the CPU build of torch: an unpinned dependency can silently pull a multi-GB CUDA build.
Set SIBNN_ALLOW_CUDA_TORCH=1 on GPU machines where the CUDA build is wanted.
"""
import os
import sys

import torch

if not torch.__version__.endswith("+cpu") and os.environ.get("SIBNN_ALLOW_CUDA_TORCH") != "1":
    sys.exit(
        f"torch {torch.__version__} is not the CPU build; on a CPU machine install it with "
        "`pip install torch==2.13.0` before the project (set SIBNN_ALLOW_CUDA_TORCH=1 on a GPU machine)"
    )
print(f"torch {torch.__version__} ok")
