"""Trunk outputs for a fixed set of texts, computed once and reused every epoch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from finechain.data.batching import index_tensor, pad_ids
from finechain.data.tokens import inference_batches
from finechain.model.layers import Trunk
from finechain.model.precision import autocast_context, resolve_precision


class TrunkFeatures:
    """Serve ``(hidden, attention_mask)`` batches for token-id sequences.

    ``cache="memory"`` keeps all trunk states in one flat tensor, ``"disk"`` in a memory-mapped
    ``.npy`` file (no pickle), ``"off"`` recomputes them each batch (saves memory, costs time).
    The trunk runs at ``precision`` (``auto``, ``bf16`` or ``fp32``, see ``finechain.model.precision``): the training precision, so that a
    tail trains on the states the chain computes when it predicts; stored as fp32 either way.
    With ``all_states`` (for layer-mixing tasks) ``hidden`` is the list of every trunk state, not only the last.

    Example:
        >>> feats = TrunkFeatures(chain.trunk, ids, pad_id=0, cache="memory")  # doctest: +SKIP
        >>> hidden, mask = feats.batch([0, 5, 9])  # doctest: +SKIP
    """

    def __init__(
        self,
        trunk: Trunk,
        ids: list[list[int]],
        pad_id: int,
        cache: str = "memory",
        batch_size: int = 128,
        cache_file: Path | None = None,
        all_states: bool = False,
        precision: str = "fp32",
    ) -> None:
        self.trunk = trunk
        self.precision = precision
        self.depth = trunk.split + 1 if all_states else 1
        self.ids = ids
        self.pad_id = pad_id
        self.cache = cache
        self.lengths = [len(x) for x in ids]
        self.device = next(trunk.parameters()).device
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        # where each sequence starts in the flat cache and how long it is, kept beside the cache
        self._table_device = torch.device("cpu") if cache == "disk" else self.device
        self._starts = torch.as_tensor(self.offsets[:-1], device=self._table_device)
        self._lengths = torch.as_tensor(self.lengths, device=self._table_device)
        self.flat: torch.Tensor | np.ndarray | None = None
        if cache != "off":
            self._fill(batch_size, cache_file)

    def _fill(self, batch_size: int, cache_file: Path | None) -> None:
        hidden_size = self.trunk.stack.config.hidden_size
        total = int(self.offsets[-1])
        if self.cache == "disk":
            if cache_file is None:
                raise ValueError("cache='disk' needs a cache_file")
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            flat = np.lib.format.open_memmap(cache_file, mode="w+", dtype=np.float32, shape=(total, self.depth, hidden_size))
        else:
            flat = torch.empty((total, self.depth, hidden_size), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for batch in inference_batches(self.lengths, batch_size, self.device):
                hidden, mask = self._compute(batch)
                positions, valid = self._positions(batch)
                rows = hidden[mask.bool()]
                if self.cache == "disk":
                    flat[positions[valid].numpy()] = rows.cpu().numpy()
                else:
                    flat[positions[valid]] = rows
        if self.cache == "disk":
            flat.flush()
            del flat
            self.flat = np.load(cache_file, mmap_mode="r", allow_pickle=False)
        else:
            self.flat = flat

    def _compute(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[batch, tokens, depth, hidden]``: the last ``depth`` trunk states of each token; and the attention mask."""
        input_ids, mask = pad_ids([self.ids[i] for i in indices], self.pad_id)
        mask = mask.to(self.device)
        with autocast_context(self.device, self.precision):
            states = self.trunk.all_states(input_ids.to(self.device), mask)
        return torch.stack(states[-self.depth :], dim=2).float(), mask

    def _unstack(self, hidden: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return hidden[:, :, 0] if self.depth == 1 else list(hidden.unbind(2))

    def _positions(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each token of each listed sequence sits in the flat cache (``[batch, width]``; padding points at
        the sequence's first token) and the boolean padding mask, on the cache's device: a few tensor ops instead
        of a loop per row."""
        return self._index_positions(index_tensor(indices, self._table_device), max(self.lengths[i] for i in indices))

    def _index_positions(self, index: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_positions` for an index tensor and a given width: tensor operations only, no wait for the GPU."""
        steps = torch.arange(width, device=self._table_device)
        mask = steps[None, :] < self._lengths[index][:, None]
        return self._starts[index][:, None] + torch.where(mask, steps, 0), mask

    def batch(self, indices: list[int]) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """Padded trunk states ``[batch, tokens, hidden]`` (a list of them with ``all_states``) and the attention mask."""
        if self.cache == "off":
            with torch.no_grad():
                hidden, mask = self._compute(indices)
            return self._unstack(hidden), mask
        assert self.flat is not None
        positions, valid = self._positions(indices)
        hidden = torch.from_numpy(self.flat[positions.numpy()]) if isinstance(self.flat, np.ndarray) else self.flat[positions]
        return self._masked(hidden.to(self.device), valid.to(self.device))

    def gather(self, index: torch.Tensor, width: int) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """:meth:`batch` for a long tensor of indices on the device, padded to ``width`` tokens (at least the longest
        listed sequence): device operations only, with fixed shapes (what a CUDA graph can record). Needs
        ``cache="memory"``.

        Example:
            >>> hidden, mask = feats.gather(torch.tensor([0, 5, 9]), width=16)  # [3, 16, hidden], [3, 16]  # doctest: +SKIP
        """
        if not isinstance(self.flat, torch.Tensor):
            raise ValueError(f"gather() needs the trunk states in memory (cache='memory'), not cache='{self.cache}'")
        positions, valid = self._index_positions(index, width)
        return self._masked(self.flat[positions], valid)

    def _masked(self, hidden: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        return self._unstack(hidden * valid[:, :, None, None]), valid.long()


class FeatureCache:
    """Trunk states kept across training runs: several runs on the same texts with the same trunk (the trials of a
    search, a task retrained with other settings) compute them once. Only in-memory caches (``cache="memory"``) are
    shared; the key holds the texts' token ids, the trunk's identity and weight versions (a trunk tuned in place is a
    new trunk), the precision and whether every trunk state is kept. :meth:`clear` frees the memory.

    Example:
        >>> cache = FeatureCache()
        >>> a = cache.get(chain.trunk, ids, pad_id=0)  # doctest: +SKIP
        >>> cache.get(chain.trunk, ids, pad_id=0) is a  # doctest: +SKIP
        True
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[object, ...], TrunkFeatures] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every cached state."""
        self._entries.clear()

    def get(
        self,
        trunk: Trunk,
        ids: list[list[int]],
        pad_id: int,
        cache: str = "memory",
        batch_size: int = 128,
        cache_file: Path | None = None,
        all_states: bool = False,
        precision: str = "fp32",
    ) -> TrunkFeatures:
        """The :class:`TrunkFeatures` of ``ids``, computed now or found from an earlier run."""
        if cache != "memory":
            return TrunkFeatures(trunk, ids, pad_id, cache, batch_size, cache_file, all_states, precision)
        device = next(trunk.parameters()).device
        digest = hashlib.sha256(np.asarray([len(x) for x in ids], dtype=np.int64).tobytes())
        for row in ids:
            digest.update(np.asarray(row, dtype=np.int64).tobytes())
        versions = tuple(p._version for p in trunk.parameters())
        key = (id(trunk), versions, digest.hexdigest(), all_states, resolve_precision(device, precision), pad_id, str(device))
        if key not in self._entries:
            self._entries[key] = TrunkFeatures(trunk, ids, pad_id, cache, batch_size, cache_file, all_states, precision)
        return self._entries[key]
