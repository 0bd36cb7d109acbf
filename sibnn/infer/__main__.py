"""python -m sibnn.infer export CHECKPOINT --out FILE [--int8] | predict FILE INPUTS... | bench FILE"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sibnn.infer import ExportError, PackedFormatError, PackedModel, export_model, kernels
from sibnn.infer.runtime import median_latency
from sibnn.trial import input_shape, training_data


def _input_shape(model: PackedModel) -> tuple[int, int]:
    channels, size, _ = input_shape(model.config)
    return channels, size


def load_inputs(paths: list[str], model: PackedModel) -> torch.Tensor:
    """Tensors saved with torch.save / numpy (.pt, .npy; already normalised, (C,H,W) or (N,C,H,W)), or image files
    preprocessed like the model's dataset's evaluation pipeline (ImageNet: short side 256/224·size, centre crop)."""
    import numpy as np
    channels, size = _input_shape(model)
    data = training_data(model.config)
    out = []
    for p in paths:
        suffix = Path(p).suffix.lower()
        if suffix in (".pt", ".pth"):
            t = torch.load(p, map_location="cpu", weights_only=True)
        elif suffix == ".npy":
            t = torch.from_numpy(np.load(p))
        else:
            from PIL import Image
            img = Image.open(p).convert("L" if channels == 1 else "RGB")
            if data.imagenet_format:
                short = round(size * 256 / 224)
                w, h = img.size
                img = img.resize((max(short, round(w * short / h)), max(short, round(h * short / w))), Image.BILINEAR)
                w, h = img.size
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            else:
                img = img.resize((size, size), Image.BILINEAR)
            t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
            t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
            t = (t - torch.tensor(data.mean).view(-1, 1, 1)) / torch.tensor(data.std).view(-1, 1, 1)
        t = t.float()
        out.append(t.unsqueeze(0) if t.dim() == 3 else t)
    return torch.cat(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sibnn.infer", description="bit-packed Si-BNN inference on the CPU")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="checkpoint → packed file")
    e.add_argument("checkpoint")
    e.add_argument("--out", required=True)
    e.add_argument("--int8", action="store_true", help="store the full-precision layers as int8 (smaller file)")
    r = sub.add_parser("predict", help="top-k classes for tensors (.pt/.npy) or images")
    r.add_argument("file")
    r.add_argument("inputs", nargs="+")
    r.add_argument("--topk", type=int, default=5)
    r.add_argument("--json", action="store_true")
    b = sub.add_parser("bench", help="latency at batch 1 and throughput at batch 32 on random inputs")
    b.add_argument("file")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--repeats", type=int, default=10)
    b.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    try:
        if args.cmd == "export":
            size = export_model(args.checkpoint, args.out, fp_dtype="int8" if args.int8 else "float32")
            print(f"wrote {args.out}: {size:,} bytes")
            return 0
        model = PackedModel.load(args.file)
        if args.cmd == "predict":
            logits = model(load_inputs(args.inputs, model))
            prob = logits.softmax(1)
            k = min(args.topk, prob.shape[1])
            top = prob.topk(k, 1)
            rows = [{"input": i, "classes": top.indices[i].tolist(), "probs": [round(v, 5) for v in top.values[i].tolist()]}
                    for i in range(len(prob))]
            if args.json:
                print(json.dumps(rows))
            else:
                for r_ in rows:
                    print(f"{r_['input']}: " + ", ".join(f"{c} ({q:.3f})" for c, q in zip(r_["classes"], r_["probs"])))
            return 0
        if args.threads:
            torch.set_num_threads(args.threads)
        c, s = _input_shape(model)
        lat = median_latency(model, torch.randn(1, c, s, s), args.repeats)
        thr = args.batch / median_latency(model, torch.randn(args.batch, c, s, s), max(2, args.repeats // 4))
        fp = model.meta.get("fp_dtype", "float32")
        fp = f"int8 FP layers ({model.int8_compute} convs)" if fp == "int8" else f"{fp} FP layers"
        print(f"{args.file}: {Path(args.file).stat().st_size:,} bytes, backend {kernels.backend()}, {fp}, "
              f"{torch.get_num_threads()} threads: batch 1 {lat * 1e3:.2f} ms, batch {args.batch} {thr:.1f} images/s")
        return 0
    except (ExportError, PackedFormatError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
