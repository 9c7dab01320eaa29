"""Put this repository on a Hugging Face Space: ``python scripts/deploy_space.py OWNER/NAME``.

Creates the Space when it does not exist (SDK and hardware from README.md's front matter), then makes one commit
that uploads exactly the files the Space runs (app, package, requirements, README, licence, example photos, and
with ``--weights upload`` the shipped model) and deletes any other file on it, so the Space mirrors the repository.
With ``--weights hub`` no weights are uploaded: the app loads the model repo named under ``models:`` in the front
matter (push it there with ``train.py --push-to-hub``). The token comes from HF_TOKEN or ``hf auth login``; it is
never written anywhere. ``--dry-run`` lists the files and their sizes and touches nothing. Only needs
``huggingface_hub``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, metadata_load

ROOT = Path(__file__).resolve().parent.parent
TOP_FILES = ("app.py", "requirements.txt", "README.md", "LICENSE")
PACKAGE_GLOB = "segmenter/**/*.py"
EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
WEIGHT_FILES = ("weights/config.json", "weights/model.safetensors", "weights/README.md", "weights/model.onnx")
KEEP_ON_SPACE = (".gitattributes",)  # made by the Hub with the repo


def front_matter(root: Path = ROOT) -> dict:
    """README.md's YAML front matter (the Space's settings)."""
    return metadata_load(root / "README.md") or {}


def space_files(root: Path = ROOT, weights: str = "upload") -> list[str]:
    """The Space's files, relative to ``root``, sorted: what ``python app.py`` needs there and nothing else."""
    files = [f for f in TOP_FILES if (root / f).is_file()]
    files += [p.relative_to(root).as_posix() for p in root.glob(PACKAGE_GLOB) if "__pycache__" not in p.parts]
    files += [p.relative_to(root).as_posix() for p in (root / "examples").glob("*") if p.suffix in EXAMPLE_SUFFIXES]
    if weights == "upload":
        missing = [f for f in WEIGHT_FILES[:2] if not (root / f).is_file()]
        if missing:
            raise SystemExit(f"error: --weights upload, but {', '.join(missing)} missing (train and export first)")
        files += [f for f in WEIGHT_FILES if (root / f).is_file()]
    elif not front_matter(root).get("models"):
        raise SystemExit("error: --weights hub needs a model repo under `models:` in README.md's front matter")
    return sorted(files)


def size_table(root: Path, files: list[str]) -> str:
    sizes = [(root / f).stat().st_size for f in files]
    lines = [f"{size / 1024:10.1f} KiB  {f}" for f, size in zip(files, sizes, strict=True)]
    return "\n".join([*lines, f"{sum(sizes) / 2**20:10.2f} MiB  in {len(files)} files"])


def deploy(
    space_id: str,
    root: Path = ROOT,
    weights: str = "upload",
    hardware: str | None = None,
    private: bool = False,
    api: HfApi | None = None,
) -> str:
    """Create ``space_id`` if needed and sync it with ``root`` in one commit; returns the Space's URL."""
    meta = front_matter(root)
    files = space_files(root, weights)
    api = api or HfApi()  # token: HF_TOKEN or the cached login
    api.create_repo(
        space_id,
        repo_type="space",
        space_sdk=meta.get("sdk", "gradio"),
        space_hardware=hardware or meta.get("suggested_hardware"),
        private=private,
        exist_ok=True,
    )
    stale = set(api.list_repo_files(space_id, repo_type="space")) - set(files) - set(KEEP_ON_SPACE)
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(root / f)) for f in files]
    operations += [CommitOperationDelete(path_in_repo=f) for f in sorted(stale)]
    api.create_commit(
        space_id,
        operations,
        commit_message=f"Deploy from the repository ({len(files)} files, weights: {weights})",
        repo_type="space",
    )
    return f"https://huggingface.co/spaces/{space_id}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("space_id", help="the Space, OWNER/NAME")
    parser.add_argument(
        "--weights",
        choices=["upload", "hub"],
        default="upload",
        help="upload weights/ with the app, or let the app load the model repo in the front matter",
    )
    parser.add_argument("--hardware", help="Space hardware when creating it (default: suggested_hardware)")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--dry-run", action="store_true", help="list the files and sizes; upload nothing")
    args = parser.parse_args(argv)
    if args.space_id.count("/") != 1:
        parser.error(f"SPACE_ID must be OWNER/NAME, got {args.space_id!r}")
    if args.dry_run:
        print(size_table(ROOT, space_files(ROOT, args.weights)))
        print(f"dry run: nothing uploaded to https://huggingface.co/spaces/{args.space_id}")
        return 0
    print(deploy(args.space_id, ROOT, args.weights, args.hardware, args.private))
    return 0


if __name__ == "__main__":
    sys.exit(main())
