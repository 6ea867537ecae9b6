"""Hub checkpoints (`hf://OWNER/REPO[/PATH][@REVISION]`) and `python -m training.publish push`.

No test touches the network. Reading is tested offline against a hub cache built in tmp_path in
the hub's own layout (`models--OWNER--REPO/refs/main`, `blobs/`, `snapshots/<commit>/...` with
symlinks), holding copies of the official fixture runs; hub answers that need a server (repository
not found, file not in the repository, upload) come from monkeypatched `huggingface_hub` calls.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.errors as hub_errors
import numpy as np
import pytest
import torch
import yaml

from diagnostics.inputs import load_study_inputs
from model_core.checkpoint import FORMAT, load_checkpoint, resolve_checkpoint_path
from runtime import hub
from runtime.errors import CheckpointError, ConfigError, UserError
from runtime.manifest import sha256_file
from tests.conftest import OFFICIAL_FIXTURES
from training import evaluate_job
from training import publish
from training.evaluation import run_segments

TRM = OFFICIAL_FIXTURES / "trm_mlp"
HRM = OFFICIAL_FIXTURES / "hrm"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo_id: str, files: dict[str, Path], *, refs=("main",), commit: str = COMMIT) -> Path:
    """Lay out `files` (repo path -> source file) as huggingface_hub caches a download of
    `repo_id` at `commit`; returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    snapshot = repo / "snapshots" / commit
    for rel, src in files.items():
        data = Path(src).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An offline hub whose cache is tmp_path/hf/hub (the env for subprocesses, the constants for
    this process, where huggingface_hub read them at import)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def online(monkeypatch):
    """The hub client believes it is online; every server call must be monkeypatched."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", no_network)


def hub_error(cls: type, message: str, status: int = 404) -> Exception:
    """An instance of a huggingface_hub HTTP error without building an HTTP response."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.response = SimpleNamespace(status_code=status)
    return err


def predict(loaded, root: Path, n: int = 8) -> dict[str, torch.Tensor]:
    """Logits and halting logits of the first n test examples after halt_max_steps segments."""
    inputs = torch.from_numpy(np.load(root / "data/test/all__inputs.npy")[:n].astype(np.int32))
    labels = torch.from_numpy(np.load(root / "data/test/all__labels.npy")[:n].astype(np.int64))
    batch = {"inputs": inputs, "labels": labels, "puzzle_identifiers": torch.zeros(len(inputs), dtype=torch.int32)}
    return run_segments(loaded.model.model.inner, batch, loaded.arch.halt_max_steps, act_halting=False)


def official_trm_repo(cache: Path, repo_id: str = "alice/trm-sudoku") -> Path:
    return cache_repo(cache, repo_id, {"runs/mlp/step_100": TRM / "run/step_100", "runs/mlp/all_config.yaml": TRM / "run/all_config.yaml"})


# --- URIs ----------------------------------------------------------------------------------------

def test_uri_parsing():
    assert hub.parse_hub_uri("hf://a/b") == hub.HubRef("a/b", "", None)
    assert hub.parse_hub_uri("hf://a/b/runs/x/step_9@v1.0") == hub.HubRef("a/b", "runs/x/step_9", "v1.0")
    assert hub.parse_hub_uri("hf://a/b@refs/pr/3") == hub.HubRef("a/b", "", "refs/pr/3")
    assert str(hub.parse_hub_uri("hf://a/b/c/@main")) == "hf://a/b/c@main"
    for bad in ("hf://a", "hf://a/b@", "hf://a/b/../c", "s3://a/b"):
        with pytest.raises(ConfigError, match="hub URI|not allowed"):
            hub.parse_hub_uri(bad)


# --- reading -------------------------------------------------------------------------------------

