"""Publish a checkpoint on the Hugging Face Hub in the official layout.

    python -m training.publish push CHECKPOINT hf://OWNER/REPO[/PATH] [--dry-run] [--out DIR] [--raw]

Exports the checkpoint (ours or official) to `step_N` + `all_config.yaml` (`training.export`), adds
`manifest.json` (the training run's manifest plus what was exported from where) and uploads the
folder to PATH in the repository (`runtime.hub.upload_folder`), creating the repository if needed.
`--dry-run` only writes the folder and prints its path.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from model_core.checkpoint import load_checkpoint
from runtime.errors import ConfigError, UserError, exit_on_user_error
from runtime.hub import CONFIG_FILE, hub_offline, parse_hub_uri, upload_folder
from runtime.manifest import build_manifest, sha256_file, write_manifest
from training.export import export_loaded


def export_folder(checkpoint: str | Path, out_dir: str | Path, target: str, *, use_ema: bool = True) -> Path:
    """Write what `push` uploads into `out_dir`: `step_N`, `all_config.yaml` and `manifest.json`.

    manifest.json is the training run's manifest (from one of our checkpoints; a fresh one for an
    official file) with an `export` entry: source file and sha256, its kind, step, use_ema, the
    files, target URI and time. Returns `out_dir`.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"export folder {out} is not empty; choose an empty or new folder")
    loaded = load_checkpoint(checkpoint, use_ema=use_ema)
    step_file = export_loaded(loaded, out)
    manifest = dict(loaded.extra.get("manifest") or build_manifest(config={}, checkpoint=loaded.path))
    manifest["export"] = {
        "source": str(loaded.path),
        "source_sha256": sha256_file(loaded.path),
        "source_kind": loaded.kind,
        "step": loaded.step,
        "use_ema": use_ema,  # EMA weights when the checkpoint holds them (ours), else the saved ones
        "files": sorted([step_file.name, CONFIG_FILE, "manifest.json"]),
        "target": target,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_manifest(out, manifest)
    return out


def push(checkpoint: str | Path, uri: str, *, dry_run: bool = False, out_dir: str | Path | None = None,
         use_ema: bool = True, private: bool | None = None, message: str | None = None) -> Path | str:
    """Export `checkpoint` and upload it to `uri`; with `dry_run` return the folder instead.

    The folder is `out_dir`, else a new temporary folder (kept for a dry run, removed after an
    upload). Returns the folder (dry run) or the commit URL.
    """
    ref = parse_hub_uri(uri)
    if ref.revision:
        raise ConfigError(f"{ref}: pushing to a revision is not supported; drop @{ref.revision} (uploads go to main)")
    if not dry_run and hub_offline():
        raise UserError("HF_HUB_OFFLINE=1 is set: unset it to push (or use --dry-run to only write the folder)")
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="rrdyn-push-"))
    try:
        export_folder(checkpoint, folder, str(ref), use_ema=use_ema)
        if dry_run:
            return folder
        return upload_folder(folder, ref, private=private, message=message)
    finally:
        if out_dir is None and not dry_run:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.publish", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push", help="export a checkpoint to the official layout and upload it")
    p.add_argument("checkpoint", help="checkpoint file or run directory (ours or official)")
    p.add_argument("target", help="hf://OWNER/REPO[/PATH]: repository and folder to upload into")
    p.add_argument("--dry-run", action="store_true", help="only write the folder that would be uploaded, and print it")
    p.add_argument("--out", help="folder to write (default: a new temporary folder)")
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    p.add_argument("--private", action="store_true", default=None, help="create the repository as private")
    p.add_argument("--message", help="commit message")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        result = push(args.checkpoint, args.target, dry_run=args.dry_run, out_dir=args.out, use_ema=not args.raw,
                      private=args.private, message=args.message)
        print(result)


if __name__ == "__main__":
    main()
