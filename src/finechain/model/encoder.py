"""Load a backbone's encoder (PyTorch), after :func:`~finechain.model.backbone.inspect_backbone` checked its folder, and
cut it to a student chain's shape: fewer layers, fewer feed-forward neurons and attention heads per layer."""

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
    layer.intermediate.dense, layer.output.dense = sliced(into, rows=neurons), sliced(out, columns=neurons)


def sliced(linear: nn.Linear, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> nn.Linear:
    """A copy of ``linear`` with only the output ``rows`` (and their biases) and/or the input ``columns`` given
    (indices, in this order), trainable as the original was.

    Example:
        >>> sliced(nn.Linear(4, 3), rows=torch.tensor([0, 2])).weight.shape
        torch.Size([2, 4])
        >>> sliced(nn.Linear(4, 3), columns=torch.tensor([1])).in_features
        1
    """
    weight = linear.weight.detach()
    weight = weight if rows is None else weight[rows]
    weight = weight if columns is None else weight[:, columns]
    bias = linear.bias
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias if rows is None else bias[rows])
    return new.requires_grad_(linear.weight.requires_grad)


def attention_heads(layer: nn.Module) -> tuple[nn.Module, list[nn.Linear], nn.Linear]:
    """An encoder layer's self-attention (which counts its heads), its query, key and value projections and the linear
    layer out of the heads (BERT, RoBERTa, ELECTRA, MiniLM and XLM-R name them ``attention.self.query`` ... and
    ``attention.output.dense``).

    Example:
        >>> attention, (query, key, value), out = attention_heads(encoder.encoder.layer[0])  # doctest: +SKIP
        >>> attention.num_attention_heads * attention.attention_head_size == out.in_features  # doctest: +SKIP
        True
    """
    attention = getattr(getattr(layer, "attention", None), "self", None)
    projections = [getattr(attention, name, None) for name in ("query", "key", "value")]
    out = getattr(getattr(getattr(layer, "attention", None), "output", None), "dense", None)
    width = getattr(attention, "num_attention_heads", 0) * getattr(attention, "attention_head_size", 0)
    if not all(isinstance(x, nn.Linear) and x.out_features == width for x in projections) or not isinstance(out, nn.Linear) or not width:
        raise ArtifactError(
            f"a {type(layer).__name__} has no attention heads (attention.self.query/key/value, attention.output.dense) to prune",
            fix="use a BERT-style encoder (BERT, RoBERTa, ELECTRA, MiniLM, XLM-R), or keep every attention head",
        )
    return attention, projections, out  # type: ignore[return-value]


def keep_heads(layer: nn.Module, heads: torch.Tensor) -> None:
    """Keep only the attention ``heads`` (indices, in this order) of an encoder layer: the query, key and value
    projections lose the other heads' rows, the output layer their columns. The layer computes what it did with the
    other heads' outputs set to zero. The encoder's config keeps the backbone's head count (a head's size comes from
    it); the layer's own count follows.

    Example:
        >>> keep_heads(layer, torch.tensor([0, 2, 3]))  # doctest: +SKIP
        >>> layer.attention.self.num_attention_heads  # doctest: +SKIP
        3
    """
    attention, projections, out = attention_heads(layer)
    size = attention.attention_head_size
    columns = (heads[:, None] * size + torch.arange(size, device=heads.device)).flatten()
    attention.query, attention.key, attention.value = (sliced(x, rows=columns) for x in projections)
    layer.attention.output.dense = sliced(out, columns=columns)
    attention.num_attention_heads, attention.all_head_size = len(heads), len(columns)


def head_scores(layer: nn.Module, activity: torch.Tensor | None = None) -> torch.Tensor:
    """How much each attention head of ``layer`` adds to its output: the mean size of what it adds per token over
    some texts (``activity``), or without it the size of its value weights times that of its output weights.

    Example:
        >>> head_scores(layer).shape  # doctest: +SKIP
        torch.Size([12])
    """
    attention, (_, _, value), out = attention_heads(layer)
    if activity is not None:
        return activity.float()
    heads, size = attention.num_attention_heads, attention.attention_head_size
    values = value.weight.detach().float().view(heads, size, -1).flatten(1).norm(dim=1)
    outs = out.weight.detach().float().view(-1, heads, size).transpose(0, 1).flatten(1).norm(dim=1)
    return values * outs


def narrow_heads(layer: nn.Module, count: int, activity: torch.Tensor | None = None) -> None:
    """Keep the ``count`` attention heads of ``layer`` that :func:`head_scores` ranks first (in their order).

    Example:
        >>> narrow_heads(layer, 10)  # doctest: +SKIP
    """
    scores = head_scores(layer, activity)
    if not 1 <= count <= len(scores):
        raise ValueError(f"{count} attention heads do not fit a layer of {len(scores)}")
    keep_heads(layer, scores.topk(count).indices.sort().values)


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


def narrow(
    layer: nn.Module,
    width: int | None = None,
    heads: int | None = None,
    neurons: torch.Tensor | None = None,
    used: torch.Tensor | None = None,
) -> None:
    """``layer`` narrowed to ``width`` feed-forward neurons and/or ``heads`` attention heads (None: as it is), ranked
    by the ``neurons`` and ``used`` heads activity when given, else by weights (:func:`narrow_layer`,
    :func:`narrow_heads`).

    Example:
        >>> narrow(layer, 1152, heads=10)  # doctest: +SKIP
    """
    if width is not None:
        narrow_layer(layer, width, neurons)
    if heads is not None:
        narrow_heads(layer, heads, used)


def layer_shape(layer: nn.Module) -> tuple[int | None, int | None]:
    """An encoder layer's feed-forward neurons and attention heads, None where it has no such part by BERT's names.

    Example:
        >>> layer_shape(encoder.encoder.layer[0])  # doctest: +SKIP
        (1536, 12)
    """
    into = getattr(getattr(layer, "intermediate", None), "dense", None)
    attention = getattr(getattr(layer, "attention", None), "self", None)
    return getattr(into, "out_features", None), getattr(attention, "num_attention_heads", None)


def narrow_encoder(encoder: nn.Module, width: int | None = None, heads: int | None = None) -> None:
    """Every layer of ``encoder`` narrowed to ``width`` feed-forward neurons and/or ``heads`` attention heads (chosen
    by weights alone, so the same backbone always gives the same layers); the config follows the width. A narrowed
    student's saved weights then fit.

    Example:
        >>> narrow_encoder(encoder, 1152, heads=10)  # doctest: +SKIP
        >>> encoder.config.intermediate_size, encoder.encoder.layer[0].attention.self.num_attention_heads  # doctest: +SKIP
        (1152, 10)
    """
    for layer in encoder.encoder.layer:
        narrow(layer, width, heads)
    if width is not None:
        encoder.config.intermediate_size = width
