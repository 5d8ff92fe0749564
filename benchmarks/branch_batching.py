"""Should branches of equal depth run as one batched kernel? Times the branch part of a 4-task chain (the
trunk's output is computed once, outside the clock) two ways on the same real batches:

- ``one after another``: what the inference engine's ``forward`` does, each task's layers in turn;
- ``stacked (torch.func.vmap)``: the 4 branches' weights stacked and run by one vmapped call, so every
  linear layer becomes one batched matrix product over the 4 tasks (the standard model-ensembling recipe).

    python -m benchmarks branch-batching [--quick] [--tasks 4] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
from torch.func import functional_call, stack_module_state, vmap

from benchmarks.common import BACKBONE, CLASSIFICATION_SETS, DATASETS, Recorder, timed
from finechain.data.batching import pad_ids
from finechain.data.readers import read_examples
from finechain.data.tokens import inference_batches
from finechain.model.chain_model import ChainModel
from finechain.model.layers import LayerStack
from finechain.model.precision import autocast_context, resolve_precision


def _stacked(stacks: list[LayerStack]):
    """One callable running every stack on the same input through vmap over their stacked weights."""
    params, buffers = stack_module_state(stacks)
    skeleton = copy.deepcopy(stacks[0]).to("meta")

    def one(p: dict, b: dict, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (hidden, mask))[-1]

    batched = vmap(one, in_dims=(0, 0, None, None))
    return lambda hidden, mask: batched(params, buffers, hidden, mask)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks branch-batching", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 texts, 1 repeat")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--texts", type=int, default=768)
    parser.add_argument("--split", type=int, default=4, help="trunk depth (4 = the joint default: 2-layer branches)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.repeats = 64, 1
    warnings.filterwarnings("ignore", message=".*batching rule.*")  # vmap falls back to a loop for CPU attention
    rec = Recorder("branch_batching", args.device)
    model = ChainModel.from_backbone(BACKBONE, split=args.split).to(args.device).eval()
    device = model.device
    texts = [r.text for name in CLASSIFICATION_SETS for r in read_examples(DATASETS / CLASSIFICATION_SETS[name][1])]
    texts = texts[:: max(1, len(texts) // args.texts)][: args.texts]
    ids, _ = model.encode(texts)
    stacks = []
    for _ in range(args.tasks):  # distinct weights per task, as after training
        stack = LayerStack(model.fresh_branch(), model.encoder_config).to(device).eval()
        with torch.no_grad():
            for p in stack.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        stacks.append(stack)
    stacked = _stacked(stacks)
    label = f"{args.tasks} branches x {len(stacks[0].layers)} layers"
    for precision in ("fp32", "auto"):
        resolved = resolve_precision(device, precision)
        with torch.inference_mode(), autocast_context(device, precision):
            padded = [pad_ids([ids[i] for i in batch], model.pad_id) for batch in inference_batches([len(x) for x in ids], 64, device)]
            batches = [(mask.to(device), model.trunk(input_ids.to(device), mask.to(device))) for input_ids, mask in padded]

            def sequential(batches: list = batches) -> None:
                for mask, hidden in batches:
                    [stack(hidden, mask)[-1] for stack in stacks]
                _sync(device)

            def batched(batches: list = batches) -> None:
                for mask, hidden in batches:
                    stacked(hidden, mask)
                _sync(device)

            mask, hidden = batches[0]
            gap = (stacked(hidden, mask)[1].float() - stacks[1](hidden, mask)[-1].float()).abs().max().item()
            for variant, fn in (("one after another", sequential), ("stacked (torch.func.vmap)", batched)):
                seconds = timed(fn, args.repeats)
                rec.add(label, "finechain", f"{variant}, {resolved}", "samples_per_second", len(texts) / seconds, "texts/s (branches only)")
            rec.add(label, "finechain", f"stacked (torch.func.vmap), {resolved}", "max_abs_difference", gap, "vs one after another")
    print(f"wrote {rec.save('branch_batching_quick' if args.quick else 'branch_batching', vars(args))}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
