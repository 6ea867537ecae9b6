"""The GPU checks of benchmarks/gpu_check.sh, one small entry per check, each printing one line.

    python benchmarks/gpu_check.py CHECK [--device cuda|cpu] [--small]

Checks (issue 14 part 6):
    parity        fp32 and bf16 forward of the official fixtures (tests/fixtures/official) against
                  the official predictions: fp32 identical argmax and |logit diff| <= 1e-4; bf16
                  argmax agreement >= 98% (what tests/model_core/test_checkpoint.py asks on CPU)
    compiled_aug  a compiled training run with trajectory augmentation (micro TRM, 4x4 Sudoku,
                  bf16 on CUDA): dynamo graphs, graph breaks and recompiles after the warm-up
                  step (all must stay 0 new), and the logged effective perturbation
    nccl_init     a 1-process torchrun-style group (nccl on CUDA, gloo on CPU): init time, one
                  all-reduce on the device, one object gather through the CPU group
    recipe_step   tokens/s of one training step of the Sudoku recipe (trm_mlp: hidden 512,
                  H_cycles 3, L_cycles 6, bf16 on CUDA, per-rank batch 384 of the 2-GPU recipe):
                  forward + backward + AdamATan2, median of timed steps after warm-up
    eval          evaluation throughput (examples/s, 16 segments per example) of the same model,
                  eager and compiled

`--backend eager` swaps torch.compile's backend (dynamo still traces, counts graphs and breaks).
`--small` shrinks the models and batches so every check also runs on a CPU in seconds (what the
tests run); the figures then say nothing about a GPU. Exit status 0 when the check passed, 1 when
it failed (the line starts with FAIL).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import archs  # noqa: E402,F401  (registers trm and hrm)
from model_core.checkpoint import load_checkpoint  # noqa: E402
from model_core.registry import build_model  # noqa: E402
from training.evaluation import run_segments  # noqa: E402
from training.fast_path import compile_model  # noqa: E402
from training.optim import AdamATan2  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "official"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_parity(device: torch.device, small: bool) -> tuple[bool, str]:
    parts, ok = [], True
    for name in ("trm_mlp", "trm_att", "hrm"):
        root = FIXTURES / name
        expected = np.load(root / "expected.npz")
        inputs = torch.from_numpy(np.load(root / "data/test/all__inputs.npy").astype(np.int32)).to(device)
        labels = torch.from_numpy(np.load(root / "data/test/all__labels.npy").astype(np.int64)).to(device)
        batch = {"inputs": inputs, "labels": labels, "puzzle_identifiers": torch.zeros(len(inputs), dtype=torch.int32, device=device)}
        line = name
        for dtype in ("float32", "bfloat16"):
            loaded = load_checkpoint(root / "run/step_100", seq_len=81, overrides={"forward_dtype": dtype}, device=device)
            out = run_segments(loaded.model.model.inner, batch, loaded.arch.halt_max_steps, act_halting=False)
            preds = out["logits"].argmax(-1).cpu().numpy()
            agree = float((preds == expected["preds"]).mean())
            if dtype == "float32":
                dlogit = float(np.abs(out["logits"].cpu().numpy() - expected["logits"]).max())
                dq = float(np.abs(out["q_halt_logits"].cpu().numpy() - expected["q_halt_logits"]).max())
                good = agree == 1.0 and dlogit <= 1e-4 and dq <= 1e-4
                line += f" fp32 argmax {agree:.1%} max|dlogit| {dlogit:.1e} max|dq| {dq:.1e}"
            else:
                good = agree >= 0.98
                line += f", bf16 argmax {agree:.1%}"
            ok &= good
        parts.append(line)
    return ok, "; ".join(parts)


def check_compiled_aug(device: torch.device, small: bool) -> tuple[bool, str]:
    import torch._dynamo  # noqa: PLC0415
    from hydra import compose, initialize_config_dir  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415
    from torch._dynamo.utils import counters  # noqa: PLC0415

    from model_core.losses import ACTLossHead  # noqa: PLC0415
    from puzzles.build import build_dataset  # noqa: PLC0415
    from puzzles.builders import SudokuGenConfig  # noqa: PLC0415
    from training import loop  # noqa: PLC0415
    from training.config import register_configs  # noqa: PLC0415

    steps = 10
    snaps: list[tuple[int, int, int]] = []
    original = loop.Trainer.train_step

    def counted(self, batch):
        out = original(self, batch)
        entries = len(torch._dynamo.eval_frame._debug_get_cache_entry_list(ACTLossHead.forward.__code__))
        snaps.append((counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()), entries))
        return out

    loop.Trainer.train_step = counted
    torch._dynamo.reset()
    counters.clear()
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            data = build_dataset(SudokuGenConfig(out=f"{tmp}/sudoku4", n_train=256, n_test=64, givens=10, size=4, seed=0))
            register_configs()
            overrides = [
                "arch=trm_debug", f"arch.forward_dtype={dtype}", "data=path", f"data.path={data}", "global_batch_size=32",
                "logger=none", "progress=false", f"launcher.device={device.type}", "launcher.compile=true", f"max_steps={steps}",
                "augment=multi_perturbed_ce", "augment.sigma=0.05", "augment.clean_warmup_steps=2", "log_interval=5", f"run_dir={tmp}/run",
            ]
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                cfg = OmegaConf.to_object(compose("pretrain", overrides=overrides))
            t0 = time.perf_counter()
            loop.run(cfg)
            seconds = time.perf_counter() - t0
            sigmas = [r["train/aug_effective_sigma"] for r in map(json.loads, (Path(tmp) / "run/metrics.jsonl").read_text().splitlines())
                      if "train/aug_effective_sigma" in r]
    finally:
        loop.Trainer.train_step = original
        torch._dynamo.reset()
    new_graphs, new_breaks, new_entries = (snaps[-1][i] - snaps[0][i] for i in range(3))
    ok = len(snaps) == steps and new_graphs == new_breaks == new_entries == 0 and snaps[0][1] == 0
    sigma = f"{sigmas[-1]:.3f}" if sigmas else "n/a"
    return ok, (f"{steps} steps {dtype} in {seconds:.0f} s; warm-up: {snaps[0][0]} graph(s), {snaps[0][1]} break(s); after it: "
                f"{new_graphs} new graphs, {new_breaks} breaks, {new_entries} recompiles; effective sigma / configured {sigma}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_nccl_init(device: torch.device, small: bool) -> tuple[bool, str]:
    from runtime import dist as rdist  # noqa: PLC0415

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    t0 = time.perf_counter()
    info = rdist.init_distributed(device, 2.0)
    try:
        init_s = time.perf_counter() - t0
        backend = torch.distributed.get_backend()
        x = torch.ones(1024, device=info.device)
        rdist.all_reduce_sum_([x])
        sync(info.device)
        gathered = rdist.gather_object({"rank": info.rank})
        ok = float(x[0]) == 1.0 and gathered == [{"rank": 0}]
    finally:
        rdist.cleanup()
    return ok, f"backend {backend} on {info.device}: init {init_s:.2f} s, device all-reduce and CPU-group gather OK" if ok else "collective results wrong"


def recipe_model(device: torch.device, small: bool, batch: int):
    """The Sudoku recipe's TRM-MLP (conf/arch/trm_mlp.yaml) built for seq_len 81, vocab 11."""
    from hydra import compose, initialize_config_dir  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415

    from training.config import register_configs  # noqa: PLC0415

    register_configs()
    overrides = ["arch=trm_tiny" if small else "arch=trm_mlp", f"arch.forward_dtype={'bfloat16' if device.type == 'cuda' else 'float32'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("pretrain", overrides=overrides))
    cfg.arch.derive_from_data(vocab_size=11, seq_len=81, num_puzzle_identifiers=1, batch_size=batch)
    torch.manual_seed(0)
    return build_model(cfg.arch).to(device), cfg.arch


def random_batch(batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"inputs": torch.randint(1, 11, (batch, 81), generator=g, dtype=torch.int32).to(device),
            "labels": torch.randint(1, 11, (batch, 81), generator=g).to(device),
            "puzzle_identifiers": torch.zeros(batch, dtype=torch.int32, device=device)}


def check_recipe_step(device: torch.device, small: bool) -> tuple[bool, str]:
    batch = 16 if small else 384
    model, arch = recipe_model(device, small, batch)
    model.train()
    optimizer = AdamATan2(model.parameters(), lr=1e-4)
    data = random_batch(batch, device)
    carry = model.initial_carry(data)
    times = []
    for i in range(2 + (3 if small else 8)):
        sync(device)
        t0 = time.perf_counter()
        carry, loss, _, _, _ = model(carry, data)
        (loss / batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= 2:  # the first two steps warm up kernels and allocator
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    ok = bool(torch.isfinite(loss))
    return ok, (f"{arch.name} hidden {arch.hidden_size} H{arch.H_cycles}xL{arch.L_cycles} {arch.forward_dtype} batch {batch}: "
                f"{step_s * 1e3:.0f} ms/step, {batch * 81 / step_s:,.0f} tokens/s ({optimizer.describe_path()})")


def check_eval(device: torch.device, small: bool) -> tuple[bool, str]:
    batch, segments = (16, 2) if small else (512, 16)
    model, arch = recipe_model(device, small, batch)
    core = model.model.inner.eval()
    data = random_batch(batch, device)
    rates, answers = {}, {}
    for label, forward in (("eager", core), ("compiled", compile_model(core))):
        run_segments(forward, data, 1, act_halting=False)  # warm-up (compilation)
        sync(device)
        t0 = time.perf_counter()
        out = run_segments(forward, data, segments, act_halting=False)
        sync(device)
        rates[label] = batch / (time.perf_counter() - t0)
        answers[label] = out["logits"].argmax(-1)
    agree = float((answers["eager"] == answers["compiled"]).float().mean())
    ok = agree >= (0.999 if arch.forward_dtype == "float32" else 0.98)
    return ok, (f"{segments} segments, batch {batch}: eager {rates['eager']:,.1f} examples/s, compiled {rates['compiled']:,.1f} "
                f"({rates['compiled'] / rates['eager']:.2f}x), argmax agreement {agree:.2%}")


CHECKS = {"parity": check_parity, "compiled_aug": check_compiled_aug, "nccl_init": check_nccl_init,
          "recipe_step": check_recipe_step, "eval": check_eval}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=list(CHECKS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="CPU-sized models and batches (the tests)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (tests: eager, which still counts graphs)")
    args = parser.parse_args(argv)
    if args.backend != "inductor":
        compile_ = torch.compile
        torch.compile = lambda model, **kw: compile_(model, **{**kw, "backend": args.backend, "options": None})
    device = torch.device(args.device)
    t0 = time.perf_counter()
    try:
        ok, line = CHECKS[args.check](device, args.small)
    except Exception as e:  # noqa: BLE001 (one line per check, whatever broke)
        ok, line = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    print(f"{'OK  ' if ok else 'FAIL'} {args.check:<12} [{device.type}, {time.perf_counter() - t0:.0f} s] {line}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
