"""One ACT segment forward + backward for the official Sudoku recipe shapes, eager and compiled.

    OMP_NUM_THREADS=2 python benchmarks/bench_segment.py [--batch 32] [--repeats 3] [--no-compile]

TRM-MLP and TRM-att, hidden 512, H_cycles 3, L_cycles 6, 2 layers, float32 on CPU (bfloat16 and
CUDA with --device cuda --dtype bfloat16). Prints seconds per training step (official loss head,
one segment, backward) and per inference segment (no grad). Compare with
the official implementation's figures in the project notes (1.73 s train / 0.88 s inference at
batch 8 on the reference 2-core CPU).
"""
from __future__ import annotations

import argparse
import time

import torch

import archs  # noqa: F401  (registers trm and hrm)
from model_core.registry import build_model
from trm.config import TRMConfig


def make(mlp_t: bool, batch: int, dtype: str, device: str):
    cfg = TRMConfig(mlp_t=mlp_t, pos_encodings="none" if mlp_t else "rope", forward_dtype=dtype)
    cfg.derive_from_data(vocab_size=11, seq_len=81, num_puzzle_identifiers=1, batch_size=batch)
    model = build_model(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    data = {
        "inputs": torch.randint(1, 11, (batch, 81), generator=g, dtype=torch.int32).to(device),
        "labels": torch.randint(2, 11, (batch, 81), generator=g, dtype=torch.int32).to(device),
        "puzzle_identifiers": torch.zeros(batch, dtype=torch.int32, device=device),
    }
    return model, data


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up (and compilation)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, dtype {args.dtype}, batch {args.batch}")
    for mlp_t in (True, False):
        name = "TRM-MLP" if mlp_t else "TRM-att"
        for compiled in (False,) if args.no_compile else (False, True):
            model, data = make(mlp_t, args.batch, args.dtype, args.device)
            model.train()
            fwd = torch.compile(model) if compiled else model
            carry = model.initial_carry(data)

            def train_step():
                nonlocal carry
                carry, loss, *_ = fwd(carry, data)
                (loss / args.batch).backward()
                model.zero_grad(set_to_none=True)

            t0 = time.perf_counter()
            step_s = timed(train_step, args.repeats, args.device)
            total = time.perf_counter() - t0
            inner = model.model.inner.eval()
            seg = torch.compile(inner) if compiled else inner
            c = inner.initial_carry(args.batch, torch.device(args.device))

            def infer():
                with torch.no_grad():
                    seg(c, data)

            inf_s = timed(infer, args.repeats, args.device)
            tag = "compiled" if compiled else "eager"
            print(f"{name:8s} {tag:9s} train step (1 segment fwd+bwd) {step_s:7.3f} s   inference segment {inf_s:7.3f} s   (first call incl. warm-up {total:6.1f} s)")


if __name__ == "__main__":
    main()
