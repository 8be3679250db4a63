"""Hugging Face hub ids: the one rule that tells a hub id from a local path (models and data sets alike)."""

from __future__ import annotations

import re
from pathlib import Path

# A hub id is "name" (a legacy top-level repo such as gpt2 or imdb) or "owner/name", each part word
# characters, dots and dashes starting with a letter or digit: no path separator beyond the one slash,
# no leading ".", "/" or "~".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# A name ending like a local file is a missing file, not a repo.
FILE_SUFFIXES = (".jsonl", ".json", ".gz", ".yaml", ".yml", ".csv", ".txt", ".bin", ".pt", ".safetensors")


def looks_like_hub_id(name: str) -> bool:
    """True for 'name' or 'org/name' with no local file or directory of that name: the hub-loading path."""
    name = str(name)
    return bool(_HUB_ID.match(name)) and not name.endswith(FILE_SUFFIXES) and not Path(name).exists()


__all__ = ["looks_like_hub_id", "FILE_SUFFIXES"]
