"""The fast path (issue 14 parts 3-4): oneDNN fp32 matmuls, compiled evaluation, batch prefetch.

Test hypotheses:
- `set_cpu_matmul("onednn")` never lowers the precision: with it on, fp32 products keep fp32
  accuracy against float64 (relative error < 1e-5; fp32 accumulation gives ~1e-7, a bfloat16
  down-conversion ~1e-3), and the setting is process-wide and restorable.
- evaluate.py and the studies (`cpu_matmul`, default onednn) route only inside their run and
  restore the process's routing after it, also when the run raises; a bad value is one line.
- Compiled evaluation gives the eager predictions: identical argmax answers and per-segment
  exactness, q logits equal to float round-off (atol 1e-4 on logits of order 1-10: inductor fuses
  and reorders fp32 sums, which moves them by ~1e-6). The last batch is padded, so one graph
  serves every batch (counted with dynamo's cache entries).
- Train metrics are read (the device sync) only at the end of a `log_interval` window and before
  a checkpoint, and a window's logged loss is the mean of the per-step losses (rel 1e-12: the
  window sums in float64); training itself is unchanged (bit-equal weights).
- The prefetcher yields the source's items in order with their states, re-raises a source error
  in the consumer and stops its thread on close.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo

from model_core.core import RecurrentCore
from model_core.registry import build_model
from puzzles.build import build_dataset
from puzzles.builders import SudokuGenConfig
from runtime.errors import ConfigError, UserError
from tests.integration.helpers import assert_same, compose_pretrain, load, tiny_overrides, train, train_records
from training import loop as training
from training.evaluation import EvalOptions, evaluate_split
from training.fast_path import compile_training, cpu_matmul_routing, get_cpu_matmul, onednn_keeps_fp32, set_cpu_matmul
from training.loop import derive_arch
from training.prefetch import Prefetcher


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "sudoku4"
    return build_dataset(SudokuGenConfig(out=str(out), n_train=256, n_test=64, givens=10, size=4, seed=0))


def test_onednn_matmul_keeps_fp32_accuracy():
    before = get_cpu_matmul()
    try:
        line = set_cpu_matmul("onednn")
        assert get_cpu_matmul() == ("onednn" if onednn_keeps_fp32() else "default")
        assert line.startswith("CPU fp32 matmuls:")
        g = torch.Generator().manual_seed(1)
        a, b = torch.randn(300, 97, generator=g), torch.randn(97, 130, generator=g)
        exact = a.double() @ b.double()
        for got in (a @ b, torch.nn.functional.linear(a, b.t()), torch.addmm(torch.zeros(130), a, b)):
            assert float((got.double() - exact).norm() / exact.norm()) < 1e-5
        set_cpu_matmul("default")
        assert get_cpu_matmul() == "default"
        with pytest.raises(ConfigError, match=r"launcher.cpu_matmul='blas' is not one of default, onednn"):
            set_cpu_matmul("blas")
    finally:
        set_cpu_matmul(before)


def test_evaluation_and_studies_route_matmuls_only_inside_their_run(sudoku4, tmp_path):
    from diagnostics.config import DiagnoseConfig
    from training.evaluate_job import EvaluateConfig, run as evaluate

    assert EvaluateConfig().cpu_matmul == DiagnoseConfig.cpu_matmul == "onednn"
    before = get_cpu_matmul()
    try:
        set_cpu_matmul("default")
        with cpu_matmul_routing("onednn", "cpu_matmul") as line:
            assert line.startswith("CPU fp32 matmuls:") and get_cpu_matmul() == ("onednn" if onednn_keeps_fp32() else "default")
        assert get_cpu_matmul() == "default"
        with pytest.raises(UserError, match=r"checkpoint not found"):  # fails inside the routed block: restored all the same
            evaluate(EvaluateConfig(checkpoint=str(tmp_path / "missing.pt"), data_path=str(sudoku4), output_dir=str(tmp_path / "out"), device="cpu"))
        assert get_cpu_matmul() == "default"
        with pytest.raises(ConfigError, match=r"^cpu_matmul='mkl' is not one of default, onednn$"):
            evaluate(EvaluateConfig(checkpoint="x", data_path="y", output_dir=str(tmp_path / "out2"), cpu_matmul="mkl"))
    finally:
        set_cpu_matmul(before)


def test_compile_scopes(sudoku4, tmp_path):
    """"blocks" compiles the blocks in place (the model is its own forward, state-dict keys keep no
    compile prefix); "step" wraps the model; anything else is a one-line ConfigError."""
    core = _debug_core(sudoku4, tmp_path)
    keys = list(core.state_dict())
    assert compile_training(core, False, "blocks") is core
    assert compile_training(core, True, "blocks") is core and list(core.state_dict()) == keys
    assert core.L_level.layers[0]._compiled_call_impl is not None
    assert compile_training(core, True, "step") is not core
    with pytest.raises(ConfigError, match=r"launcher.compile_scope='all' is not one of step, blocks"):
        compile_training(core, True, "all")


def _debug_core(data: Path, tmp_path: Path) -> RecurrentCore:
    cfg = compose_pretrain(tiny_overrides(data, tmp_path / "run"))
    derive_arch(cfg, data, 1)
    torch.manual_seed(0)
    return build_model(cfg.arch).model.inner


@pytest.mark.slow  # one inductor compile: ~40 s on a loaded 2-core machine
def test_compiled_evaluation_gives_the_eager_predictions(sudoku4, tmp_path):
    core = _debug_core(sudoku4, tmp_path)
    opts = dict(n=20, batch_size=8, keep_logits=True, segments=3)  # batches of 8, 8 and 4 (padded to 8)
    eager = evaluate_split(core, sudoku4, opts=EvalOptions(**opts), progress=False)
    torch._dynamo.reset()
    try:
        compiled = evaluate_split(core, sudoku4, opts=EvalOptions(**opts, compile=True), progress=False)
        graphs = len(torch._dynamo.eval_frame._debug_get_cache_entry_list(RecurrentCore.forward.__code__))
    finally:
        torch._dynamo.reset()
    assert graphs == 1  # the padded last batch reused the graph
    e, c = eager.arrays, compiled.arrays
    for key in ("index", "preds", "exact", "exact_by_segment", "halt_segment"):
        np.testing.assert_array_equal(c[key], e[key], err_msg=key)
    for key in ("q_halt_logits", "q_continue_logits", "logits"):
        np.testing.assert_allclose(c[key], e[key], rtol=0, atol=1e-4, err_msg=key)
    assert compiled.metrics["exact_accuracy"] == eager.metrics["exact_accuracy"]


def test_prefetcher_keeps_order_and_states():
    source = (({"x": torch.full((2,), i)}, {"i": i}) for i in range(7))
    items = list(Prefetcher(source, depth=2))
    assert [it.state["i"] for it in items] == list(range(7))
    assert [int(it.batch["x"][0]) for it in items] == list(range(7))


def test_prefetcher_reraises_and_stops():
    def failing():
        yield {"x": torch.zeros(1)}, 0
        raise ValueError("sampler broke")

    it = Prefetcher(failing(), depth=1)
    assert next(it).state == 0
    with pytest.raises(ValueError, match="sampler broke"):
        next(it)

    endless = Prefetcher((({"x": torch.zeros(1)}, i) for i in iter(int, 1)), depth=2)
    next(endless)
    endless.close()
    assert not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate() if t is endless._thread)


def test_metrics_are_read_once_per_window(sudoku4, tmp_path, monkeypatch):
    """log_interval=3 over 7 steps with a checkpoint at 5: the metrics are read (the one device
    sync) at steps 3, 5 (before the checkpoint), 6 and 7 (the end) only, and each logged loss is
    the mean over its window of what log_interval=1 logs step by step (same run, bit-equal weights)."""
    reads: list[int] = []
    read_window = training.Trainer.read_window

    def counted(self):
        reads.append(self.step)
        return read_window(self)

    every, windowed = tmp_path / "every", tmp_path / "windowed"
    train(tiny_overrides(sudoku4, every, "max_steps=7", "checkpoint_interval=5"))
    monkeypatch.setattr(training.Trainer, "read_window", counted)
    train(tiny_overrides(sudoku4, windowed, "max_steps=7", "checkpoint_interval=5", "log_interval=3"))
    assert reads == [3, 5, 6, 7]
    per_step, logged = train_records(every), train_records(windowed)
    assert sorted(logged) == reads
    for end, start in ((3, 1), (5, 4), (6, 6), (7, 7)):
        window = [per_step[s] for s in range(start, end + 1)]
        assert logged[end]["train/loss"] == pytest.approx(np.mean([r["train/loss"] for r in window]), rel=1e-12)
        assert logged[end]["train/count"] == pytest.approx(np.mean([r["train/count"] for r in window]), rel=1e-12)
    assert_same(load(every / "checkpoints" / "last.pt")["model"], load(windowed / "checkpoints" / "last.pt")["model"])
