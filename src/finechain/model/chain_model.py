"""The chain as a network: one shared trunk, a tail per task, and the backbone's own upper layers for embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finechain.branches import BranchOptions, branch_mode
from finechain.data.batching import pad_ids
from finechain.data.inputs import select_tasks
from finechain.data.tokens import Encoded, encode_texts
from finechain.errors import FinechainError
from finechain.heads import Head
from finechain.model.backbone import BackboneRef, check_max_length, load_tokenizer, resolve_backbone
from finechain.model.encoder import layer_shape, load_encoder
from finechain.model.layers import LayerStack, Trunk, copy_layers
from finechain.model.packing import Packing
from finechain.model.pooling import pool
from finechain.model.task import TaskModel
from finechain.spec import DEFAULT_BACKBONE, default_split


class ChainModel(nn.Module):
    """A pretrained encoder split at ``split``: the shared trunk (embeddings + lower layers) and one tail per task.

    ``forward(input_ids, attention_mask, tasks)`` runs the trunk once and the tails of ``tasks``; it has fixed
    control flow for given tasks, so it can be traced and exported. The tokenizer and ``max_length`` travel with the
    model (how texts become its inputs); where the backbone came from is ``backbone`` (source and sha256).

    Example:
        >>> model = ChainModel.from_backbone("all-MiniLM-L6-v2", split=2)  # doctest: +SKIP
        >>> model(input_ids, attention_mask, tasks=("sentiment",))["sentiment"].shape  # doctest: +SKIP
        torch.Size([8, 2])
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        backbone: BackboneRef,
        backbone_path: Path,
        split: int,
        max_length: int = 128,
        layer_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        num_layers = len(encoder.encoder.layer)
        if not 0 <= split <= num_layers:
            raise FinechainError(
                f"split {split} is outside 0..{num_layers} for this backbone", fix=f"choose 0..{num_layers}", field="split"
            )
        check_max_length(max_length, encoder.config, tokenizer)
        self.encoder_config = encoder.config
        self.tokenizer = tokenizer
        self.backbone = backbone
        self.backbone_path = backbone_path
        self.split = split
        self.num_layers = num_layers
        # which of the backbone's layers these are (a student chain keeps some of them: model.student)
        self.layer_ids = list(layer_ids) if layer_ids is not None else list(range(num_layers))
        self.max_length = max_length
        self.trunk = Trunk(encoder, split)
        # The backbone's own upper layers: templates for new branches and the rest of the encoder for embeddings
        # (frozen, never saved: they are the backbone's).
        self.upper = LayerStack(list(encoder.encoder.layer)[split:], encoder.config).requires_grad_(False).eval()
        self.tasks = nn.ModuleDict()
        self.trunk_tuned = False  # the trunk's layers were trained (joint sharing) and are saved with the chain
        self.compression: dict[str, Any] | None = None  # how a student chain was made (model.student), for the manifest
        self.ffn_width: int | None = None  # a narrowed student's feed-forward neurons per layer (None: the backbone's)
        self.attention_heads: int | None = None  # a pruned student's attention heads per layer (None: the backbone's)

    @classmethod
    def from_backbone(
        cls,
        backbone: str = DEFAULT_BACKBONE,
        split: int | str = "auto",
        max_length: int = 128,
        base_dir: Path | None = None,
        sharing: str = "frozen",
    ) -> ChainModel:
        """A model with no tasks yet on a packaged backbone, a local folder or a hub id; ``split="auto"`` picks the
        measured default trunk depth for ``sharing`` (``frozen`` or ``joint``).

        Example:
            >>> ChainModel.from_backbone(split=6).num_layers  # doctest: +SKIP
            6
        """
        path, ref = resolve_backbone(backbone, base_dir)
        encoder = load_encoder(path)
        depth = default_split(len(encoder.encoder.layer), sharing) if split == "auto" else int(split)
        return cls(encoder, load_tokenizer(path), ref, path, depth, max_length)

    @property
    def device(self) -> torch.device:
        """Where the trunk lives."""
        return next(self.trunk.parameters()).device

    @property
    def pad_id(self) -> int:
        """The tokenizer's padding id."""
        return self.tokenizer.pad_token_id or 0

    # tasks ------------------------------------------------------------------------------------
    def layer_shape(self) -> tuple[int | None, int | None]:
        """The feed-forward neurons and attention heads of this chain's layers (a pruned student's fewer; None where
        the backbone's config does not say).

        Example:
            >>> model.layer_shape()  # doctest: +SKIP
            (1536, 12)
        """
        config = self.encoder_config
        width, heads = getattr(config, "intermediate_size", None), getattr(config, "num_attention_heads", None)
        return self.ffn_width or width, self.attention_heads or heads

    def narrower_branch(self, task: TaskModel) -> dict[str, int | None]:
        """``task``'s branch layers' feed-forward neurons and attention heads (``ffn_width``, ``attention_heads``)
        where they differ from this chain's layers (a student's branch narrowed further than its trunk), else None.

        Example:
            >>> model.narrower_branch(model.tasks["intent"])  # doctest: +SKIP
            {'ffn_width': 768, 'attention_heads': None}
        """
        chains = self.layer_shape()
        mine = layer_shape(task.branch.layers[0]) if len(task.branch.layers) else chains
        return {key: own if own != chain else None for key, own, chain in zip(("ffn_width", "attention_heads"), mine, chains, strict=True)}

    def fresh_branch(self, layers: int | None = None) -> list[nn.Module]:
        """New copies of the pretrained upper layers (all of them, or the first ``layers``), to start a task branch from."""
        return copy_layers(list(self.upper.layers)[:layers])

    def new_task(self, head: Head, branch: BranchOptions | Mapping[str, Any] | None = None) -> TaskModel:
        """An untrained tail for ``head`` (not yet attached), on this model's device. A head with
        :meth:`~finechain.heads.Head.prompts` (zero-shot) starts its linear layer from their embeddings.

        Example:
            >>> task = model.new_task(ClassificationHead(["neg", "pos"]))  # doctest: +SKIP
        """
        task = TaskModel(head, self.fresh_branch(), self.encoder_config, branch_mode(branch), self.num_layers + 1).to(self.device)
        prompts = head.prompts()
        if prompts:
            task.head_layer.set_prototypes(self.prompt_vectors(task, prompts))
        return task

    @torch.no_grad()
    def prompt_vectors(self, task: TaskModel, prompts: Sequence[Sequence[str]], batch_size: int = 64) -> torch.Tensor:
        """One unit vector per group of ``prompts``: the mean of the L2-normalised features ``task`` pools from each
        prompt (this trunk, the task's branch and pooling), normalised again.

        Example:
            >>> model.prompt_vectors(task, [["It was great."], ["It was awful.", "It was bad."]]).shape  # doctest: +SKIP
            torch.Size([2, 384])
        """
        if self.trunk_tuned:
            raise FinechainError(
                "label embeddings need the backbone's own trunk, and this chain's trunk was fine-tuned (sharing: joint)",
                fix="add the zero-shot task to a chain trained with sharing: frozen",
            )
        flat = [text for group in prompts for text in group]
        ids, _ = self.encode(flat)
        was_training = task.training
        task.eval()
        vectors = []
        for start in range(0, len(ids), batch_size):
            input_ids, mask = pad_ids(ids[start : start + batch_size], self.pad_id)
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
            states = self.trunk_states(input_ids, mask, task.needs_trunk_states)
            hidden = task.features(states if task.needs_trunk_states else states[-1], mask)
            vectors.append(nn.functional.normalize(task.head_layer.features(hidden, mask).float(), dim=-1))
        task.train(was_training)
        flat_vectors = torch.cat(vectors)
        sizes = torch.tensor([len(group) for group in prompts], device=flat_vectors.device)
        groups = torch.repeat_interleave(torch.arange(len(prompts), device=flat_vectors.device), sizes)
        means = torch.zeros(len(prompts), flat_vectors.shape[1], device=flat_vectors.device).index_add_(0, groups, flat_vectors)
        return nn.functional.normalize(means, dim=-1)

    def attach(self, name: str, task: TaskModel) -> None:
        """Add (or replace) a task's tail, in eval mode; no other task is touched."""
        self.tasks[name] = task.eval()

    def task_names(self, tasks: Sequence[str] | None = None) -> list[str]:
        """``tasks`` checked against this model (default: all of them, in the order they were added).

        Example:
            >>> model.task_names(["intent"])  # doctest: +SKIP
            ['intent']
        """
        return select_tasks(self.tasks, tasks)

    def merge_adapters(self) -> list[str]:
        """Fold every LoRA branch into plain layers (peft's merge), so exporters see ordinary layers and inference
        skips the adapters' extra products; returns the merged tasks.

        Example:
            >>> model.merge_adapters()  # doctest: +SKIP
            ['sentiment_lora']
        """
        return [name for name, task in self.tasks.items() if task.merge_adapters()]

    # inputs -----------------------------------------------------------------------------------
    def encode(self, texts: list[Any], with_words: bool = False) -> tuple[list[list[int]], Encoded | None]:
        """Token ids for raw texts or word lists; word positions too when asked (or for word lists).

        Example:
            >>> ids, words = model.encode(["hello world"])  # doctest: +SKIP
        """
        return encode_texts(self.tokenizer, texts, self.max_length, with_words)

    # the network ------------------------------------------------------------------------------
    def trunk_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, all_states: bool = False, packing: Packing | None = None
    ) -> list[torch.Tensor]:
        """The trunk's output (a list of one), or with ``all_states`` the embeddings and every trunk layer's output;
        with ``packing`` (:func:`~finechain.model.packing.plan_packing`), in its packed rows."""
        return self.trunk.all_states(input_ids, attention_mask, packing, all_layers=all_states)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tasks: Sequence[str] | None = None, packing: Packing | None = None
    ) -> dict[str, torch.Tensor]:
        """Every requested task's head outputs (default: all tasks): the trunk once, then each tail; with ``packing``
        the layers run on its packed rows (the heads read the padded layout)."""
        names = list(self.tasks) if tasks is None else list(tasks)
        states = self.trunk_states(input_ids, attention_mask, any(self.tasks[n].needs_trunk_states for n in names), packing)
        return {
            name: self.tasks[name](states if self.tasks[name].needs_trunk_states else states[-1], attention_mask, packing) for name in names
        }

    @property
    def embedding_size(self) -> int:
        """The length of the backbone's sentence embeddings."""
        return int(self.encoder_config.hidden_size)

    def sentence_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The untouched backbone's mean-pooled last layer (trunk + the backbone's own upper layers)."""
        return pool(self.upper(self.trunk(input_ids, attention_mask), attention_mask)[-1], attention_mask, "mean")
