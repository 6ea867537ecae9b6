"""The `displacement` study: settling statistics on drift with a known answer, config, bad input,
end-to-end outputs on a fixture whose successes are known by construction, and resume."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diagnostics.adapters.step_map import SubUpdateMap
from diagnostics.adapters.trajectory import late_drift, record_rollout
from diagnostics.config import DiagnoseConfig
from diagnostics.estimators.statistics import separability, settling_cells, settling_counts
from diagnostics.inputs import load_study_inputs
from diagnostics.registry import STUDIES
from diagnostics.registry import run_study
from diagnostics.studies.displacement import DisplacementStudyConfig, sensitivity_sweep, summarise
from runtime.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO / "tests" / "fixtures" / "official" / "trm_mlp"
N, BATCH, SEGMENTS = 12, 6, 5
SOLVED_ROWS = [0, 2, 3, 7, 10]  # rows of the seeded sample whose labels are set to the model's answer


def make_crafted_data(out: Path, segments: int = SEGMENTS) -> Path:
    """A copy of the fixture's data in which the test labels of `SOLVED_ROWS` of the seeded
    sample (n=N, seed 0) are the model's own float32 answer after `segments` segments, computed
    in the study's batches (batch size BATCH): those examples, and only those, succeed."""
    shutil.copytree(FIXTURE / "data", out)
    inputs = load_study_inputs(str(FIXTURE / "run"), str(out), n=N, seed=0)
    labels = np.load(out / "test" / "all__labels.npy")
    for _, rows, batch in inputs.batches(BATCH):
        preds = record_rollout(SubUpdateMap(inputs.core, batch), segments).readouts.preds[:, -1].numpy()
        for r in range(rows.start, rows.stop):
            if r in SOLVED_ROWS:
                labels[inputs.index[r]] = preds[r - rows.start]
    np.save(out / "test" / "all__labels.npy", labels)
    return out


@pytest.fixture(scope="module")
def crafted_data(tmp_path_factory) -> Path:
    return make_crafted_data(tmp_path_factory.mktemp("crafted") / "data")


def study_config(data: Path, **study) -> DiagnoseConfig:
    return DiagnoseConfig(study=DisplacementStudyConfig(**{"segments": SEGMENTS, **study}), checkpoint=str(FIXTURE / "run"), data_path=str(data),
                          n=N, batch_size=BATCH)


# --- estimators with a known answer ----------------------------------------------------------------

def test_settling_cells_by_hand():
    """Test hypothesis: the four cells count the (settled, success) pairs; fractions are of n and
    of the outcome; an empty cell carries 3 / (its outcome count). Hand-counted example."""
    settled = np.array([1, 1, 1, 0, 0, 0, 0, 1], bool)
    success = np.array([1, 1, 0, 0, 0, 0, 0, 1], bool)
    cells = settling_cells(settled, success)
    assert {c: v["count"] for c, v in cells.items()} == {"A": 3, "B": 1, "C": 0, "D": 4}
    assert cells["B"]["fraction"] == 1 / 8 and cells["B"]["fraction_of_outcome"] == 1 / 5
    assert cells["C"]["upper95"] == 1.0 and cells["A"]["upper95"] is None  # 3/3 for 0 of 3 successes
    many = settling_cells(np.ones(400, bool), np.arange(400) < 100)  # no unsettled example
    assert many["C"]["upper95"] == pytest.approx(0.03) and many["D"]["upper95"] == pytest.approx(0.01)
    assert settling_counts(settled, success) == {"A": 3, "B": 1, "C": 0, "D": 4}