def test_hub_checkpoint_predicts_like_the_local_file(hub_cache):
    """Test hypothesis: hf:// resolves to byte-identical files (the step file and its
    all_config.yaml), so the model predicts exactly what the local path gives, which is the
    official implementation's output (expected.npz); a folder, a branch and a commit all resolve
    to the same file."""
    snapshot = official_trm_repo(hub_cache)
    local = predict(load_checkpoint(TRM / "run/step_100"), TRM)
    expected = np.load(TRM / "expected.npz")
    for uri in ("hf://alice/trm-sudoku/runs/mlp/step_100", "hf://alice/trm-sudoku/runs/mlp", f"hf://alice/trm-sudoku/runs/mlp@{COMMIT}",
                "hf://alice/trm-sudoku/runs/mlp/step_100@main"):
        loaded = load_checkpoint(uri)
        assert loaded.path == snapshot / "runs/mlp/step_100" and loaded.kind == "official" and loaded.step == 100, uri
        out = predict(loaded, TRM)
        for key in ("logits", "q_halt_logits"):
            assert torch.equal(out[key], local[key]), (uri, key)
        np.testing.assert_array_equal(out["logits"].argmax(-1).numpy(), expected["preds"][:8])


def test_published_hrm_layout_resolves_to_its_checkpoint_file(hub_cache):
    """The published HRM repos hold `checkpoint` + `all_config.yaml` at the root."""
    cache_repo(hub_cache, "sapientinc/HRM-checkpoint-sudoku-extreme", {"checkpoint": HRM / "run/step_100", "all_config.yaml": HRM / "run/all_config.yaml"})
    loaded = load_checkpoint("hf://sapientinc/HRM-checkpoint-sudoku-extreme", seq_len=81)
    assert loaded.path.name == "checkpoint" and loaded.arch.name == "hrm"
    np.testing.assert_array_equal(predict(loaded, HRM)["logits"].argmax(-1).numpy(), np.load(HRM / "expected.npz")["preds"][:8])


def test_evaluate_and_diagnostics_accept_hub_checkpoints(hub_cache, tmp_path):
    official_trm_repo(hub_cache)
    data = str(TRM / "data")
    local = evaluate_job.run(evaluate_job.EvaluateConfig(checkpoint=str(TRM / "run"), data_path=data, output_dir=str(tmp_path / "a"), n=8))
    remote = evaluate_job.run(evaluate_job.EvaluateConfig(checkpoint="hf://alice/trm-sudoku/runs/mlp", data_path=data, output_dir=str(tmp_path / "b"), n=8))
    assert remote == local and remote["count"] == 8
    a, b = np.load(tmp_path / "a/predictions.npz"), np.load(tmp_path / "b/predictions.npz")
    np.testing.assert_array_equal(a["preds"], b["preds"])
    manifest = json.loads((tmp_path / "b/manifest.json").read_text())
    assert manifest["config"]["checkpoint"] == "hf://alice/trm-sudoku/runs/mlp"
    assert manifest["checkpoint"]["sha256"] == sha256_file(TRM / "run/step_100")
    inputs = load_study_inputs("hf://alice/trm-sudoku/runs/mlp/step_100", data, n=4, seed=0)
    assert inputs.checkpoint_sha256 == sha256_file(TRM / "run/step_100") and len(inputs.index) == 4


def assert_errors(cases: dict[str, str]) -> None:
    """Loading each URI raises a CheckpointError whose one line matches its pattern."""
    for uri, pattern in cases.items():
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_checkpoint(uri)
        assert "\n" not in str(info.value), uri


def test_offline_errors_say_how_to_fix(hub_cache):
    official_trm_repo(hub_cache)
    assert_errors({
        "hf://bob/nothing/step_1": r"^hf://bob/nothing/step_1 is not in the local hub cache .* offline \(HF_HUB_OFFLINE=1\): run once with network access",
        "hf://alice/trm-sudoku@v2": r"^hf://alice/trm-sudoku@v2 is not in the local hub cache",
        "hf://alice/trm-sudoku/runs/att": r"no file or folder runs/att in the local cache; checkpoints in the repo: runs/mlp/step_100$",
        "hf://alice/trm-sudoku": r"^hf://alice/trm-sudoku: folder / holds no step_N or checkpoint file; checkpoints in the repo: runs/mlp/step_100$",
    })


