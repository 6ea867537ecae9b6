"""AdamATan2 and SparseEmbeddingSignSGD against the update rules written out by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.optim import (
    AdamATan2,
    SparseEmbeddingSignSGD,
    split_sparse_embedding_buffers,
)
from tests.runtime.test_dist import run_gloo


def adam_atan2_reference(p, grads, lr, betas, wd):
    """float64 reference: the formula of official.md §3.3 with explicit tensors, t = 1, 2, ..."""
    p = p.double().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = m + (1 - b1) * (g - m)
        v = b2 * v + (1 - b2) * g * g
        p = p - (lr / (1 - b1**t)) * torch.atan2(m, v.sqrt() / math.sqrt(1 - b2**t))
    return p, m, v


def test_adam_atan2_first_step_known_values():
    """Test hypothesis: at t = 1 every element moves by lr * 10 * atan(0.1) against its gradient
    sign, whatever the gradient's magnitude (0 for g = 0), after the decay p * (1 - lr wd).

    m1 = 0.1 g and sqrt(v1) / sqrt(1 - 0.95) = |g|, so the direction is atan2(0.1 g, |g|) =
    sign(g) atan(0.1); the step size lr / (1 - 0.9) multiplies it by 10. (The first-moment bias
    correction sits outside the atan2, so the first step is 0.9967 lr, not lr * pi/4.)
    Tolerance: float32 rounding of a few operations.
    """
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    p.grad = torch.tensor([0.3, -4.0, 0.0, 1e-3])
    opt = AdamATan2([p], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    opt.step()
    decayed = torch.tensor([1.0, -2.0, 0.5, 3.0]) * (1 - 0.01 * 0.1)
    expected = decayed - 0.01 * 10 * math.atan(0.1) * torch.tensor([1.0, -1.0, 0.0, 1.0])
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)
    assert opt.state[p]["step"].item() == 1.0
    torch.testing.assert_close(opt.state[p]["exp_avg"], 0.1 * p.grad)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], 0.05 * p.grad**2)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float64, 1e-14)])
def test_adam_atan2_many_steps_match_reference(dtype, tol):
    """Test hypothesis: 20 steps with weight decay equal the float64 formula for several tensors.

    Tolerance: float32 accumulates ~1e-7 relative error per step over 20 steps; float64 is exact
    to round-off.
    """
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    grads = [[torch.randn_like(x) * 0.1 for _ in range(20)] for x in init]
    params = [nn.Parameter(x.to(dtype).clone()) for x in init]
    opt = AdamATan2(params, lr=3e-2, betas=(0.8, 0.9), weight_decay=0.5)
    for k in range(20):
        for p, g in zip(params, grads):
            p.grad = g[k].to(dtype)
        opt.step()
    for p, x, g in zip(params, init, grads):
        ref_p, ref_m, ref_v = adam_atan2_reference(x.to(dtype), g, 3e-2, (0.8, 0.9), 0.5)
        assert p.dtype == dtype
        torch.testing.assert_close(p.detach().double(), ref_p, rtol=0, atol=tol)
        torch.testing.assert_close(opt.state[p]["exp_avg"].double(), ref_m, rtol=0, atol=tol)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"].double(), ref_v, rtol=0, atol=tol)


def test_adam_atan2_lr_zero_changes_nothing_but_state():
    """Test hypothesis: constructed and stepped with lr = 0 (as the official loop does before
    the schedule sets it), parameters stay bit-identical while t, m and v advance; a later step
    at lr > 0 then uses t = 2 bias correction, matching the reference with a zero-lr first step.
    """
    x = torch.tensor([[0.5, -1.5], [2.0, 0.25]])
    p = nn.Parameter(x.clone())
    g1, g2 = torch.tensor([[1.0, -2.0], [0.5, 0.0]]), torch.tensor([[-1.0, 1.0], [0.25, 3.0]])
    opt = AdamATan2([p], lr=0.0, weight_decay=0.1)
    p.grad = g1
    opt.step()
    assert torch.equal(p.detach(), x)
    assert opt.state[p]["step"].item() == 1.0
    opt.param_groups[0]["lr"] = 1e-2
    p.grad = g2
    opt.step()
    # Reference: first step at lr 0 (no move), second at lr 1e-2 with t = 2.
    m = 0.1 * g1.double()
    v = 0.05 * g1.double() ** 2
    m = m + 0.1 * (g2.double() - m)
    v = 0.95 * v + 0.05 * g2.double() ** 2
    ref = x.double() * (1 - 1e-3) - (1e-2 / (1 - 0.9**2)) * torch.atan2(
        m, v.sqrt() / math.sqrt(1 - 0.95**2)
    )
    torch.testing.assert_close(p.detach().double(), ref, rtol=0, atol=1e-7)


def test_adam_atan2_defaults_skip_and_pure_path():
    """Defaults follow the spec; params without grad are untouched and get no state; on this
    CPU machine the pure-torch path is used even though the package is installed."""
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = AdamATan2([a, b])
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-4, (0.9, 0.95), 0.1)
    assert opt.uses_fused_kernel is False
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    assert opt.state[a]["step"].item() == 1.0


def test_adam_atan2_bf16_param_math_in_fp32():
    """bf16 parameters are updated in fp32 and rounded once (the package's dtype policy):
    1 - 0.3 * 10 atan(0.1) = 0.70099 rounds to bf16 0.69921875 (-1.29901 to -1.296875)."""
    p = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.bfloat16))
    p.grad = torch.tensor([1.0, 1.0], dtype=torch.bfloat16)
    opt = AdamATan2([p], lr=0.3, weight_decay=0.0)
    opt.step()
    expected = torch.tensor([0.69921875, -1.296875], dtype=torch.bfloat16)
    assert torch.equal(p.detach(), expected)
    assert opt.state[p]["exp_avg"].dtype == torch.bfloat16


def test_adam_atan2_state_dict_resume_is_exact():
    """Test hypothesis: saving after 3 steps and resuming a fresh optimizer for 3 more gives
    bit-identical parameters to 6 uninterrupted steps."""
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(4, 4, generator=gen)
    grads = [torch.randn(4, 4, generator=gen) for _ in range(6)]

    p_full = nn.Parameter(init.clone())
    full = AdamATan2([p_full], lr=1e-2)
    for g in grads:
        p_full.grad = g
        full.step()

    p_a = nn.Parameter(init.clone())
    first = AdamATan2([p_a], lr=1e-2)
    for g in grads[:3]:
        p_a.grad = g
        first.step()
    saved = first.state_dict()
    p_b = nn.Parameter(p_a.detach().clone())
    resumed = AdamATan2([p_b], lr=0.0)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == 1e-2
    for g in grads[3:]:
        p_b.grad = g
        resumed.step()
    assert torch.equal(p_b.detach(), p_full.detach())
    assert resumed.state[p_b]["step"].item() == 6.0


def test_adam_atan2_kernel_dispatch_passes_the_package_signature(monkeypatch):
    """With a (fake) backend selected, step() hands the kernel the package's argument order
    (params, grads, exp_avgs, exp_avg_sqs, steps already incremented, lr, beta1, beta2, wd)."""
    from training import optim

    calls = []

    class FakeBackend:
        @staticmethod
        def adam_atan2_cuda_impl_(params, grads, m, v, steps, lr, beta1, beta2, wd):
            calls.append(([s.item() for s in steps], lr, beta1, beta2, wd, len(params)))
            assert all(g is p.grad for p, g in zip(params, grads))

    monkeypatch.setattr(optim, "fused_backend", lambda: FakeBackend)
    monkeypatch.setattr(AdamATan2, "_use_kernel", lambda self, device: True)
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    opt = AdamATan2([a, b], lr=0.5, betas=(0.8, 0.9), weight_decay=0.25)
    assert opt.uses_fused_kernel
    opt.step()
    opt.step()
    assert calls == [([1.0, 1.0], 0.5, 0.8, 0.9, 0.25, 2), ([2.0, 2.0], 0.5, 0.8, 0.9, 0.25, 2)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adam_atan2_cuda_paths_match_reference():
    """On CUDA the pure path (and the kernel, where it is built) equals the float64 formula."""
    from training.optim import fused_backend

    gen = torch.Generator().manual_seed(0)
    init = torch.randn(64, 33, generator=gen)
    grads = [torch.randn(64, 33, generator=gen) * 0.01 for _ in range(10)]
    ref, _, _ = adam_atan2_reference(init, grads, 1e-2, (0.9, 0.95), 0.1)
    for fused in ([False, True] if fused_backend() is not None else [False]):
        p = nn.Parameter(init.cuda())
        opt = AdamATan2([p], lr=1e-2, fused=fused)
        assert opt.uses_fused_kernel is fused
        for g in grads:
            p.grad = g.cuda()
            opt.step()
        torch.testing.assert_close(p.detach().cpu().double(), ref, rtol=0, atol=2e-6)


def test_adam_atan2_fused_true_without_backend_is_config_error():
    from runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="adam_atan2_backend is not importable"):
        AdamATan2([nn.Parameter(torch.ones(1))], fused=True)


# ---------------------------------------------------------------------------- sparse SignSGD


def sparse_buffers(n_ids: int, batch: int, dim: int, seed: int = 0):
    """The three buffers of a CastedSparseEmbedding: table (N, D), carrier (B, D), ids (B,)."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(n_ids, dim, generator=gen)
    local_weights = torch.zeros(batch, dim, requires_grad=True)
    local_ids = torch.zeros(batch, dtype=torch.int32)
    return weights, local_weights, local_ids


def sign_sgd_reference(weights, ids, grad, lr, wd):
    """Hand-written rule: per unique id, p <- p (1 - lr wd) - lr sign(sum of its grad rows)."""
    out = weights.clone()
    for i in sorted(set(ids.tolist())):
        g = sum(grad[k] for k in range(len(ids)) if ids[k].item() == i)
        out[i] = weights[i] * (1 - lr * wd) - lr * torch.sign(g)
    return out


def test_sign_sgd_sums_duplicate_ids_before_sign():
    """Test hypothesis: duplicate ids are summed before the sign, only touched rows change.

    Id 1 appears twice with rows (1, -2, 0.5) and (-3, 1, -0.5): the sum (-2, -1, 0) has sign
    (-1, -1, 0), whereas averaging per-row signs would give (0, 0, 0). Rows 2 and 4 are not in
    the batch and keep their values exactly (no weight decay).
    """
    weights, local_weights, local_ids = sparse_buffers(5, 4, 3)
    before = weights.clone()
    local_ids.copy_(torch.tensor([1, 3, 1, 0]))
    local_weights.grad = torch.tensor(
        [[1.0, -2.0, 0.5], [0.2, 0.0, -7.0], [-3.0, 1.0, -0.5], [-1.0, 4.0, 2.0]]
    )
    opt = SparseEmbeddingSignSGD([local_ids, weights, local_weights], lr=0.1, weight_decay=0.5)
    opt.step()
    lr, wd = 0.1, 0.5
    for row, sign in [(1, [-1.0, -1.0, 0.0]), (3, [1.0, 0.0, -1.0]), (0, [-1.0, 1.0, 1.0])]:
        assert torch.allclose(weights[row], before[row] * (1 - lr * wd) - lr * torch.tensor(sign))
    assert torch.equal(weights[2], before[2]) and torch.equal(weights[4], before[4])
    ref = sign_sgd_reference(before, local_ids, local_weights.grad, lr, wd)
    assert torch.equal(weights, ref)


def test_sign_sgd_skips_without_grad_and_deterministic_mode_matches():
    weights, local_weights, local_ids = sparse_buffers(4, 3, 2)
    before = weights.clone()
    opt = SparseEmbeddingSignSGD([weights, local_weights, local_ids], lr=1.0, weight_decay=0.1)
    opt.step()  # no gradient yet (e.g. frozen): nothing happens
    assert torch.equal(weights, before)

    local_ids.copy_(torch.tensor([2, 2, 0]))
    local_weights.grad = torch.tensor([[0.5, -1.0], [0.25, 2.0], [0.0, -0.1]])
    det_weights = weights.clone()
    det = SparseEmbeddingSignSGD(
        [det_weights, local_weights, local_ids], lr=1.0, weight_decay=0.1, deterministic=True
    )
    opt.step()
    det.step()
    assert torch.equal(weights, det_weights)
    assert torch.equal(weights, sign_sgd_reference(before, local_ids, local_weights.grad, 1.0, 0.1))


def test_sign_sgd_rejects_wrong_buffers():
    weights, local_weights, local_ids = sparse_buffers(4, 3, 2)
    with pytest.raises(ValueError, match="exactly the sparse embedding's three buffers"):
        SparseEmbeddingSignSGD([weights, local_weights], lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="exactly the sparse embedding's three buffers"):
        SparseEmbeddingSignSGD([weights, local_weights, local_ids.float()], 0.1, 0.0)
    with pytest.raises(ValueError, match="shapes disagree"):
        SparseEmbeddingSignSGD([weights, local_weights, local_ids[:2]], lr=0.1, weight_decay=0.0)


def test_sign_sgd_on_the_embedding_module():
    """The project's CastedSparseEmbedding buffers are identified and trained end to end."""
    from model_core.sparse_embedding import CastedSparseEmbedding

    emb = CastedSparseEmbedding(3, 4, batch_size=2, init_std=0.0, cast_to=torch.float32)
    weights, local_weights, local_ids = split_sparse_embedding_buffers(emb.buffers())
    assert weights is emb.weights and local_weights is emb.local_weights
    assert local_ids is emb.local_ids
    opt = SparseEmbeddingSignSGD(emb.buffers(), lr=0.01, weight_decay=0.1)
    out = emb(torch.tensor([2, 2], dtype=torch.int32))
    (out * torch.tensor([1.0, -1.0, 2.0, 0.0])).sum().backward()
    opt.step()
    expected = torch.zeros(3, 4)
    expected[2] = -0.01 * torch.tensor([1.0, -1.0, 1.0, 0.0])
    assert torch.equal(emb.weights, expected)


def _sparse_worker(rank: int, world: int, out_dir: str) -> None:
    """Rank r holds rows [4r, 4r + 4) of a shared 8-row batch and steps with world_size = 2."""
    ids, grads = _global_batch()
    weights, local_weights, local_ids = sparse_buffers(6, 4, 5)
    local_ids.copy_(ids[4 * rank: 4 * rank + 4])
    local_weights.grad = grads[4 * rank: 4 * rank + 4].clone()
    opt = SparseEmbeddingSignSGD(
        [weights, local_weights, local_ids], lr=0.05, weight_decay=0.2, world_size=world
    )
    opt.step()
    torch.save(weights, f"{out_dir}/weights_{rank}.pt")


def _global_batch():
    gen = torch.Generator().manual_seed(7)
    ids = torch.tensor([0, 3, 3, 5, 3, 1, 0, 3], dtype=torch.int32)  # id 3 on both ranks
    return ids, torch.randn(8, 5, generator=gen)


@pytest.mark.dist
def test_sign_sgd_two_gloo_ranks_equal_single_process(tmp_path):
    """Test hypothesis: with world 2 each rank's table equals the single-process update on the
    concatenated 8-row batch, bit for bit (the gathered rows are summed in the same order)."""
    # Reference first: building an Optimizer imports torch._dynamo, which forked ranks inherit.
    ids, grads = _global_batch()
    weights, local_weights, local_ids = sparse_buffers(6, 8, 5)
    local_ids.copy_(ids)
    local_weights.grad = grads
    SparseEmbeddingSignSGD([weights, local_weights, local_ids], lr=0.05, weight_decay=0.2).step()
    run_gloo(_sparse_worker, 2, str(tmp_path))
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"weights_{rank}.pt"), weights)


def test_adam_atan2_describes_its_path_on_cpu():
    """The start-up log line names the pure-torch path and why."""
    opt = AdamATan2([torch.nn.Parameter(torch.zeros(3))], fused=False)
    assert opt.describe_path() == "AdamATan2: pure torch (optim.fused=false)"
    opt = AdamATan2([torch.nn.Parameter(torch.zeros(3))])
    assert opt.describe_path().startswith("AdamATan2: pure torch (")