def test_separability_known_values():
    """Test hypothesis: Otsu's eta = w0 w1 (mu0 - mu1)^2 / var. Two point masses: 1. The integers
    0..N-1 split in half: (N^2 / 16) / ((N^2 - 1) / 12) = 0.75 N^2 / (N^2 - 1) exactly. A
    Gaussian split at its mean: 2/pi; 1e5 draws, sampling error ~3e-3, so 0.01."""
    assert separability(np.r_[np.zeros(30), np.ones(70)], 0.5) == pytest.approx(1.0)
    assert separability(np.arange(100.0), 49.5) == pytest.approx(0.75 * 100**2 / (100**2 - 1), rel=1e-12)
    assert separability(np.random.default_rng(0).normal(size=100_000), 0.0) == pytest.approx(2 / math.pi, abs=0.01)
    assert math.isnan(separability(np.arange(5.0), 10.0)) and math.isnan(separability(np.arange(5.0), math.nan))


def synthetic_results(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """100 successes with d_late ~ 10^N(-6, 0.2), 40 failures ~ 10^N(0, 0.2) of which 3 settle at
    ~1e-6 as well, and 2 successes whose d_late is exactly 0."""
    log_d = np.concatenate([rng.normal(-6, 0.2, 100), rng.normal(0, 0.2, 37), rng.normal(-6, 0.2, 3)])
    d_late = 10**log_d
    d_late[:2] = 0.0
    success = np.arange(140) < 100
    return {"d_late": d_late, "success": success, "exact": success}


def test_summary_of_bimodal_drift_has_the_known_cells():
    """Test hypothesis: with log10 d_late in two clusters 6 decades apart, Otsu's tau lies in the
    gap (the between-class variance of the gap split, ~1.4e5, dwarfs that of splitting off the two
    floored zeros, ~9e3), so A = 100 settled successes, B = the 3 settled failures, C = 0 with
    the rule-of-three bound 3/100, D = 37. AUC(-d_late) equals the pairwise count P(d_success <
    d_failure) + ties/2; the threshold-free share is that of successes below the smallest failure.
    Zeros count as drift_floor (1e-10), not -inf."""
    results = synthetic_results(np.random.default_rng(0))
    study = DisplacementStudyConfig()
    s = summarise(results, {"n": 140}, study, seed=0)
    log_d = np.log10(np.maximum(results["d_late"], 1e-10))
    assert log_d[log_d < -3].max() <= s["log10_tau"] < log_d[log_d > -3].min()
    assert s["threshold_method"] == "otsu" and s["n_at_floor"] == 2 and s["separability"] > 0.9
    assert {c: v["count"] for c, v in s["cells"].items()} == {"A": 100, "B": 3, "C": 0, "D": 37}
    assert s["cells"]["C"]["upper95"] == pytest.approx(0.03) and s["cells"]["B"]["fraction_of_outcome"] == pytest.approx(3 / 40)
    d, ok = results["d_late"], results["success"]
    pairs = [(1.0 if a < b else 0.5 if a == b else 0.0) for a in d[ok] for b in d[~ok]]
    assert s["auc_neg_d_late"] == pytest.approx(np.mean(pairs), abs=1e-12)
    assert s["auc_neg_d_late_ci95"][0] <= s["auc_neg_d_late"] <= s["auc_neg_d_late_ci95"][1]
    assert s["min_failure_d_late"] == d[~ok].min() and s["success_below_min_failure"] == pytest.approx((d[ok] < d[~ok].min()).mean())
    fixed = summarise(results, {"n": 140}, DisplacementStudyConfig(threshold=1e-3), seed=0)
    assert fixed["threshold_method"] == "fixed" and fixed["tau"] == pytest.approx(1e-3) and fixed["cells"]["A"]["count"] == 100


def test_sensitivity_sweep_counts_at_pooled_percentiles():
    """Test hypothesis: at the p-th pooled percentile of 0..99 (linear interpolation: t = 0.99 p)
    the settled set is {log d <= t}; with successes = the even values the cells are counted by
    hand."""
    log_d = np.arange(100.0)
    success = log_d % 2 == 0
    rows = sensitivity_sweep(log_d, success, [10.0, 50.0])
    assert [r["log10_tau"] for r in rows] == pytest.approx([9.9, 49.5])
    assert {k: rows[0][k] for k in "ABCD"} == {"A": 5, "B": 5, "C": 45, "D": 45}  # 0..9 settled
    assert {k: rows[1][k] for k in "ABCD"} == {"A": 25, "B": 25, "C": 25, "D": 25}  # 0..49 settled
    assert late_drift(np.array([[5.0, 1.0, 2.0, 3.0]]), 2).tolist() == [2.5]


# --- configuration and bad input ----------------------------------------------------------------------

def typed_config(*overrides: str) -> DiagnoseConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("diagnose", overrides=["study=displacement", *overrides]))


