"""Run a slice of transformer layers: the shared trunk and each task's branch."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.masking_utils import create_bidirectional_mask

from finechain.model.dropout import use_fast_dropout
from finechain.model.packing import Packing

# On CUDA, PyTorch may pick cuDNN's attention first (it does on Hopper GPUs), and cuDNN builds a new execution
# plan for each new sequence length: about 6 ms of host time per call, measured on an H100. Length-bucketed
# batches change length almost every batch, so branches use the flash / memory-efficient kernels instead.
CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def tracing() -> bool:
    """True while the model is being traced or exported (TorchScript, ``torch.export``/dynamo, ONNX).

    Example:
        >>> tracing()
        False
    """
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


class LayerStack(nn.Module):
    """A list of encoder layers run in order with the backbone's attention-mask convention."""

    def __init__(self, layers: list[nn.Module], config: object) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.config = config

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, all_layers: bool = False) -> list[torch.Tensor]:
        """Return the output of every layer (or only the last, when ``all_layers`` is false). ``attention_mask`` is
        ``[batch, tokens]`` (1 = a token, 0 = padding) or a ready ``[batch, 1, tokens, tokens]`` boolean mask (a
        :class:`~finechain.model.packing.Packing`'s)."""
        outputs = [hidden]
        if len(self.layers):
            # on CUDA, build the mask even without padding: checking for padding would wait for the GPU every call; when
            # traced (export), too: a trace must not bake in "this batch had no padding"
            skip = not hidden.is_cuda and not tracing()
            if attention_mask.dim() == 4 and self.config._attn_implementation == "eager":  # eager attention adds its mask
                blocked = torch.finfo(hidden.dtype).min
                attention_mask = torch.zeros_like(attention_mask, dtype=hidden.dtype).masked_fill(~attention_mask, blocked)
            bias = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden, attention_mask=attention_mask, allow_is_bidirectional_skip=skip
            )
            with sdpa_kernel(CUDA_ATTENTION) if hidden.is_cuda else contextlib.nullcontext():
                for layer in self.layers:
                    hidden = layer(hidden, bias)
                    if all_layers:
                        outputs.append(hidden)
        return outputs if all_layers else [hidden]


class Trunk(nn.Module):
    """Embeddings plus layers ``0..split-1`` of the backbone; shared by every task, frozen.

    Example:
        >>> trunk = Trunk(encoder, split=3)  # doctest: +SKIP
        >>> hidden = trunk(input_ids, attention_mask)  # [batch, tokens, hidden]  # doctest: +SKIP
    """

    def __init__(self, encoder: nn.Module, split: int) -> None:
        super().__init__()
        layers = list(encoder.encoder.layer)
        self.embeddings = encoder.embeddings
        self.stack = LayerStack(layers[:split], encoder.config)
        self.split = split
        use_fast_dropout(self)  # active only when joint training tunes the trunk
        self.requires_grad_(False)
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        """Hidden states after layer ``split - 1`` (the embeddings when ``split == 0``); with ``packing``, in its
        packed rows."""
        return self.all_states(input_ids, attention_mask, packing, all_layers=False)[-1]

    def all_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, packing: Packing | None = None, all_layers: bool = True
    ) -> list[torch.Tensor]:
        """The embeddings and every trunk layer's output (``split + 1`` tensors; the last is :meth:`forward`'s). With
        ``packing`` the embeddings are computed on the padded batch and the layers run on its packed rows."""
        hidden = self.embeddings(input_ids=input_ids)
        if packing is None:
            return self.stack(hidden, attention_mask, all_layers=all_layers)
        return self.stack(packing.pack(hidden), packing.mask, all_layers=all_layers)


def copy_layers(layers: list[nn.Module]) -> list[nn.Module]:
    """Independent deep copies of ``layers``: a new task branch starts from these.

    Example:
        >>> [type(x).__name__ for x in copy_layers([nn.Linear(2, 2)])]
        ['Linear']
    """
    return [copy.deepcopy(layer) for layer in layers]
