"""Load a backbone's encoder (PyTorch), after :func:`~finechain.model.backbone.inspect_backbone` checked its folder."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from finechain.errors import ArtifactError, short_reason
from finechain.model.backbone import inspect_backbone
from finechain.model.dropout import use_fast_attention


def load_encoder(path: Path) -> nn.Module:
    """Load a local Hugging Face encoder (safetensors only, no remote code) on CPU, checked by :func:`inspect_backbone`
    first.

    Example:
        >>> encoder = load_encoder(resolve_backbone("all-MiniLM-L6-v2")[0])  # doctest: +SKIP
    """
    inspect_backbone(path)
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(path), use_safetensors=True, trust_remote_code=False, attn_implementation="sdpa")
    except (OSError, ValueError, RuntimeError, KeyError) as error:  # weights that do not fit the config, an unknown model type
        raise ArtifactError(
            f"the backbone cannot be loaded ({short_reason(error)})", file=path, fix="restore the backbone folder"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    encoder = getattr(model, "encoder", None)
    if getattr(model, "embeddings", None) is None or not isinstance(getattr(encoder, "layer", None), nn.ModuleList):
        raise ArtifactError(
            f"backbone type '{model.config.model_type}' is not supported",
            file=path,
            fix="use a BERT-style encoder (BERT, RoBERTa, ELECTRA, MiniLM, XLM-R)",
        )
    use_fast_attention(model)  # SDPA, with cheaper attention-dropout masks when training on CPU
    return model.eval()


def keep_layers(encoder: nn.Module, layer_ids: list[int]) -> None:
    """Keep only the encoder layers ``layer_ids``, in that order (a student chain's layers); the config follows.

    Example:
        >>> keep_layers(encoder, [0, 2, 3, 5])  # doctest: +SKIP
        >>> len(encoder.encoder.layer)  # doctest: +SKIP
        4
    """
    layers = encoder.encoder.layer
    encoder.encoder.layer = nn.ModuleList([layers[i] for i in layer_ids])
    encoder.config.num_hidden_layers = len(layer_ids)
