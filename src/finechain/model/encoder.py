"""Load a backbone's encoder (PyTorch), after :func:`~finechain.model.backbone.inspect_backbone` checked its folder, and
cut it to a student chain's shape: fewer layers, fewer feed-forward neurons per layer."""

from __future__ import annotations

from pathlib import Path

import torch
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


def feed_forward(layer: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """An encoder layer's feed-forward pair: the linear layer into its hidden neurons and the one out of them (BERT,
    RoBERTa, ELECTRA, MiniLM and XLM-R name them ``intermediate.dense`` and ``output.dense``).

    Example:
        >>> into, out = feed_forward(encoder.encoder.layer[0])  # doctest: +SKIP
        >>> into.out_features == out.in_features  # doctest: +SKIP
        True
    """
    into = getattr(getattr(layer, "intermediate", None), "dense", None)
    out = getattr(getattr(layer, "output", None), "dense", None)
    if not isinstance(into, nn.Linear) or not isinstance(out, nn.Linear) or into.out_features != out.in_features:
        raise ArtifactError(
            f"a {type(layer).__name__} has no feed-forward pair (intermediate.dense, output.dense) to narrow",
            fix="use a BERT-style encoder (BERT, RoBERTa, ELECTRA, MiniLM, XLM-R), or keep every feed-forward neuron",
        )
    return into, out


def keep_neurons(layer: nn.Module, neurons: torch.Tensor) -> None:
    """Keep only the feed-forward ``neurons`` (indices, in this order) of an encoder layer: both linear layers shrink,
    every other weight stays. The layer computes what it did with the other neurons' outputs set to zero.

    Example:
        >>> keep_neurons(layer, torch.arange(768))  # doctest: +SKIP
        >>> layer.intermediate.dense.out_features  # doctest: +SKIP
        768
    """
    into, out = feed_forward(layer)
    narrow_in = nn.Linear(into.in_features, len(neurons), bias=into.bias is not None, device=into.weight.device, dtype=into.weight.dtype)
    narrow_out = nn.Linear(len(neurons), out.out_features, bias=out.bias is not None, device=out.weight.device, dtype=out.weight.dtype)
    with torch.no_grad():
        narrow_in.weight.copy_(into.weight[neurons])
        if into.bias is not None:
            narrow_in.bias.copy_(into.bias[neurons])
        narrow_out.weight.copy_(out.weight[:, neurons])
        if out.bias is not None:
            narrow_out.bias.copy_(out.bias)
    narrow_in.requires_grad_(into.weight.requires_grad)
    narrow_out.requires_grad_(out.weight.requires_grad)
    layer.intermediate.dense, layer.output.dense = narrow_in, narrow_out


def neuron_scores(layer: nn.Module, activity: torch.Tensor | None = None) -> torch.Tensor:
    """How much each feed-forward neuron of ``layer`` adds to its output: its mean absolute activation over some texts
    (``activity``), or without it the size of its incoming weights, times the size of its outgoing weights.

    Example:
        >>> neuron_scores(layer).shape  # doctest: +SKIP
        torch.Size([1536])
    """
    into, out = feed_forward(layer)
    outgoing = out.weight.detach().float().norm(dim=0)
    incoming = into.weight.detach().float().norm(dim=1) if activity is None else activity.float().to(outgoing.device)
    return incoming * outgoing


def narrow_layer(layer: nn.Module, width: int, activity: torch.Tensor | None = None) -> None:
    """Keep the ``width`` feed-forward neurons of ``layer`` that :func:`neuron_scores` ranks first (in their order).

    Example:
        >>> narrow_layer(layer, 1152)  # doctest: +SKIP
    """
    scores = neuron_scores(layer, activity)
    if not 1 <= width <= len(scores):
        raise ValueError(f"a feed-forward width of {width} does not fit a layer of {len(scores)} neurons")
    keep_neurons(layer, scores.topk(width).indices.sort().values)


def narrow_encoder(encoder: nn.Module, width: int) -> None:
    """Every layer of ``encoder`` narrowed to ``width`` feed-forward neurons (chosen by weights alone, so the same
    backbone always gives the same layers); the config follows. A narrowed student's saved weights then fit.

    Example:
        >>> narrow_encoder(encoder, 1152)  # doctest: +SKIP
        >>> encoder.config.intermediate_size  # doctest: +SKIP
        1152
    """
    for layer in encoder.encoder.layer:
        narrow_layer(layer, width)
    encoder.config.intermediate_size = width
