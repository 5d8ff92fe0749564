"""The training losses that heads name (:attr:`finechain.heads.Head.loss`): one function per name, in float32."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from finechain.registry import Registry

IGNORE = -100  # target of tokens that are not a word's first sub-word

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[Loss] = Registry("loss")


@LOSSES.register("cross_entropy")
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None, gamma: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy of ``[batch, labels]`` logits against label indices.

    ``weight`` (one per label) weighs each example by its gold label's weight, averaged over the weights (as
    PyTorch's weighted cross-entropy); ``gamma > 0`` is the focal loss (Lin et al. 2017): each example's term is
    scaled by ``(1 - p_gold) ** gamma``, so that examples the model already gets right count less.

    Example:
        >>> round(float(cross_entropy(torch.zeros(1, 2), torch.tensor([0]))), 4)
        0.6931
        >>> easy = torch.tensor([[3.0, 0.0]])
        >>> bool(cross_entropy(easy, torch.tensor([0]), gamma=2.0) < cross_entropy(easy, torch.tensor([0])) / 10)
        True
    """
    if not gamma:
        return F.cross_entropy(logits.float(), targets, weight=weight)
    log_p = torch.log_softmax(logits.float(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    per = -((1.0 - log_p.exp()) ** gamma) * log_p
    if weight is None:
        return per.mean()
    given = weight[targets]
    return (per * given).sum() / given.sum()


@LOSSES.register("binary_cross_entropy")
def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One sigmoid cross-entropy per label, averaged."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


@LOSSES.register("mean_squared_error")
def mean_squared_error(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error of ``[batch, 1]`` predictions."""
    return F.mse_loss(logits.float().squeeze(-1), targets)


@LOSSES.register("token_cross_entropy")
def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the tokens whose target is set (each word's first sub-word); ``targets`` may be wider than
    the batch's ``[batch, tokens, labels]`` logits."""
    gold = targets[:, : logits.shape[1]]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=IGNORE)


def word_sequences(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each text's scored tokens (those whose target is set: its words' first sub-words) moved to the front, in order:
    ``[texts, words, labels]`` scores, ``[texts, words]`` tags (0 past a text's words) and the words' mask.

    Example:
        >>> scores, tags, mask = word_sequences(torch.arange(6.0).reshape(1, 3, 2), torch.tensor([[-100, 1, 0]]))
        >>> scores.tolist(), tags.tolist(), mask.tolist()
        ([[[2.0, 3.0], [4.0, 5.0]]], [[1, 0]], [[True, True]])
    """
    scored = targets != IGNORE
    counts = scored.sum(1)
    width = max(int(counts.max()), 1) if counts.numel() else 1
    order = torch.sort((~scored).to(torch.uint8), dim=1, stable=True).indices[:, :width]  # scored positions first
    scores = logits.gather(1, order.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    mask = torch.arange(width, device=targets.device) < counts.unsqueeze(1)
    return scores, targets.gather(1, order).clamp(min=0) * mask, mask


@LOSSES.register("crf")
def crf_negative_log_likelihood(
    logits: torch.Tensor, targets: torch.Tensor, start: torch.Tensor, moves: torch.Tensor, end: torch.Tensor
) -> torch.Tensor:
    """Linear-chain CRF loss: minus the log-probability of each text's gold tag sequence (its words' first sub-words'
    scores plus the ``start``, ``moves`` and ``end`` scores, against all sequences by the forward algorithm), per word,
    so that it is on the scale of the per-word cross-entropy.

    Example:
        >>> logits, targets = torch.zeros(1, 2, 2), torch.tensor([[0, 1]])
        >>> round(float(crf_negative_log_likelihood(logits, targets, torch.zeros(2), torch.zeros(2, 2), torch.zeros(2))), 4)
        0.6931
    """
    scores, tags, mask = word_sequences(logits.float(), targets[:, : logits.shape[1]])
    start, moves, end = start.float(), moves.float(), end.float()
    texts = mask.any(1)
    if not bool(texts.any()):
        return logits.sum() * 0.0
    scores, tags, mask = scores[texts], tags[texts], mask[texts]
    last = tags.gather(1, (mask.sum(1, keepdim=True) - 1))
    emitted = scores.gather(2, tags.unsqueeze(-1)).squeeze(-1)
    gold = start[tags[:, 0]] + (emitted * mask).sum(1) + (moves[tags[:, :-1], tags[:, 1:]] * mask[:, 1:]).sum(1) + end[last.squeeze(1)]
    alpha = start + scores[:, 0]  # [texts, labels]: log-sum of every path's score ending in each tag
    for t in range(1, scores.shape[1]):
        step = torch.logsumexp(alpha.unsqueeze(2) + moves, dim=1) + scores[:, t]
        alpha = torch.where(mask[:, t : t + 1], step, alpha)
    partition = torch.logsumexp(alpha + end, dim=1)
    return (partition - gold).sum() / mask.sum()


# Distillation: the student's outputs against the teacher's, per head loss name. ``mask`` is the batch's attention
# mask (token-level outputs are averaged over real tokens); ``temperature`` softens both distributions (Hinton et al.),
# and the loss is scaled by its square so that its gradients keep their size as it changes.
SoftLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
SOFT_LOSSES: Registry[SoftLoss] = Registry("distillation loss")


@SOFT_LOSSES.register("cross_entropy")
@SOFT_LOSSES.register("token_cross_entropy")
@SOFT_LOSSES.register("crf")  # a CRF student learns its teacher's word scores; it keeps the teacher's move scores
def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the student's softmax against the teacher's (both at ``temperature``), per text or per token.

    Example:
        >>> teacher = torch.tensor([[2.0, 0.0]])
        >>> bool(soft_cross_entropy(teacher, teacher, torch.ones(1, 1), 2.0) < soft_cross_entropy(-teacher, teacher, torch.ones(1, 1), 2.0))
        True
    """
    targets = torch.softmax(teacher.float() / temperature, dim=-1)
    per = -(targets * torch.log_softmax(student.float() / temperature, dim=-1)).sum(-1)
    if per.dim() == 2:  # [batch, tokens]: only real tokens count
        weights = mask.to(per.dtype)
        per = (per * weights).sum() / weights.sum().clamp(min=1.0)
    return per.mean() * temperature**2


@SOFT_LOSSES.register("binary_cross_entropy")
def soft_binary_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Each label's sigmoid cross-entropy against the teacher's probability (both at ``temperature``)."""
    targets = torch.sigmoid(teacher.float() / temperature)
    return F.binary_cross_entropy_with_logits(student.float() / temperature, targets) * temperature**2


@SOFT_LOSSES.register("mean_squared_error")
def soft_squared_error(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Squared error to the teacher's prediction (a regression has no temperature)."""
    return F.mse_loss(student.float(), teacher.float())


# Contrastive training: how alike two texts' labels are, per head loss name: ``[batch, batch]`` in [0, 1] from the
# batch's targets (heads with ``pairs``).
PairTargets = Callable[[torch.Tensor], torch.Tensor]
PAIR_TARGETS: Registry[PairTargets] = Registry("pair target")


@PAIR_TARGETS.register("cross_entropy")
def same_label(targets: torch.Tensor) -> torch.Tensor:
    """1 where two texts have the same label, else 0.

    Example:
        >>> same_label(torch.tensor([0, 1, 0])).tolist()
        [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    """
    return (targets[:, None] == targets[None, :]).float()


@PAIR_TARGETS.register("binary_cross_entropy")
def label_overlap(targets: torch.Tensor) -> torch.Tensor:
    """The Jaccard overlap of two texts' label sets (two texts without labels: 1).

    Example:
        >>> label_overlap(torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])).tolist()
        [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    t = targets.float()
    both = t @ t.T
    either = t.sum(1, keepdim=True) + t.sum(1)[None, :] - both
    return torch.where(either > 0, both / either.clamp_min(1.0), torch.ones_like(both))


def pair_loss(embeddings: torch.Tensor, similar: torch.Tensor) -> torch.Tensor:
    """SetFit's pair objective (Tunstall et al. 2022) over every pair of a batch: the squared gap between two texts'
    cosine similarity and how alike their labels are (``similar``, in [0, 1]). Alike and unlike pairs weigh half each
    (a batch of many labels has few alike pairs), and a text is not paired with itself.

    Example:
        >>> apart = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> float(pair_loss(apart, torch.eye(2))), float(pair_loss(apart, torch.ones(2, 2)))
        (0.0, 0.5)
    """
    unit = F.normalize(embeddings.float(), dim=-1)
    error = (unit @ unit.T - similar) ** 2
    others = 1.0 - torch.eye(len(unit), device=unit.device)
    alike, unlike = similar * others, (1.0 - similar) * others
    return 0.5 * (error * alike).sum() / alike.sum().clamp_min(1e-6) + 0.5 * (error * unlike).sum() / unlike.sum().clamp_min(1e-6)