def test_online_errors_are_one_line(hub_cache, online, monkeypatch):
    """Repository or revision not found, a file not in the repository (its checkpoints listed),
    and an unreachable hub with an empty cache."""
    def download(repo_id, filename, revision=None):
        if repo_id == "alice/nope":
            raise hub_error(hub_errors.RepositoryNotFoundError, "404 Client Error. Repository Not Found for url")
        if revision == "v9":
            raise hub_error(hub_errors.RevisionNotFoundError, "404 Client Error. Revision Not Found")
        raise hub_error(hub_errors.RemoteEntryNotFoundError, "404 Client Error. Entry Not Found")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    files = ["README.md", "runs/mlp/all_config.yaml", "runs/mlp/step_50", "runs/mlp/step_100"]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, revision=None: files)
    assert_errors({
        "hf://alice/nope/step_1": r"^hf://alice/nope/step_1: repository alice/nope not found on the hub \(check the name; if it is private, log in",
        "hf://alice/trm/step_1@v9": r"^hf://alice/trm/step_1@v9: revision 'v9' not found in alice/trm$",
        "hf://alice/trm/runs/att": r"no file or folder runs/att in alice/trm; checkpoints in the repo: runs/mlp/step_50, runs/mlp/step_100$",
    })

    def unreachable(self, repo_id, revision=None):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", unreachable)
    assert_errors({"hf://alice/trm": r"^hf://alice/trm is not in the local hub cache .* and the hub cannot be reached"})


def test_local_folders_resolve_like_hub_folders(tmp_path):
    """A run directory of ours (checkpoints/step_*.pt) and a folder holding `checkpoint`."""
    ours = tmp_path / "ours" / "checkpoints"
    ours.mkdir(parents=True)
    for name in ("step_0000010.pt", "step_0000200.pt", "best.pt", "last.pt"):
        (ours / name).write_bytes(b"x")
    assert resolve_checkpoint_path(tmp_path / "ours") == ours / "step_0000200.pt"
    (tmp_path / "hrm").mkdir()
    (tmp_path / "hrm" / "checkpoint").write_bytes(b"x")
    assert resolve_checkpoint_path(tmp_path / "hrm") == tmp_path / "hrm" / "checkpoint"


# --- writing -------------------------------------------------------------------------------------

@pytest.fixture
def our_checkpoint(tmp_path) -> Path:
    """One of our training checkpoints (format rrdyn) built from the TRM fixture, with EMA weights
    that differ from the raw ones, a training config and a training manifest."""
    loaded = load_checkpoint(TRM / "run/step_100")
    model = loaded.model.model
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema = {name: p.detach() + 0.01 for name, p in model.named_parameters()}  # keys inner.*, as EMA saves them
    payload = {
        "format": FORMAT, "version": 1, "arch": dataclasses.asdict(loaded.arch), "model": raw, "ema": ema, "step": 7,
        "config": {"experiment_name": "sweepA", "logger": {"project": "Sudoku ACT-torch", "name": "TRM brave-fox", "group": "sweepA"},
                   "optim": {"lr": 1e-4, "ema": True}, "global_batch_size": 32, "seed": 0},
        "manifest": {"git": {"commit": "abc123", "dirty": False}, "config": {"seed": 0}},
    }
    path = tmp_path / "run" / "checkpoints" / "step_0000007.pt"
    path.parent.mkdir(parents=True)
    torch.save(payload, path)
    return path


