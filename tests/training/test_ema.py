"""EMA of trainable parameters: update values, buffers untouched, swap/restore, state round trip."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from runtime.errors import CheckpointError
from training.ema import EMA, strip_compile_prefix


class Tiny(nn.Module):
    """w (2,) and b (1,) trainable, `frozen` (1,) not, plus a bf16 buffer like H_init."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.b = nn.Parameter(torch.tensor([0.5]))
        self.frozen = nn.Parameter(torch.tensor([7.0]), requires_grad=False)
        self.register_buffer("H_init", torch.tensor([3.0], dtype=torch.bfloat16))


def test_update_known_values_and_buffers_untouched():
    """Test hypothesis: shadow <- (1 - mu) param + mu shadow with mu = 0.9, step by step:
    w starts (1, -2); params set to (2, 0) then (0, 0) give shadows (1.1, -1.8) then
    (0.99, -1.62). Only parameters that require grad are tracked."""
    model = Tiny()
    ema = EMA(model, decay=0.9)
    assert set(ema.shadow) == {"w", "b"}
    with torch.no_grad():
        model.w.copy_(torch.tensor([2.0, 0.0]))
        model.b.copy_(torch.tensor([1.5]))
        model.H_init.fill_(9.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["w"], torch.tensor([1.1, -1.8]))
    torch.testing.assert_close(ema.shadow["b"], torch.tensor([0.6]))
    with torch.no_grad():
        model.w.zero_()
    ema.update(model)
    torch.testing.assert_close(ema.shadow["w"], torch.tensor([0.99, -1.62]))
    assert model.H_init.item() == 9.0  # buffers are never averaged or overwritten
    ema.copy_to(model)
    torch.testing.assert_close(model.w.detach(), torch.tensor([0.99, -1.62]))
    assert model.frozen.item() == 7.0 and model.H_init.item() == 9.0


def test_swapped_restores_raw_weights_even_on_error():
    model = Tiny()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.w.copy_(torch.tensor([3.0, 4.0]))
    ema.update(model)  # shadow w = (2, 1)
    with ema.swapped(model) as m:
        assert m is model
        assert model.w.tolist() == [2.0, 1.0]
    assert model.w.tolist() == [3.0, 4.0]
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swapped(model):
            raise RuntimeError("boom")
    assert model.w.tolist() == [3.0, 4.0]
    assert ema.shadow["w"].tolist() == [2.0, 1.0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit notices on first import
def test_compiled_model_names_have_no_prefix():
    """A torch.compile wrapper (`_orig_mod.` names) and the plain model share one EMA state."""
    model = Tiny()
    compiled = torch.compile(model)  # wraps only; nothing is compiled until it is called
    assert {n for n, _ in compiled.named_parameters()} >= {"_orig_mod.w", "_orig_mod.b"}
    ema = EMA(compiled, decay=0.5)
    assert set(ema.shadow) == {"w", "b"}
    with torch.no_grad():
        model.w.add_(2.0)
    ema.update(compiled)
    ema.update(model)  # the plain module fits the same shadow
    assert ema.shadow["w"].tolist() == [2.5, -0.5]
    assert strip_compile_prefix("_orig_mod.model._orig_mod.inner.w") == "model.inner.w"


def test_state_dict_round_trip_and_mismatch_errors():
    model = Tiny()
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        model.w.fill_(1.0)
    ema.update(model)
    state = ema.state_dict()
    assert state["decay"] == 0.99 and set(state["shadow"]) == {"w", "b"}

    other = EMA(Tiny(), decay=0.5)
    prefixed = {"decay": 0.99, "shadow": {f"_orig_mod.{k}": v for k, v in state["shadow"].items()}}
    other.load_state_dict(prefixed)
    assert other.decay == 0.99
    assert torch.equal(other.shadow["w"], ema.shadow["w"])
    assert other.shadow["w"] is not ema.shadow["w"]  # copied into its own tensors

    with pytest.raises(CheckpointError, match=r"EMA state does not fit the model: missing \['b'\]"):
        other.load_state_dict({"decay": 0.9, "shadow": {"w": torch.zeros(2)}})
    wrong_shape = {"decay": 0.9, "shadow": {"w": torch.zeros(3), "b": torch.zeros(1)}}
    with pytest.raises(CheckpointError, match=r"for w has shape \(3,\), the model expects \(2,\)"):
        other.load_state_dict(wrong_shape)


def test_update_rejects_a_different_model():
    ema = EMA(Tiny())
    with pytest.raises(ValueError, match="do not match the EMA"):
        ema.update(nn.Linear(2, 1))
