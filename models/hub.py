"""Hugging Face Hub names wherever a pretrained model is named.

    hub.resolve("sentence-transformers/all-MiniLM-L6-v2")   # the cached snapshot's directory
    hub.resolve("bert-base-uncased@main")                   # a branch, tag or commit
    hub.resolve("runs/sst2")                                # an existing local path: as is

A name is resolved in one order: a URL (`gs://`) first, then an existing local path, then a Hub
model id (`org/name` or `name`, optionally `@revision`). Hub ids go through huggingface_hub's
`snapshot_download`, so the standard cache (`HF_HOME`, `HF_HUB_CACHE`) and `HF_HUB_OFFLINE` apply
as in every Hugging Face library, and only the files a load needs are fetched: the config, the
weights (safetensors, or PyTorch `.bin` where a repo has no safetensors), the tokenizer files and
the model card. Every failure is one `UserError` line: an id missing from the cache while
offline, an unknown or gated repo, a missing revision, a model type Triptych cannot read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from models import paths
from models.errors import UserError

_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?)(?:@(?P<rev>[\w./-]+))?$")
_TOKENIZER = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
]
_SAFETENSORS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
_TORCH = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]
NEEDED = ["config.json", "README.md", *_TOKENIZER, *_SAFETENSORS]


@dataclass(frozen=True)
class HubId:
    """A Hub model id and optional revision (`org/name@rev`)."""

    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "")

    @property
    def name(self) -> str:
        """The model's name without its organisation (a ModelConfig name)."""
        return self.repo.rsplit("/", 1)[-1]


def hub_id(name: str | os.PathLike | None) -> HubId | None:
    """The Hub id `name` spells, or None: a URL, an existing local path, an absolute or `./`
    path, or a name that no Hub id could be, is not one."""
    if not name:
        return None
    text = os.fspath(name)
    if paths.is_remote(text) or text.startswith(("/", ".", "~")) or os.path.exists(text):
        return None
    match = _ID.match(text)
    return HubId(match["repo"], match["rev"]) if match else None


def resolve(
    name: str | os.PathLike, what: str = "model", model: bool = True, files: list | None = None
) -> str:
    """`name` as a directory a loader can open: the local snapshot of a Hub id (downloaded when
    it is not cached and the Hub is reachable), else `name` itself (a URL or a local path).

    Args:
      name: a path, a `gs://` URL or a Hub id.
      what: what the name is for, to start the error line (`init_from`, `--workdir`, ...).
      model: the name is a model (its config.json and weights are needed, and its type is
        checked); False for a tokenizer alone, or for the `files` patterns (a PEFT adapter).

    Raises:
      UserError: the id cannot be had (see the module docstring), or it is a model type that
        Triptych does not read.
    """
    hid = hub_id(name)
    if hid is None:
        return os.fspath(name)
    if not model:
        return _snapshot(hid, what, list(files or _TOKENIZER))
    folder = _snapshot(hid, what, NEEDED)
    if not _has_weights(folder) and _has_config(folder):
        folder = _snapshot(hid, what, ["config.json", *_TORCH])  # a repo without safetensors
    if not _has_config(folder):
        raise UserError(
            f"{what}={str(hid)!r}: the Hub repo has no config.json; it is not a transformers "
            "model (name the repo of the model itself)"
        )
    _check_type(hid, folder, what)
    return folder


def _snapshot(hid: HubId, what: str, patterns: list[str]) -> str:
    from huggingface_hub import constants

    # a run names its init_from for the weights and again for the tokenizer: one lookup (an
    # HTTP round trip online) per process and cache
    key = (constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE, hid, tuple(patterns))
    if key not in _RESOLVED:
        _RESOLVED[key] = _download(hid, what, patterns)
    return _RESOLVED[key]


_RESOLVED: dict[tuple, str] = {}


def _download(hid: HubId, what: str, patterns: list[str]) -> str:
    import huggingface_hub
    from huggingface_hub import constants, errors

    try:
        return huggingface_hub.snapshot_download(
            hid.repo, revision=hid.revision, allow_patterns=patterns
        )
    except errors.IncompleteSnapshotError as error:
        # offline, and the cache holds this revision without every file the patterns name
        # (another library fetched what it needed): load what is there
        return error.snapshot_path
    except errors.GatedRepoError:
        raise UserError(
            f"{what}={str(hid)!r} is a gated Hub repo: accept its terms at "
            f"https://huggingface.co/{hid.repo} and log in (`hf auth login`, or set HF_TOKEN)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise UserError(
            f"{what}={str(hid)!r}: no such directory, and no such Hugging Face model repo (or it "
            "is private: log in with `hf auth login`, or set HF_TOKEN)"
        ) from None
    except errors.RevisionNotFoundError:
        raise UserError(
            f"{what}={str(hid)!r}: the Hub repo {hid.repo} has no revision {hid.revision!r}"
        ) from None
    except errors.LocalEntryNotFoundError:
        cache = constants.HF_HUB_CACHE
        if constants.HF_HUB_OFFLINE:
            why = "HF_HUB_OFFLINE is set"
            rev = f" --revision {hid.revision}" if hid.revision else ""
            fix = f"download it once online (`hf download {hid.repo}{rev}`) or unset HF_HUB_OFFLINE"
        else:
            why = "the Hub cannot be reached"
            fix = "connect to the network, or point HF_HOME at a cache that holds it"
        raise UserError(
            f"{what}={str(hid)!r}: no such directory, and the Hugging Face model is not in the "
            f"cache {cache} while {why}; {fix}"
        ) from None


def _has_config(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "config.json"))


def _has_weights(folder: str) -> bool:
    return any(Path(folder).glob("*.safetensors")) or any(Path(folder).glob("*.safetensors.*"))


def _check_type(hid: HubId, folder: str, what: str) -> None:
    from models.hf_tables import SUPPORTED_TYPES
    from models.jsonfile import read_json

    model_type = read_json(os.path.join(folder, "config.json")).get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise UserError(
            f"{what}={str(hid)!r} is a {model_type!r} model, which Triptych does not read; "
            f"supported model types: {', '.join(SUPPORTED_TYPES)}"
        )
