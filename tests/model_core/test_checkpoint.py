"""Checkpoint loading: official files give the official predictions; bad files give one clear line."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

from model_core.checkpoint import export_official, load_checkpoint, normalize_keys
from runtime.errors import CheckpointError
from training.evaluation import run_segments


def _predict(loaded, root, segments=None):
    inputs = torch.from_numpy(np.load(root / "data/test/all__inputs.npy").astype(np.int32))
    labels = torch.from_numpy(np.load(root / "data/test/all__labels.npy").astype(np.int64))
    batch = {"inputs": inputs, "labels": labels, "puzzle_identifiers": torch.zeros(len(inputs), dtype=torch.int32)}
    return run_segments(loaded.model.model.inner, batch, segments or loaded.arch.halt_max_steps, act_halting=False)


def test_official_checkpoint_reproduces_official_predictions(official_fixture):
    """Same float32 operations as the official model: identical argmax, logits and q within 1e-4."""
    loaded = load_checkpoint(official_fixture / "run/step_100", seq_len=81)
    expected = np.load(official_fixture / "expected.npz")
    out = _predict(loaded, official_fixture)
    assert loaded.kind == "official" and loaded.step == 100
    np.testing.assert_array_equal(out["logits"].argmax(-1).numpy(), expected["preds"])
    np.testing.assert_allclose(out["logits"].numpy(), expected["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["q_halt_logits"].numpy(), expected["q_halt_logits"], atol=1e-4, rtol=0)


def test_run_directory_resolves_to_newest_step(official_fixture, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(official_fixture / "run", run)
    shutil.copy(run / "step_100", run / "step_20")
    assert load_checkpoint(run, seq_len=81).path.name == "step_100"


def test_bfloat16_forward_agrees_with_float32_on_most_cells(official_fixture):
    """bf16 activations (the official training dtype) change logits at the ~1e-2 level only."""
    fp32 = _predict(load_checkpoint(official_fixture / "run/step_100", seq_len=81), official_fixture)
    bf16_loaded = load_checkpoint(official_fixture / "run/step_100", seq_len=81, overrides={"forward_dtype": "bfloat16"})
    assert bf16_loaded.model.model.inner.H_init.dtype == torch.bfloat16
    bf16 = _predict(bf16_loaded, official_fixture)
    agree = (bf16["logits"].argmax(-1) == fp32["logits"].argmax(-1)).float().mean().item()
    assert agree >= 0.98


def test_export_official_round_trip(official_fixture, tmp_path):
    loaded = load_checkpoint(official_fixture / "run/step_100", seq_len=81)
    path = export_official(loaded.model.model, loaded.arch, tmp_path / "export", step=7)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("_orig_mod.model.inner.") for k in raw)
    cfg = yaml.safe_load((tmp_path / "export/all_config.yaml").read_text())
    assert cfg["arch"]["name"] == loaded.extra["all_config"]["arch"]["name"]
    again = load_checkpoint(path, seq_len=81)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k


def test_prefixes_are_stripped():
    t = torch.zeros(1)
    assert list(normalize_keys({"_orig_mod.model.inner.a": t, "model.inner.b": t, "inner.c": t})) == ["inner.a", "inner.b", "inner.c"]


# --- bad input: one readable message each ----------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope"):
        load_checkpoint(tmp_path / "nope")


def test_truncated_file(official_fixture, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(official_fixture / "run", run)
    data = (run / "step_100").read_bytes()
    (run / "step_100").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"step_100 is not a readable torch checkpoint \(truncated or corrupt\?\)"):
        load_checkpoint(run / "step_100", seq_len=81)


def test_non_checkpoint_file(tmp_path):
    (tmp_path / "step_1").write_text("hello, I am a text file\n")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "step_1")


def test_missing_all_config(official_fixture, tmp_path):
    shutil.copy(official_fixture / "run/step_100", tmp_path / "step_100")
    with pytest.raises(CheckpointError, match="needs all_config.yaml beside it"):
        load_checkpoint(tmp_path / "step_100", seq_len=81)


@pytest.mark.parametrize("change,pattern", [
    ({"hidden_size": 128, "num_heads": 4}, r"does not fit arch .* shape mismatches"),
    ({"mlp_t": False, "pos_encodings": "rope"}, r"does not fit arch trm .*missing 4 keys: .*self_attn.*unexpected 4 keys: .*mlp_t"),
    ({"L_layers": 3}, r"missing 4 keys: inner.L_level.layers.2"),
])
def test_config_that_does_not_fit_the_weights(tmp_path, change, pattern):
    from tests.conftest import OFFICIAL_FIXTURES

    run = tmp_path / "run"
    shutil.copytree(OFFICIAL_FIXTURES / "trm_mlp/run", run)
    cfg = yaml.safe_load((run / "all_config.yaml").read_text())
    cfg["arch"].update(change)
    (run / "all_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(run / "step_100", seq_len=81)


def test_checkpoint_of_other_architecture(tmp_path):
    """An HRM file with a TRM config: named keys (H_level) are reported as unexpected."""
    from tests.conftest import OFFICIAL_FIXTURES

    run = tmp_path / "run"
    shutil.copytree(OFFICIAL_FIXTURES / "hrm/run", run)
    shutil.copy(OFFICIAL_FIXTURES / "trm_att/run/all_config.yaml", run / "all_config.yaml")
    with pytest.raises(CheckpointError, match=r"unexpected 8 keys: inner.H_level"):
        load_checkpoint(run / "step_100", seq_len=81)


def test_seq_len_unknown_without_data(official_fixture):
    if official_fixture.name == "trm_mlp":
        assert load_checkpoint(official_fixture / "run/step_100").arch.seq_len == 81  # read off mlp_t shapes
    else:
        with pytest.raises(CheckpointError, match="cannot tell the sequence length"):
            load_checkpoint(official_fixture / "run/step_100")


def test_non_finite_weights_are_refused_unless_allowed(official_fixture, tmp_path):
    """One NaN in one tensor: loading names that tensor; the opt-in loads it for inspection."""
    run = tmp_path / "run"
    shutil.copytree(official_fixture / "run", run)
    state = torch.load(run / "step_100", map_location="cpu", weights_only=True)
    key = next(k for k, v in state.items() if k.endswith("q_head.weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[3] = float("nan")
    torch.save(state, run / "step_100")
    short = normalize_keys({key: state[key]})
    (name,) = short
    with pytest.raises(CheckpointError, match=rf"holds non-finite weights: {name} has 1 NaN/Inf of {state[key].numel()} entries"):
        load_checkpoint(run / "step_100", seq_len=81)
    loaded = load_checkpoint(run / "step_100", seq_len=81, allow_non_finite=True)
    assert torch.isnan(loaded.model.model.inner.q_head.weight).sum() == 1


def test_checkpoint_with_code_is_named_as_such(tmp_path):
    """A pickle that references a function is refused by name, not called corrupt, and not run."""
    import os  # noqa: PLC0415

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"w": Payload()}, tmp_path / "step_1")
    with pytest.raises(CheckpointError, match=r"refusing to unpickle code from .*step_1: it references posix.system") as err:
        load_checkpoint(tmp_path / "step_1")
    assert "corrupt" not in str(err.value)
    assert not (tmp_path / "ran").exists()
