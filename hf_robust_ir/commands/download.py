"""`hf-robust-ir download REPO_ID --local_dir DIR`: fetch a published retriever (no pickle files) into a folder."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .common import setup_logging

HELP = "download a retriever published on the Hub (configs, tokenizer, safetensors) into a local folder"

logger = logging.getLogger("hf_robust_ir.download")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo_id", help="Hub repository id, 'namespace/name'")
    parser.add_argument("--local_dir", required=True, help="folder to download into")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--cache_dir", default=None, help="huggingface_hub cache folder (default: HF_HUB_CACHE)")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    from ..hub import download, validate_repo_id

    try:
        validate_repo_id(args.repo_id)
        folder = download(args.repo_id, args.local_dir, revision=args.revision, cache_dir=args.cache_dir)
    except (ValueError, OSError) as error:  # OSError: huggingface_hub's not-found, HTTP and offline errors
        print(f"error: could not download {args.repo_id}: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    logger.info("Downloaded %s to %s", args.repo_id, folder)
    print(json.dumps({"repo_id": args.repo_id, "local_dir": str(folder)}))
    return 0
