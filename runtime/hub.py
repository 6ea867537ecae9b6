"""Checkpoints on the Hugging Face Hub: `hf://OWNER/REPO[/PATH][@REVISION]`, read and written.

Reading. Wherever a checkpoint path is accepted (`evaluate.py checkpoint=`, `python -m diagnostics
... checkpoint=`, `model_core.checkpoint.load_checkpoint`), a `hf://` URI is resolved by
`fetch_checkpoint`, which downloads into (and later reads from) the hub's own cache ($HF_HOME):

- PATH names a file (`step_N`, `checkpoint`, one of our `.pt` files): that file, plus the
  `all_config.yaml` beside it when the repo has one (official run files need it);
- PATH names a folder, or is left out (the repo root): the folder's newest `step_N` file, else its
  `checkpoint` file, the layout of the published HRM checkpoints
  (`hf://sapientinc/HRM-checkpoint-sudoku-extreme`) and of the TRM verification runs
  (`hf://arcprize/trm_arc_prize_verification/arc_v1_public`);
- REVISION is a branch, tag or commit (default `main`).

With `HF_HUB_OFFLINE=1`, or when the hub cannot be reached, only the cache is used. Every failure
(repository or revision not found, file not in the repository, nothing cached while offline) is a
one-line `CheckpointError` that says how to fix it.

Writing. `upload_folder` creates the repository when needed and uploads a folder into PATH;
`python -m training.publish push` uses it to publish an exported checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

PickFile = Callable[[Iterable[str]], "str | None"]  # a folder's file names -> the checkpoint to load

from runtime.errors import CheckpointError, ConfigError, UserError

SCHEME = "hf://"
CONFIG_FILE = "all_config.yaml"
LOGIN_HINT = "log in with `hf auth login` (or set HF_TOKEN)"


@dataclass(frozen=True)
class HubRef:
    """A parsed `hf://OWNER/REPO[/PATH][@REVISION]`; `path` is "" for the repository root."""

    repo_id: str
    path: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        path = f"/{self.path}" if self.path else ""
        revision = f"@{self.revision}" if self.revision else ""
        return f"{SCHEME}{self.repo_id}{path}{revision}"

    def child(self, name: str) -> HubRef:
        """The same repo and revision, at `name` (a path relative to the repository root)."""
        return HubRef(self.repo_id, name, self.revision)


def is_hub_uri(value: object) -> bool:
    """True for strings that start with `hf://`."""
    return isinstance(value, str) and value.startswith(SCHEME)


def parse_hub_uri(uri: str) -> HubRef:
    """Split `hf://OWNER/REPO[/PATH][@REVISION]`; ConfigError when OWNER or REPO is missing."""
    if not is_hub_uri(uri):
        raise ConfigError(f"{uri!r} is not a hub URI (expected {SCHEME}OWNER/REPO[/PATH][@REVISION])")
    body, at, revision = uri[len(SCHEME):].partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2 or (at and not revision):
        raise ConfigError(f"{uri!r} is not a hub URI: expected {SCHEME}OWNER/REPO[/PATH][@REVISION]")
    if any(p in (".", "..") for p in parts):
        raise ConfigError(f"{uri!r}: '.' and '..' are not allowed in hub paths")
    return HubRef(f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision or None)


# --- reading ---------------------------------------------------------------------------------------

def _hub() -> Any:
    """The huggingface_hub package, imported on first use (it is slow to import), with the
    `constants` and `errors` submodules loaded (the package imports its attributes lazily)."""
    import huggingface_hub  # noqa: PLC0415
    import huggingface_hub.constants  # noqa: PLC0415,F401
    import huggingface_hub.errors  # noqa: PLC0415,F401

    return huggingface_hub


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) switched the hub client offline."""
    return bool(_hub().constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    return str(_hub().constants.HF_HUB_CACHE)


class _NotInRepo(FileNotFoundError):
    """The hub answered: the repository has no such file."""


class _NotCached(FileNotFoundError):
    """Offline or unreachable, and the file is not in the local cache."""


def _not_cached(ref: HubRef) -> CheckpointError:
    why = "the hub is offline (HF_HUB_OFFLINE=1)" if hub_offline() else "the hub cannot be reached"
    return CheckpointError(
        f"{ref} is not in the local hub cache ({_cache_dir()}) and {why}: run once with network access "
        f"(without HF_HUB_OFFLINE=1) to download it, or pass a local path"
    )


def _remote_error(ref: HubRef, exc: Exception) -> CheckpointError | None:
    """The one-line error for a hub HTTP failure about `ref`, or None when `exc` is not one."""
    errors = _hub().errors
    if isinstance(exc, errors.RevisionNotFoundError):
        return CheckpointError(f"{ref}: revision {ref.revision!r} not found in {ref.repo_id}")
    if isinstance(exc, errors.GatedRepoError):
        return CheckpointError(f"{ref}: {ref.repo_id} is gated; accept its terms on huggingface.co and {LOGIN_HINT}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return CheckpointError(f"{ref}: repository {ref.repo_id} not found on the hub (check the name; if it is private, {LOGIN_HINT})")
    if isinstance(exc, errors.HfHubHTTPError):
        return CheckpointError(f"{ref}: the hub refused the request: {_first_line(exc)}")
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the hub could not be reached" (the HTTP library's own transport errors
    are not OSErrors in recent huggingface_hub versions)."""
    return (OSError, getattr(_hub().errors, "HTTPError", OSError))


def cached_files(ref: HubRef) -> list[str]:
    """Repository paths of `ref`'s revision held in the local cache (only the files downloaded
    before); CheckpointError when that revision was never cached."""
    hub = _hub()
    wanted = ref.revision or "main"
    try:
        repos = hub.scan_cache_dir(_cache_dir()).repos
    except hub.CacheNotFound:
        repos = frozenset()
    for repo in repos:
        if repo.repo_id != ref.repo_id or repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            if wanted in rev.refs or rev.commit_hash == wanted:
                root = Path(rev.snapshot_path)
                return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    raise _not_cached(ref)


def list_repo_files(ref: HubRef) -> list[str]:
    """Every file path of the repository at `ref.revision`: from the hub, or from the local cache
    when offline or unreachable."""
    if hub_offline():
        return cached_files(ref)
    try:
        return list(_hub().HfApi().list_repo_files(ref.repo_id, revision=ref.revision))
    except Exception as e:  # noqa: BLE001 (sorted into hub answers, network failures and bugs)
        remote = _remote_error(ref, e)
        if remote is not None:
            raise remote from None
        if isinstance(e, _network_errors()):
            return cached_files(ref)
        raise


def _download(ref: HubRef) -> Path:
    """hf_hub_download of `ref.path` (the cached copy when offline or unreachable)."""
    hub = _hub()
    errors = hub.errors
    try:
        return Path(hub.hf_hub_download(ref.repo_id, ref.path, revision=ref.revision))
    except errors.LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: test it first
        raise _NotCached(ref.path) from None
    except errors.EntryNotFoundError:
        raise _NotInRepo(ref.path) from None
    except Exception as e:  # noqa: BLE001 (hub HTTP errors become one line; anything else propagates)
        remote = _remote_error(ref, e)
        if remote is not None:
            raise remote from None
        raise


def _checkpoint_in_folder(ref: HubRef, files: Sequence[str], pick: PickFile) -> str:
    """The repository path of the checkpoint in folder `ref.path`, as `pick` chooses it."""
    folder = PurePosixPath(ref.path)
    names = [PurePosixPath(f).name for f in files if PurePosixPath(f).parent == folder]
    chosen = pick(names)
    if chosen is None:
        inside = [f for f in files if not ref.path or f.startswith(ref.path + "/")]
        if not inside:
            where = "the local cache" if hub_offline() else ref.repo_id
            raise CheckpointError(f"{ref}: no file or folder {ref.path or '/'} in {where}{_candidates(files, pick)}")
        raise CheckpointError(f"{ref}: folder {ref.path or '/'} holds no step_N or checkpoint file{_candidates(files, pick)}")
    return str(folder / chosen) if ref.path else chosen


def _candidates(files: Iterable[str], pick: PickFile) -> str:
    """"; checkpoints in the repo: a, b, c" for the checkpoint-like files among `files`."""
    found = [f for f in files if pick([PurePosixPath(f).name])]
    if not found:
        return ""
    return "; checkpoints in the repo: " + ", ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")


def fetch_checkpoint(uri: str, pick: PickFile) -> Path:
    """Download (or find in the cache) the checkpoint file named by `uri` and the `all_config.yaml`
    beside it; returns the local path of the checkpoint file (inside the hub cache). When `uri`
    names a folder, `pick` chooses the file among its names (model_core.checkpoint.pick_checkpoint_file)."""
    ref = parse_hub_uri(uri)
    files: list[str] | None = None
    if ref.path:
        try:
            local = _download(ref)
            if not local.is_dir():  # offline, a cached folder comes back as its snapshot directory
                return _with_config(ref, local)
            files = cached_files(ref)
        except _NotInRepo:
            files = None  # maybe a folder: list the repository
        except _NotCached:
            files = cached_files(ref)  # the hub is out of reach: a cached folder is all there is
    target = ref.child(_checkpoint_in_folder(ref, files if files is not None else list_repo_files(ref), pick))
    try:
        return _with_config(target, _download(target))
    except _NotCached:
        raise _not_cached(target) from None
    except _NotInRepo:
        raise CheckpointError(f"{target} is listed in {ref.repo_id} but the hub did not serve it; try again") from None


def _with_config(ref: HubRef, local: Path) -> Path:
    """Also fetch the `all_config.yaml` beside `ref` when the repository has one; returns `local`."""
    try:
        _download(ref.child(str(PurePosixPath(ref.path).parent / CONFIG_FILE)))
    except FileNotFoundError:
        pass  # ours (.pt) need none; for an official file load_checkpoint says it is missing
    return local


# --- writing ---------------------------------------------------------------------------------------

def upload_folder(folder: str | Path, ref: HubRef, *, private: bool | None = None, message: str | None = None) -> str:
    """create_repo(exist_ok=True) + upload_folder of `folder` to `ref.path` (the root when empty);
    returns the commit URL. Hub failures become one-line UserErrors."""
    hub = _hub()
    api = hub.HfApi()
    try:
        api.create_repo(ref.repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=ref.repo_id,
            folder_path=str(folder),
            path_in_repo=ref.path or None,
            commit_message=message or f"Upload {ref.path or 'checkpoint'} (rrdyn export)",
        )
    except hub.errors.LocalTokenNotFoundError:
        raise UserError(f"not logged in to the Hugging Face Hub: {LOGIN_HINT}") from None
    except Exception as e:  # noqa: BLE001 (HTTP and network failures become one line)
        if isinstance(e, hub.errors.HfHubHTTPError):
            hint = f"; {LOGIN_HINT} with write access" if getattr(getattr(e, "response", None), "status_code", None) in (401, 403) else ""
            raise UserError(f"upload to {ref} failed: {_first_line(e)}{hint}") from None
        if isinstance(e, _network_errors()):
            raise UserError(f"upload to {ref} failed: the hub cannot be reached ({type(e).__name__})") from None
        raise
    return str(getattr(info, "commit_url", info))