def test_push_dry_run_writes_a_folder_that_loads_back_identically(our_checkpoint, hub_cache, tmp_path, capsys):
    """Test hypothesis: the dry-run folder is the official layout of the EMA weights (step_7 +
    all_config.yaml) plus manifest.json; loading it, locally or through the hub cache, predicts
    exactly what the checkpoint predicts with its EMA weights, and differs from the raw weights."""
    out = tmp_path / "push"
    publish.main(["push", str(our_checkpoint), "hf://alice/trm-sudoku/exports/sweepA", "--dry-run", "--out", str(out)])
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["all_config.yaml", "manifest.json", "step_7"]
    raw_keys = torch.load(out / "step_7", weights_only=True)
    assert all(k.startswith("_orig_mod.model.inner.") for k in raw_keys)
    config = yaml.safe_load((out / "all_config.yaml").read_text())
    assert config["project_name"] == "Sudoku ACT-torch" and config["run_name"] == "TRM brave-fox" and config["arch"]["mlp_t"] is True
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["git"] == {"commit": "abc123", "dirty": False}
    assert manifest["export"]["source_sha256"] == sha256_file(our_checkpoint)
    assert manifest["export"]["target"] == "hf://alice/trm-sudoku/exports/sweepA"
    assert (manifest["export"]["step"], manifest["export"]["use_ema"], manifest["export"]["source_kind"]) == (7, True, "rrdyn")

    original = predict(load_checkpoint(our_checkpoint, use_ema=True), TRM)
    cache_repo(hub_cache, "alice/trm-sudoku", {f"exports/sweepA/{p.name}": p for p in out.iterdir()})
    for source in (out, "hf://alice/trm-sudoku/exports/sweepA"):
        again = predict(load_checkpoint(source), TRM)
        assert torch.equal(again["logits"], original["logits"]) and torch.equal(again["q_halt_logits"], original["q_halt_logits"])
    raw = predict(load_checkpoint(our_checkpoint, use_ema=False), TRM)
    assert not torch.equal(raw["logits"], original["logits"])
    with pytest.raises(UserError, match="is not empty"):
        publish.push(our_checkpoint, "hf://alice/trm-sudoku", dry_run=True, out_dir=out)


def test_push_uploads_the_folder(our_checkpoint, online, monkeypatch, capsys):
    """create_repo(exist_ok=True), then upload_folder of exactly the three files into PATH; the
    temporary folder is removed afterwards."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        calls.append(("upload_folder", sorted(p.name for p in folder.iterdir()), kwargs))
        return SimpleNamespace(commit_url="https://huggingface.co/alice/trm-sudoku/commit/abc")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    publish.main(["push", str(our_checkpoint), "hf://alice/trm-sudoku/exports/sweepA", "--private", "--raw"])
    assert capsys.readouterr().out.strip() == "https://huggingface.co/alice/trm-sudoku/commit/abc"
    (name, repo_id, kwargs), (name2, files, upload) = calls
    assert (name, repo_id, kwargs) == ("create_repo", "alice/trm-sudoku", {"private": True, "exist_ok": True})
    assert name2 == "upload_folder" and files == ["all_config.yaml", "manifest.json", "step_7"]
    assert upload["repo_id"] == "alice/trm-sudoku" and upload["path_in_repo"] == "exports/sweepA"
    assert not Path(upload["folder_path"]).exists()

    def refused(self, **kwargs):
        raise hub_error(hub_errors.HfHubHTTPError, "403 Forbidden: you have no write access", status=403)

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refused)
    with pytest.raises(UserError, match=r"^upload to hf://alice/trm-sudoku failed: 403 Forbidden: you have no write access; log in"):
        publish.push(our_checkpoint, "hf://alice/trm-sudoku")


def test_push_refuses_revisions_and_offline_mode(our_checkpoint, hub_cache):
    with pytest.raises(ConfigError, match="pushing to a revision is not supported; drop @dev"):
        publish.push(our_checkpoint, "hf://alice/trm@dev", dry_run=True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1 is set: unset it to push"):
        publish.push(our_checkpoint, "hf://alice/trm")