def test_config_composes_typed_with_defaults_and_rejects_mistyped_keys():
    from hydra.errors import ConfigCompositionException

    cfg = typed_config("study.late_window=3")
    assert isinstance(cfg.study, DisplacementStudyConfig)
    default = DisplacementStudyConfig(late_window=3)
    assert cfg.study == default  # the YAML repeats the dataclass defaults exactly
    assert cfg.study.percentiles == [5.0 * i for i in range(1, 20)]
    with pytest.raises(ConfigCompositionException, match="study.late_windw"):
        typed_config("study.late_windw=3")


def test_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="study=displacement needs checkpoint=PATH and data_path=DIR"):
        run_study(DiagnoseConfig(study=DisplacementStudyConfig()), tmp_path)
    with pytest.raises(ConfigError, match=r"study.late_window=6 must be in \[1, 5\]"):
        run_study(study_config(FIXTURE / "data", late_window=6), tmp_path)
    with pytest.raises(ConfigError, match="does not apply to sudoku data \\(study.success\\)"):
        run_study(study_config(FIXTURE / "data", success="valid_path"), tmp_path)
    with pytest.raises(ConfigError, match="study.success='close' is not one of"):
        run_study(study_config(FIXTURE / "data", success="close"), tmp_path)


def test_checkpoint_that_does_not_fit_the_data_is_one_line_exit_2(tmp_path):
    """A dataset whose vocabulary differs from the model's is refused before anything runs, as
    one `error: ...` line and exit status 2 from the command line."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE / "data", data)
    meta = json.loads((data / "test" / "dataset.json").read_text())
    (data / "test" / "dataset.json").write_text(json.dumps({**meta, "vocab_size": 12}))
    with pytest.raises(DatasetError, match="has vocab_size 12 but the model was built for 11"):
        run_study(study_config(data), tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "diagnostics", "study=displacement", f"checkpoint={FIXTURE / 'run'}", f"data_path={data}",
                           "n=4", f"hydra.run.dir={tmp_path / 'cli'}"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: dataset") and "vocab_size 12" in proc.stderr


# --- end to end --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(crafted_data, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], dict]:
    out = tmp_path_factory.mktemp("displacement")
    assert run_study(study_config(crafted_data), out) == 0
    with np.load(out / "results.npz") as z:
        results = {k: z[k] for k in z.files}
    return out, results, json.loads((out / "summary.json").read_text())


def test_outputs_on_the_fixture(finished):
    """Outputs exist with the documented shapes; success is exactly the crafted set; d_late and
    the 2x2 counts follow from results.npz; the four cells add up to n."""
    out, r, s = finished
    shapes = {"index": (N,), "exact": (N,), "success": (N,), "drift_zH": (N, SEGMENTS), "drift_zL": (N, SEGMENTS), "d_late": (N,),
              "exact_by_segment": (N, SEGMENTS), "success_by_segment": (N, SEGMENTS), "q_halt": (N, SEGMENTS), "q_continue": (N, SEGMENTS),
              "givens": (N,)}
    assert {k: r[k].shape for k in shapes} == shapes
    assert np.flatnonzero(r["success"]).tolist() == SOLVED_ROWS and np.array_equal(r["success"], r["exact"])
    assert np.array_equal(r["success"], r["success_by_segment"][:, -1]) and (r["drift_zH"] > 0).all()
    np.testing.assert_array_equal(r["d_late"], r["drift_zH"][:, -4:].mean(1))
    settled = np.log10(np.maximum(r["d_late"], s["drift_floor"])) <= s["log10_tau"]
    counts = {c: s["cells"][c]["count"] for c in "ABCD"}
    assert sum(counts.values()) == N
    assert counts == {"A": int((settled & r["success"]).sum()), "B": int((settled & ~r["success"]).sum()),
                      "C": int((~settled & r["success"]).sum()), "D": int((~settled & ~r["success"]).sum())}
    assert s["accuracy"] == pytest.approx(len(SOLVED_ROWS) / N) and s["n"] == N and s["segments"] == SEGMENTS
    assert len(s["sweep"]) == 19 and all(sum(row[c] for c in "ABCD") == N for row in s["sweep"])
    assert s["auc_neg_d_late"] is not None and len(s["checkpoint_sha256"]) == 64
    report = (out / "report.md").read_text()
    assert "| D | unsettled & wrong |" in report and "## Threshold sensitivity" in report
    for name in ("drift_curves.png", "d_late_hist.png", "cells.png", "trajectories_pca.png", "manifest.json", "metrics.jsonl"):
        assert (out / name).stat().st_size > 100
    assert not math.isnan(s["tau"])


def test_interrupted_study_resumes_with_identical_results(crafted_data, finished, tmp_path, monkeypatch):
    """A run stopped after its first batch (an exception in the second), then restarted, computes
    only the missing batch and gives results identical to the uninterrupted run; so does a rerun
    after a shard is deleted."""
    _, reference, _ = finished
    calls = []
    original = STUDIES["displacement"]

    def stop_at_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original.batch(*args, **kwargs)

    monkeypatch.setitem(STUDIES, "displacement", dataclasses.replace(original, batch=stop_at_second_batch))
    with pytest.raises(KeyboardInterrupt):
        run_study(study_config(crafted_data), tmp_path)
    assert (tmp_path / "shards" / "batch_000000.npz").exists() and not (tmp_path / "results.npz").exists()
    assert run_study(study_config(crafted_data), tmp_path) == 0 and len(calls) == 3  # only batch 1 recomputed
    monkeypatch.setitem(STUDIES, "displacement", original)
    (tmp_path / "shards" / "batch_000000.npz").unlink()
    assert run_study(study_config(crafted_data), tmp_path) == 0
    with np.load(tmp_path / "results.npz") as z:
        assert set(z.files) == set(reference) and all(np.array_equal(z[k], reference[k]) for k in reference)


def test_band_entry_first_segment_and_staying():
    """Rows: enters at 2 and stays; enters at 1, leaves at 3; never enters; enters at the last."""
    from diagnostics.studies.displacement import band_entry

    log_drift = np.array([[0.0, -5, -6, -7], [-5, -5, 0, -6], [0, 0, 0, 0], [0, 0, 0, -9]])
    first, stays = band_entry(log_drift, -4.0)
    assert first.tolist() == [2, 1, -1, 4] and stays.tolist() == [True, False, False, True]
    assert band_entry(log_drift, float("nan"))[0].tolist() == [-1] * 4


def test_d_late_and_auc_match_a_direct_rollout_of_the_official_checkpoint(crafted_data, finished):
    """The fixture was trained by the official TRM code. Independently of the study's step map,
    run the checkpoint's own segment forward (the inner model the ACT wrapper calls once per
    segment; the wrapper itself would reset the carry after halt_max_steps = 4 < S = 5) for S
    segments from the reset carry, take drift_zH(t) = ||z_H(t) - z_H(t-1)||_2 over the whole (P+L) x D tensor and
    d_late = its mean over the last 4 segments (analysis §3): the study's per-example d_late and
    its AUC(-d_late -> success) agree."""
    import torch

    from diagnostics.estimators.statistics import auc

    _, r, s = finished
    inputs = load_study_inputs(str(FIXTURE / "run"), str(crafted_data), n=N, seed=0)
    act = inputs.checkpoint.model.model
    act.eval()
    drift, preds = [], None
    with torch.no_grad():
        for _, _, batch in inputs.batches(BATCH):
            carry = act.inner.reset_carry(torch.ones(len(batch["inputs"]), dtype=torch.bool), act.initial_carry(batch).inner)
            z_prev = carry.z_H.double()
            rows = []
            for _ in range(SEGMENTS):
                carry, out = act.inner(carry, batch)
                z = carry.z_H.double()
                rows.append((z - z_prev).flatten(1).norm(dim=1))
                z_prev = z
            drift.append(torch.stack(rows, 1))
            preds = out.logits.argmax(-1) if preds is None else torch.cat([preds, out.logits.argmax(-1)])
    d_late = torch.cat(drift)[:, -4:].mean(1).numpy()
    np.testing.assert_allclose(r["d_late"], d_late, rtol=1e-5)
    success = ((preds.numpy() == inputs.labels) | (inputs.labels == -100)).all(1)  # ignored cells (label 0 = pad) do not count
    assert np.array_equal(success, r["success"])
    assert s["auc_neg_d_late"] == pytest.approx(auc(-d_late, success), abs=1e-12)


def test_pca_of_trajectories_on_a_known_plane():
    """States on a plane spanned by two orthogonal directions with variances 9 and 1 (and no
    other component): PC1 and PC2 explain 90% and 10%, and the coordinates reproduce the
    centred in-plane positions up to sign."""
    from diagnostics.studies.displacement import pca_trajectories

    rng = np.random.default_rng(2)
    u, v = np.linalg.qr(rng.normal(size=(12, 2)))[0].T
    a = rng.normal(size=(3, 40))
    b = rng.normal(size=(3, 40))
    a = (a - a.mean()) / a.std() * 3
    b = (b - b.mean()) / b.std()
    b -= a * (a * b).sum() / (a * a).sum()  # exactly uncorrelated with a
    b /= b.std()
    states = (a[..., None] * u + b[..., None] * v).reshape(3, 40, 3, 4)
    coords, ratio = pca_trajectories(states)
    assert ratio == pytest.approx([0.9, 0.1], abs=1e-9) and coords.shape == (3, 40, 2)
    np.testing.assert_allclose(np.abs(coords[..., 0]), np.abs(a), atol=1e-9)
    np.testing.assert_allclose(np.abs(coords[..., 1]), np.abs(b), atol=1e-9)


def test_labels_of_a_bf16_checkpoint_are_compared_with_its_native_evaluation(crafted_data, tmp_path):
    """The same weights declared as trained in bfloat16: the study labels success in float32 and
    says so, and counts the examples whose label differs from a bf16 evaluation of the same sample
    (evaluate.py's default for such a checkpoint), computed here with evaluate_split."""
    from training.evaluation import EvalOptions, evaluate_split

    from model_core.checkpoint import load_checkpoint

    run_dir = Path(shutil.copytree(FIXTURE / "run", tmp_path / "bf16run"))
    config = (run_dir / "all_config.yaml").read_text().replace("forward_dtype: float32", "forward_dtype: bfloat16")
    (run_dir / "all_config.yaml").write_text(config)
    cfg = dataclasses.replace(study_config(crafted_data), checkpoint=str(run_dir))
    out = tmp_path / "out"
    assert run_study(cfg, out) == 0
    s = json.loads((out / "summary.json").read_text())
    with np.load(out / "results.npz") as z:
        exact32 = z["exact"].astype(bool)
    loaded = load_checkpoint(run_dir, seq_len=81)
    assert loaded.native_dtype == loaded.arch.forward_dtype == "bfloat16"
    native = evaluate_split(loaded.model, crafted_data, opts=EvalOptions(n=N, seed=0, segments=SEGMENTS, batch_size=BATCH, keep_logits=False),
                            progress=False)
    assert (s["success_labelled_in"], s["native_dtype"]) == ("float32", "bfloat16")
    assert s["n_label_disagree_native"] == int((native.arrays["exact"] != exact32).sum())
    assert "| n_label_disagree_native |" in (out / "report.md").read_text()
