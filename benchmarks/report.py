"""Regenerate docs/benchmarks.md from benchmarks/results/*.json (tables) and benchmarks/notes/*.md (prose).

python -m benchmarks report
"""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import DROPOUT_VARIANTS, RESULTS, ROOT

NOTES = ROOT / "benchmarks" / "notes"
DOC = Path(os.environ.get("FINECHAIN_DOC", ROOT / "docs" / "benchmarks.md"))
SUITE_TITLES = {
    "train": "Training: a new task, finechain vs the Hugging Face Trainer (full and LoRA)",
    "train_epyc": "Training on a second CPU without bf16 units (AMD EPYC, 2 threads): the same suite, fp32 on both sides",
    "train_epyc_bf16": "Training on a CPU with AVX512-BF16 (AMD EPYC, 2 threads): the same suite, bf16 peer included",
    "train_epyc_bf16_peer": "Training against the bf16 Trainer on the AVX512-BF16 EPYC, after bf16 trunk caching (three runs)",
    "train_epyc_checks": "Training with two validation checks an epoch (the default now), AVX512-BF16 EPYC: fp32 and bf16 Trainer",
    "train_conll_split0": "Training CoNLL-2003 as a spec of one tagging task now trains it (every layer tuned), fp32 EPYC",
    "dropout": "Dropout masks on CPU: time per training step with PyTorch's dropout vs finechain's (AMD EPYC)",
    "train_gpu": "Training on a GPU: SST-2, all 67k examples, finechain vs the Hugging Face Trainer (H100)",
    "train_gpu_h200": "Training on a GPU: SST-2, all 67k examples, finechain vs the Hugging Face Trainer (H200, same command)",
    "train_gpu_head": "Training on a GPU: SST-2 again with the current code (H200, same command)",
    "train_gpu_h100_head": "Training on a GPU: SST-2 with the current code on an H100 (batch 64 and 256)",
    "train_gpu_conll": "Training on a GPU: CoNLL-2003, all 14k sentences, finechain vs the Hugging Face Trainer (H100, before CUDA graphs)",
    "train_gpu_conll_h200": "Training on a GPU: CoNLL-2003, all 14k sentences, with CUDA graphs (H200)",
    "memory": "Memory: serving 1 and 4 tasks",
    "mixing": "Layer mixing: a learned mix of every layer vs the last layer only (CPU)",
    "sharing_full": "Sharing at full size: every training example, the default chain vs per-task Trainer fine-tunes (CPU)",
    "sharing_full_peer_lr": "The peer's learning rate at full size: Banking77, chosen on validation data (CPU)",
    "sharing_full_gpu": "Sharing at full size on a GPU: the default chain, another seed (H100)",
    "sharing_full_cpu_seeds": "Sharing at full size, more seeds: the default chain on a CPU (AMD EPYC, bf16)",
    "sharing_seeds": "Seeds: the default chain vs per-task full fine-tunes over three seeds, 2,000 examples per task (CPU, AMD EPYC)",
    "split_sweep": "Split sweep: accuracy and training time per split depth vs the Hugging Face Trainer (CPU)",
    "infer": "Inference: one chain vs separate models (CPU)",
    "infer_epyc": "Inference on a second CPU without bf16 units (AMD EPYC, 2 threads, fp32)",
    "infer_epyc_bf16": "Inference on a CPU with AVX512-BF16 (AMD EPYC, 2 threads): precision auto = bf16 vs fp32",
    "infer_gpu": "Inference on a GPU: one chain vs separate models",
    "memory_gpu": "Memory on a GPU: serving 1 and 4 tasks",
    "sharing": "Sharing modes: four tasks from one encoder vs per-task full fine-tunes (CPU)",
    "branch_batching": "Branch batching: equal-depth branches as one stacked kernel vs one after another",
    "decoding": "NER decoding: BIO-constrained Viterbi vs per-word argmax (CPU)",
    "export": "Export and compression: the four-task chain in PyTorch, ONNX Runtime fp32 and int8 (CPU)",
    "export_hidden": "Export and compression: students distilled with and without hidden states (CPU)",
    "export_unlabelled": "Export and compression: students distilled over unlabelled texts too (CPU)",
    "export_rerun": "Export and compression: the unlabelled-text student again, on a faster host, plain-attention export (CPU)",
    "export_trunk_only": "Export and compression: students with a 3-layer trunk and no branch layers (CPU)",
    "export_task_branches": "Export and compression: students that keep a branch layer only for the tasks that need one (CPU)",
    "export_task_branches_sst2": "Export and compression: a per-task student with SST-2's whole branch kept (CPU)",
    "export_task_branches_conll": "Export and compression: the within-1% student without CoNLL-2003's branch layer (CPU)",
    "export_task_branches_u2000": "Export and compression: per-task students over twice the unlabelled texts (CPU)",
    "export_avx512": "Export and compression: int8 on a CPU with AVX512-VNNI and bf16 units (CPU)",
    "export_avx512_passes": "Export and compression on a CPU with int8 and bf16 units, exported calls cut for two threads (CPU)",
    "export_avx512_student": "Export and compression on a CPU with int8 and bf16 units: the within-1% student (CPU)",
    "export_avx512_openvino": "Export and compression on a CPU with int8 and bf16 units: OpenVINO and static int8 (CPU)",
    "export_avx512_bf16": "Export and compression on a CPU with int8 and bf16 units: bf16 storage, and the goals measured again (CPU)",
    "export_avx512_ffn": "Export and compression on a CPU with int8 and bf16 units: students with fewer feed-forward neurons (CPU)",
    "export_avx512_ffn_tasks": "Export and compression on a CPU with int8 and bf16 units: narrowed students ranked per task (CPU)",
    "export_avx512_ffn_875": "Export and compression on a CPU with int8 and bf16 units: a student with seven eighths of the neurons (CPU)",
    "export_packed": "Export and compression on a CPU with int8 and bf16 units: exported graphs that take packed rows (CPU)",
    "export_packed_run2": "Export and compression on a CPU with int8 and bf16 units: packed rows, the same command again (CPU)",
    "export_heads": "Export and compression on a CPU with int8 and bf16 units: a student with fewer attention heads (CPU)",
    "export_heads11": "Export and compression on a CPU with int8 and bf16 units: 11 of 12 attention heads, five speed rounds (CPU)",
    "export_heads11_run2": "Export and compression on a CPU with int8 and bf16 units: the 11-head student again, paired rounds (CPU)",
    "export_heads11_run3": "Export and compression on a CPU with int8 and bf16 units: the 11-head student a third time (CPU)",
    "export_paired": "Export and compression on a CPU with int8 and bf16 units: every variant paired with PyTorch within each round (CPU)",
    "export_paired_run2": "Export and compression on a CPU with int8 and bf16 units: paired rounds, a second run (CPU)",
    "export_avx2": "Export on an AVX2 CPU (no VNNI int8 dot products, no bf16): what int8 gains there, and which runtime runs it (CPU)",
    "runtimes": "ONNX runtimes on this CPU: ONNX Runtime vs OpenVINO, dynamic vs static int8 (AMD EPYC, 2 threads)",
    "runtimes_attention": "ONNX graphs with plain attention vs attention traced as SDPA (AMD EPYC, 2 threads)",
    "runtimes_avx512": "ONNX runtimes on a CPU with int8 and bf16 units: ONNX Runtime vs OpenVINO (AMD EPYC, 2 threads)",
    "runtimes_spinning": "Exported engine with a graph per task: ONNX Runtime's spinning threads (AMD EPYC, 2 threads)",
    "kernels": "Matrix products at the chain's shapes per runtime: what int8 can gain at most (CPU)",
    "kernels_avx2": "Matrix products on an AVX2 CPU (no VNNI, no bf16): int8 weights in 7 bits, where 8 overflow (CPU)",
    "export_embeddings": "Sentence embeddings exported: ONNX fp32 and int8 vs sentence-transformers' own ONNX backends (CPU)",
    "decoding_crf": "NER: the tagger vs a CRF tagger, three seeds (CoNLL-2003, CPU)",
    "snips_chain_e10_crf": "SNIPS intent + slots: a CRF slot tagger, 10 epochs (CPU, a tried setting)",
    "zero_shot": "Zero-shot tasks: label names and descriptions, then a few examples (CPU)",
    "thresholds": "Multi-label thresholds: per label, shared or fixed (SNIPS slot types, CoNLL-2003 entity types; CPU)",
    "tagging_defaults": "Tagging with all defaults on small and out-of-genre data vs full fine-tunes (CoNLL-2003, SNIPS slots; CPU)",
    "few_shot": "Few-shot tasks: prototype heads and contrastive tuning vs SetFit (CPU)",
    "few_shot_holdout": "Few-shot recipe variants on held-out training texts (AG News, choosing a setting; CPU)",
    "few_shot_holdout_bf16": "Few-shot recipe variants on held-out training texts, on a CPU with bf16 units (AG News; CPU)",
    "few_shot_label_texts": "Few-shot tasks: the labels' names as one more example each, vs SetFit (CPU)",
    "few_shot_gpu": "Few-shot tasks on a GPU: Banking77 at 64 per class vs SetFit (NVIDIA H200)",
    "robustness": "Robustness and training options: adversarial training, staged training, layer-wise decay, under typos (CPU)",
    "update": "Continual updates: new intents added to a trained task, with and without rehearsal, vs retraining (CPU)",
    "snips": "SNIPS intent + slots: a chain and a flow vs two separately fine-tuned Trainer models (CPU)",
    "snips_chain_e5": "SNIPS intent + slots: the chain at the default 5 epochs (CPU)",
    "snips_chain_s2lr": "SNIPS intent + slots: deeper branches and a faster trunk rate (CPU, a tried setting)",
    "snips_chain_e10": "SNIPS intent + slots: the chain at 10 epochs, as JointBERT trains (CPU, a tried setting)",
    "serve": "Serving: finechain serve under concurrent clients vs four single-task LitServe endpoints (CPU)",
    "pass_cost": "What one more inference pass costs on a CPU, in tokens (how a server's mixed batch is cut)",
    "pass_cost_onnx": "What one more inference pass costs on a CPU: the ONNX export",
    "pass_cost_onnx_threads": "What one more inference pass costs on a CPU: the ONNX export on two threads",
    "pass_cost_onnx_int8": "What one more inference pass costs on a CPU: the int8 export on two threads",
    "serve_onnx": "Serving the ONNX export: finechain serve on an exported folder under concurrent clients (CPU)",
    "serve_onnx_packed": "Serving the ONNX export, its graph taking packed rows (CPU)",
    "small_data": "Small data: a few hundred examples, repeated passes per epoch vs one, and the Hugging Face Trainer (CPU)",
    "imbalance": "Imbalanced classes: selection on macro-F1, class weights, focal loss, tune, and the Trainer (CPU)",
    "imbalance_split0": "Imbalanced classes: every layer tuned for one classification task, a tried default (CPU)",
    "tagging_defaults_lr_holdout": "Tagging alone: every layer tuned at higher rates, chosen on held-out training sentences (CPU)",
    "tagging_defaults_ema_holdout": "Tagging alone: a moving average of the weights, on held-out training sentences (CPU)",
    "tagging_defaults_lr": "Tagging alone: every layer tuned at higher rates, then on the test files (CoNLL-2003, SNIPS slots; CPU)",
    "tagging_defaults_augment_holdout": "Tagging alone: augmented copies (entity swaps), on held-out training sentences (CPU)",
    "tagging_defaults_augment": "Tagging alone: augmented copies (entity swaps), then on the SNIPS test file (CPU)",
    "train_conll_alone_rates": "Training: one tagging task at its own rates (every layer, 2e-4 / 3e-3) vs the Trainer (CoNLL-2003, CPU)",
    "small_data_split0": "Small data: every layer tuned for one classification task, a tried default (CPU)",
    "snips_chain_e5_bf16": "SNIPS intent + slots: the chain at the default 5 epochs on a CPU with bf16 units (CPU)",
    "snips_chain_slotw2": "SNIPS intent + slots: the slot loss weighted twice in joint training (CPU, a tried setting)",
    "snips_chain_slot_rates": "SNIPS intent + slots: the slot task at the rates of a tagging task alone (CPU, a tried setting)",
    "snips_chain_rates": "SNIPS intent + slots: the joint trunk and the slot task at the rates of a tagging task alone (CPU)",
    "snips_chain_rates_crf": "SNIPS intent + slots: the faster rates with a CRF slot tagger (CPU, a tried setting)",
    "snips_chain_rates_e10": "SNIPS intent + slots: the faster rates for 10 epochs (CPU, a tried setting)",
    "snips_chain_rates_t3": "SNIPS intent + slots: the joint trunk at 3e-4 (CPU, a tried setting)",
    "snips_chain_rates_s14": "SNIPS intent + slots: the faster rates, a second seed (CPU)",
    "snips_chain_rates_s15": "SNIPS intent + slots: the faster rates, a third seed (CPU)",
    "snips_chain_rates_ema": "SNIPS intent + slots: the faster rates with a moving average of the weights (CPU)",
    "snips_chain_e5_bf16_s14": "SNIPS intent + slots: the default chain, a second seed (CPU)",
    "snips_chain_e5_bf16_s15": "SNIPS intent + slots: the default chain, a third seed (CPU)",
    "snips_chain_rates_b16": "SNIPS intent + slots: the faster rates at batch 16 (CPU, a tried setting)",
    "snips_chain_rates_split3": "SNIPS intent + slots: the faster rates with 3 trunk and 3 branch layers (CPU, a tried setting)",
    "snips_chain_rates_fgm": "SNIPS intent + slots: the faster rates, the slot tagger trained adversarially (FGM; CPU, a tried setting)",
    "snips_chain_rates_pieces": "SNIPS intent + slots: the faster rates, slots trained on every sub-word (CPU, a tried setting)",
    "snips_chain_rates_allow": "SNIPS intent + slots: the slot stage restricted to the predicted intent's slot types (allow: seen; CPU)",
    "snips_chain_rates_split5": "SNIPS intent + slots: the faster rates with 5 trunk layers and 1-layer branches (CPU, a tried setting)",
    "snips_chain_rates_split6": "SNIPS intent + slots: the faster rates with every layer shared, heads only per task (CPU)",
    "snips_chain_rates_split6_s14": "SNIPS intent + slots: every layer shared, a second seed (CPU)",
    "snips_chain_rates_split6_s15": "SNIPS intent + slots: every layer shared, a third seed (CPU)",
    "snips_chain_rates_split4_s14": "SNIPS intent + slots: the faster rates at split 4 on the AVX2 EPYC, a second seed (CPU)",
    "snips_chain_rates_split4_s15": "SNIPS intent + slots: the faster rates at split 4 on the AVX2 EPYC, a third seed (CPU)",
    "snips_chain_rates_augment": "SNIPS intent + slots: the faster rates, the slot tagger trained on augmented copies (CPU)",
    "snips_chain_rates_augment_s14": "SNIPS intent + slots: the slot tagger trained on augmented copies, a second seed (CPU)",
    "snips_chain_rates_augment_s15": "SNIPS intent + slots: the slot tagger trained on augmented copies, a third seed (CPU)",
    "sharing_trunk_lr": "Joint trunk rate: 5e-5 (the default) vs 2e-4 on four tasks, 2,000 examples each (CPU, validation and test)",
}
PEER_FIRST = {"hf-trainer": 0}


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric in {"accuracy", "macro_f1", "entity_f1", "micro_f1"}:
        return f"{100 * value:.1f}"
    if metric in {"train_seconds"}:
        return f"{value:.1f}"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def split_sweep_table(records: list[dict[str, Any]]) -> str:
    """One table per task: each system/variant with accuracy, time, speed and ratios to the HF Trainer run."""
    by: dict[str, dict[tuple[str, str], dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    units: dict[str, str] = {}
    for r in records:
        by[r["task"]][(r["system"], r["variant"])][r["metric"]] = r["value"]
        if r["metric"] == "accuracy":
            units[r["task"]] = r["unit"]
    out = []
    for task, rows in by.items():
        peer = rows.get(("hf-trainer", "full fine-tune"), {})
        out += [
            f"**{task}** ({units.get(task, 'accuracy')}, %)",
            "",
            "| system | variant | accuracy | Δ vs HF (points) | train s | samples/s | speed-up vs HF (time) | epochs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        ordered = sorted(rows.items(), key=lambda kv: (PEER_FIRST.get(kv[0][0], 1), kv[0][1]))
        for (system, variant), m in ordered:
            delta = f"{100 * (m['accuracy'] - peer['accuracy']):+.1f}" if peer and system != "hf-trainer" else "-"
            speed = f"{peer['train_seconds'] / m['train_seconds']:.1f}x" if peer and system != "hf-trainer" else "1.0x"
            accuracy, seconds = _fmt("accuracy", m.get("accuracy")), _fmt("train_seconds", m.get("train_seconds"))
            rate = _fmt("samples_per_second", m.get("samples_per_second"))
            out.append(f"| {system} | {variant} | {accuracy} | {delta} | {seconds} | {rate} | {speed} | {int(m.get('epochs_run', 0))} |")
        out.append("")
    return "\n".join(out)


def _rows(records: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], dict[str, float]]]:
    """task -> (system, variant) -> metric -> value, in first-seen order."""
    by: dict[str, dict[tuple[str, str], dict[str, float]]] = defaultdict(dict)
    for r in records:
        by[r["task"]].setdefault((r["system"], r["variant"]), {})[r["metric"]] = r["value"]
    return by


def infer_table(records: list[dict[str, Any]]) -> str:
    """Throughput per number of tasks (and for embeddings), with finechain's speed-up over each peer."""
    out = ["| tasks | system | variant | texts/s | finechain speed-up |", "| --- | --- | --- | --- | --- |"]
    stages = ["", "| finechain's time per stage | stage | seconds | share |", "| --- | --- | --- | --- |"]
    for task, rows in _rows(records).items():
        if all("seconds" in m for m in rows.values()):  # where ``predict`` spends its time (one line per stage)
            totals: dict[str, float] = defaultdict(float)  # per precision, the variant's last part
            for (_, variant), m in rows.items():
                totals[variant.rsplit(", ", 1)[-1]] += m["seconds"]
            for (_, variant), m in rows.items():
                share = m["seconds"] / totals[variant.rsplit(", ", 1)[-1]]
                stages.append(f"| {task} | {variant} | {m['seconds']:.3f} | {share:.0%} |")
            continue
        ours = next((m.get("samples_per_second") for (system, _), m in rows.items() if system == "finechain"), None)
        for (system, variant), m in rows.items():
            speed = m.get("samples_per_second")
            ratio = f"{ours / speed:.2f}x" if ours and speed and system != "finechain" else "-"
            note = f" (min cosine to peer {m['min_cosine_to_peer']:.5f})" if "min_cosine_to_peer" in m else ""
            out.append(f"| {task} | {system} | {variant}{note} | {_fmt('samples_per_second', speed)} | {ratio} |")
    return "\n".join(out + (stages if len(stages) > 3 else [])) + "\n"


def memory_table(records: list[dict[str, Any]]) -> str:
    """Peak memory per number of tasks; finechain's saving against one model per task."""
    out = ["| tasks | system | variant | peak RSS MB | peak GPU MB | vs one model per task |", "| --- | --- | --- | --- | --- | --- |"]
    for task, rows in _rows(records).items():
        peer = next((m.get("rss_mb") for (system, _), m in rows.items() if system == "hf-separate"), None)
        for (system, variant), m in rows.items():
            rss = m.get("rss_mb")
            ratio = f"{rss / peer:.2f}x" if rss and peer else "-"
            out.append(f"| {task} | {system} | {variant} | {_fmt('rss_mb', rss)} | {_fmt('rss_mb', m.get('gpu_peak_mb'))} | {ratio} |")
    return "\n".join(out) + "\n"


def train_table(records: list[dict[str, Any]]) -> str:
    """Per task: each system's dev metric, time and speed, ratios to the HF Trainer; then finechain's dev curve."""
    out = []
    for task, rows in _rows(records).items():
        metric = next(k for m in rows.values() for k in m if k in {"accuracy", "entity_f1"})
        peer = next((m for (system, _), m in rows.items() if system == "hf-trainer"), {})
        targets = {v: m["time_to_target_seconds"] for (_, v), m in rows.items() if "time_to_target_seconds" in m}
        out += [
            f"**{task}** (dev {metric}, %)",
            "",
            f"| system | variant | dev {metric} | validation {metric} | Δ vs HF full (points) | train s | samples/s | "
            "speed-up vs HF full (time) | model TFLOP/s (MFU %) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        chosen = [v.removeprefix("chosen on validation: ") for (_, v) in rows if v.startswith("chosen on validation: ")]
        for (system, variant), m in rows.items():
            if "train_seconds" not in m:
                continue
            delta = f"{100 * (m[metric] - peer[metric]):+.1f}" if peer and system != "hf-trainer" else "-"
            speed = f"{peer['train_seconds'] / m['train_seconds']:.1f}x" if peer else "-"
            flops = m.get("model_tflops_per_second")
            utilisation = "-" if flops is None else f"{flops:.2f}" + (f" ({m['mfu_percent']:.2f})" if "mfu_percent" in m else "")
            name = f"**{variant}** (chosen on validation)" if variant in chosen else variant
            out.append(
                f"| {system} | {name} | {_fmt(metric, m[metric])} | {_fmt(metric, m.get(f'validation_{metric}'))} | {delta} | "
                f"{_fmt('train_seconds', m['train_seconds'])} | {_fmt('samples_per_second', m.get('samples_per_second'))} | {speed} | "
                f"{utilisation} |"
            )
        curve = [(v, m) for (system, v), m in rows.items() if system == "finechain" and "elapsed_seconds" in m]
        if curve:
            heading = f"finechain's dev {metric} at each validation check (time since the start of `fit`, dev evaluation not counted):"
            out += ["", heading, ""]
            out += ["| epoch | elapsed s | dev " + metric + " | speed-up vs HF full at this point |", "| --- | --- | --- | --- |"]
            for variant, m in curve:
                speed = f"{peer['train_seconds'] / m['elapsed_seconds']:.1f}x" if peer else "-"
                out.append(f"| {variant} | {m['elapsed_seconds']:.1f} | {_fmt(metric, m[metric])} | {speed} |")
        peer_times = {
            f"{system} {'bf16' if 'bf16' in variant else 'fp32'}": (variant, m["train_seconds"])
            for (system, variant), m in rows.items()
            if system != "finechain" and "train_seconds" in m
        }
        for variant, seconds in targets.items():
            reached = next(((v, t) for name, (v, t) in peer_times.items() if f"{name}'s" in variant), None)
            speed = f" = **{reached[1] / seconds:.1f}x** faster than that peer's end-to-end {reached[1]:.1f} s" if reached else ""
            out += ["", f"Time for finechain {variant}: {seconds:.1f} s{speed}."]
        out.append("")
    return "\n".join(out)


def sharing_table(records: list[dict[str, Any]]) -> str:
    """One row per sharing mode: the four task metrics (Δ to the per-task HF fine-tunes), sizes, time, 4-task speed."""
    tasks = ["sst2", "agnews", "banking77", "conll2003"]
    rows: dict[tuple[str, str], dict[tuple[str, str], float]] = defaultdict(dict)
    for r in records:
        rows[(r["system"], r["variant"])][(r["task"], r["metric"])] = r["value"]
    peers = [m for (system, _), m in rows.items() if system == "hf-trainer"]
    # each task is compared with its strongest Trainer row (e.g. the run at a validation-chosen learning rate)
    peer = {key: max(m[key] for m in peers if key in m) for key in {k for m in peers for k in m}}
    separate = next((m for (system, _), m in rows.items() if system == "hf-separate"), {}).get(("all four", "samples_per_second"))

    def score(m: dict[tuple[str, str], float], task: str) -> str:
        metric = "entity_f1" if task == "conll2003" else "accuracy"
        value, ref, validation = m.get((task, metric)), peer.get((task, metric)), m.get((task, f"validation_{metric}"))
        if value is None:
            return "-"
        cell = f"{100 * value:.1f}" + (f" ({100 * (value - ref):+.1f})" if ref is not None and m not in peers else "")
        return cell + (f"; validation {100 * validation:.1f}" if validation is not None else "")

    head = "| system | variant | SST-2 acc | AG News acc | Banking77 acc | CoNLL F1 | trainable params/task | stored params/task |"
    head += " shared stored | train s (4 tasks) | 4-task texts/s | vs 4 separate models |"
    out = [head, "|" + " --- |" * 12]
    for (system, variant), m in rows.items():
        if system == "hf-separate":
            continue
        trainable = m.get(("sst2", "trainable_parameters"))
        stored = m.get(("sst2", "stored_parameters"), trainable)
        speed = m.get(("all four", "samples_per_second"))
        ratio = f"{speed / separate:.2f}x" if speed and separate else "-"
        cells = [score(m, t) for t in tasks]
        shared = _millions(m.get(("all four", "shared_stored_parameters")))
        seconds = _fmt("train_seconds", m.get(("all four", "train_seconds")))
        out.append(
            f"| {system} | {variant} | {' | '.join(cells)} | {_millions(trainable)} | {_millions(stored)} | {shared} | {seconds} | "
            f"{_fmt('samples_per_second', speed)} | {ratio} |"
        )
    if separate:
        out.append(
            f"| hf-separate | four fine-tuned models | - | - | - | - | - | - | - | - | {_fmt('samples_per_second', separate)} | 1.00x |"
        )
    return "\n".join(out) + "\n"


def _millions(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}M"


def decoding_table(records: list[dict[str, Any]]) -> str:
    """Entity precision / recall / F1 per decoding mode."""
    by: dict[str, dict[str, float]] = defaultdict(dict)
    for r in records:
        by[r["variant"]][r["metric"]] = r["value"]
    out = ["| decoding | entity F1 | precision | recall | decoding only, texts/s |", "| --- | --- | --- | --- | --- |"]
    for variant, m in by.items():
        out.append(
            f"| {variant} | {_fmt('entity_f1', m.get('entity_f1'))} | {_fmt('entity_f1', m.get('entity_precision'))} | "
            f"{_fmt('entity_f1', m.get('entity_recall'))} | {_fmt('samples_per_second', m.get('samples_per_second'))} |"
        )
    return "\n".join(out) + "\n"


def mixing_table(records: list[dict[str, Any]]) -> str:
    """One row per split and head input: SST-2 accuracy and CoNLL F1, with the gain from mixing."""
    rows: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
    for r in records:
        rows[r["variant"]][(r["task"], r["metric"])] = r["value"]
    out = ["| variant | SST-2 dev acc | CoNLL test F1 | train s (both) |", "| --- | --- | --- | --- |"]
    for variant, m in rows.items():
        base = rows.get(variant.replace("layer mix", "last layer"), {}) if "layer mix" in variant else {}
        cells = []
        for task, metric in (("sst2", "accuracy"), ("conll2003", "entity_f1")):
            value, ref = m.get((task, metric)), base.get((task, metric))
            gain = f" ({100 * (value - ref):+.1f})" if value is not None and ref is not None else ""
            cells.append(_fmt(metric, value) + gain)
        seconds = sum(v for (_, metric), v in m.items() if metric == "train_seconds")
        out.append(f"| {variant} | {' | '.join(cells)} | {seconds:.1f} |")
    return "\n".join(out) + "\n"


def branch_batching_table(records: list[dict[str, Any]]) -> str:
    """Branch throughput per way of running equal-depth branches, with the ratio to running them one after another."""
    speed = {r["variant"]: r["value"] for r in records if r["metric"] == "samples_per_second"}
    gap = {r["variant"]: r["value"] for r in records if r["metric"] == "max_abs_difference"}
    task = records[0]["task"] if records else ""
    out = ["| branches | variant | texts/s (branches only) | vs one after another | max abs difference |", "|" + " --- |" * 5]
    for variant, value in speed.items():
        precision = variant.rsplit(", ", 1)[-1]
        base = speed.get(f"one after another, {precision}")
        ratio = f"{value / base:.2f}x" if base else "-"
        out.append(f"| {task} | {variant} | {_fmt('samples_per_second', value)} | {ratio} | {gap.get(variant, '-')} |")
    return "\n".join(out) + "\n"


def dropout_table(records: list[dict[str, Any]]) -> str:
    """Median time per training step with PyTorch's dropout and with finechain's, and the speed-up, per task and precision."""
    ms = {(r["task"], r["variant"]): r["value"] for r in records if r["metric"] == "ms_per_step"}
    out = ["| task | precision | PyTorch dropout, ms/step | finechain masks, ms/step | speed-up |", "| --- | --- | --- | --- | --- |"]
    for (task, variant), theirs in ms.items():
        label, _, precision = variant.rpartition(", ")
        ours = ms.get((task, f"{DROPOUT_VARIANTS['finechain']}, {precision}"))
        if label == DROPOUT_VARIANTS["torch"] and ours:
            out.append(f"| {task} | {precision} | {theirs:.1f} | {ours:.1f} | {theirs / ours:.2f}x |")
    return "\n".join(out) + "\n"


def peer_learning_rate_table(records: list[dict[str, Any]]) -> str:
    """The peer's learning-rate search: validation and test score per rate, and the rate validation chose."""
    scores: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    chosen = {r["task"]: r["value"] for r in records if r["metric"] == "learning_rate"}
    for r in records:
        if r["system"] == "hf-trainer" and r["variant"].startswith("full fine-tune, lr "):
            split = "validation" if r["unit"].startswith("validation") else "reported"
            scores[(r["task"], r["variant"].removeprefix("full fine-tune, lr "))][split] = r["value"]
    out = ["| task | learning rate | validation | test (SST-2: dev) | chosen on validation |", "| --- | --- | --- | --- | --- |"]
    for (task, rate), m in scores.items():
        mark = "yes" if task in chosen and float(rate) == chosen[task] else ""
        cells = " | ".join(_fmt("accuracy", m.get(split)) for split in ("validation", "reported"))
        out.append(f"| {task} | {rate} | {cells} | {mark} |")
    return "\n".join(out) + "\n"


def seeds_table(records: list[dict[str, Any]]) -> str:
    """A suite repeated per seed (variants ending in ``, seed N``): per task, each system's score for every seed, the
    mean and standard deviation, and finechain's gap to the peer per seed and on average.

    Example:
        >>> rec = lambda system, seed, v: {"task": "sst2", "system": system, "variant": f"x, seed {seed}", "metric": "accuracy", "value": v}
        >>> records = [rec("finechain", 1, 0.80), rec("finechain", 2, 0.82), rec("hf-trainer", 1, 0.81), rec("hf-trainer", 2, 0.80)]
        >>> print(seeds_table(records))
        **sst2** (accuracy, %)
        <BLANKLINE>
        | system | variant | seed 1 | seed 2 | mean | sd |
        | --- | --- | --- | --- | --- | --- |
        | finechain | x | 80.0 | 82.0 | 81.0 | 1.41 |
        | hf-trainer | x | 81.0 | 80.0 | 80.5 | 0.71 |
        <BLANKLINE>
        finechain - hf-trainer: -1.0, +2.0 points per seed; mean **+0.5**
        <BLANKLINE>
    """
    import statistics

    scores: dict[str, dict[tuple[str, str], dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    metrics: dict[str, str] = {}
    for r in records:
        base, _, seed = r["variant"].rpartition(", seed ")
        if r["metric"] in {"accuracy", "entity_f1"} and seed.isdigit():
            scores[r["task"]][(r["system"], base)][int(seed)] = 100 * r["value"]
            metrics[r["task"]] = r["metric"]
    out = []
    for task, rows in scores.items():
        seeds = sorted({seed for values in rows.values() for seed in values})
        out += [f"**{task}** ({metrics[task]}, %)", ""]
        out += ["| system | variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd |"]
        out += ["| --- | --- | " + " | ".join("---" for _ in seeds) + " | --- | --- |"]
        for (system, variant), values in sorted(rows.items(), key=lambda kv: kv[0][0] != "finechain"):
            cells = " | ".join(f"{values[s]:.1f}" if s in values else "-" for s in seeds)
            sd = statistics.stdev(values.values()) if len(values) > 1 else 0.0
            out.append(f"| {system} | {variant} | {cells} | {statistics.mean(values.values()):.1f} | {sd:.2f} |")
        ours = next((v for (system, _), v in rows.items() if system == "finechain"), {})
        for (system, _), peer in rows.items():
            shared = [s for s in seeds if s in ours and s in peer and system != "finechain"]
            if shared:
                gaps = [ours[s] - peer[s] for s in shared]
                listed = ", ".join(f"{g:+.1f}" for g in gaps)
                out += ["", f"finechain - {system}: {listed} points per seed; mean **{statistics.mean(gaps):+.1f}**"]
        out.append("")
    return "\n".join(out)


def export_table(records: list[dict[str, Any]]) -> str:
    """Per variant: each task's metric, the artifact size, texts/s at batch 1 and 32 (and the ratio to PyTorch fp32 at
    batch 32), the median milliseconds per call at batch 1 and, in runs that time them, the ratios to PyTorch fp32 and
    to the default precision within each round (median, range).

    Example:
        >>> rec = lambda t, v, m, x, u="": {"task": t, "variant": v, "metric": m, "value": x, "unit": u}
        >>> rows = [rec("sst2", "PyTorch fp32", "accuracy", 0.8), rec("sst2", "int8", "accuracy", 0.8),
        ...     rec("all four", "PyTorch fp32, batch 32", "samples_per_second", 100.0),
        ...     rec("all four", "int8, batch 32", "samples_per_second", 310.0),
        ...     rec("all four", "int8, batch 32, paired with PyTorch fp32", "speedup", 3.05,
        ...         "x PyTorch fp32 within a round: median of 5 (2.980-3.120)")]
        >>> print(export_table(rows).splitlines()[-1])
        | int8 | 80.0 | - | - | 310.0 | 3.10x | - | 3.050x (2.980-3.120) | - |
    """
    tasks = list(dict.fromkeys(r["task"] for r in records if r["task"] != "all four"))
    variants = list(dict.fromkeys(r["variant"] for r in records if r["task"] != "all four"))
    value = {(r["task"], r["variant"], r["metric"]): r["value"] for r in records}
    metric = {r["task"]: r["metric"] for r in records if r["task"] != "all four"}
    base = value.get(("all four", f"{variants[0]}, batch 32", "samples_per_second")) if variants else None
    head = (
        "| variant | "
        + " | ".join(f"{t} {metric[t]}" for t in tasks)
        + " | MB | texts/s, batch 1 | texts/s, batch 32 | vs fp32, batch 32 | ms per text, batch 1 |"
    )
    paired = {}  # (variant, "PyTorch fp32" or "the default") -> the record of their ratios within each round
    for r in records:
        variant, _, reference = r["variant"].rpartition(", batch 32, paired with ")
        if variant:
            paired[variant, reference] = r
    if paired:  # newer runs: each variant against both PyTorch rows within each round
        head += " vs fp32, round by round | vs the default, round by round |"
    out = [head, "|" + " --- |" * (head.count("|") - 1)]
    for v in variants:
        cells = [f"{100 * value[(t, v, metric[t])]:.1f}" for t in tasks]
        one, many = (
            value.get(("all four", f"{v}, batch 1", "samples_per_second")),
            value.get(("all four", f"{v}, batch 32", "samples_per_second")),
        )
        ratio = f"{many / base:.2f}x" if base and many else "-"
        latency = value.get(("all four", f"{v}, batch 1", "p50_ms"))
        size = value.get(("all four", v, "artifact_mb"))
        cells += [
            f"{size:.0f}" if size else "-",
            f"{one:.1f}" if one else "-",
            f"{many:.1f}" if many else "-",
            ratio,
            f"{latency:.1f}" if latency else "-",
        ]
        if paired:
            cells += [_paired_cell(paired.get((v, reference))) for reference in ("PyTorch fp32", "the default")]
        out.append(f"| {v} | " + " | ".join(cells) + " |")
    teacher = [r for r in records if r["metric"] == "speedup" and r["variant"].endswith(", round by round")]  # earlier runs
    out += [""] * bool(teacher) + [f"- {r['variant'].removesuffix(', round by round')}: {r['value']:.2f}{r['unit']}" for r in teacher]
    return "\n".join(out)


def _paired_cell(record: dict[str, Any] | None) -> str:
    """``3.050x (2.980-3.120)``: the median of the per-round ratios and their range (from the record's unit), to three
    decimals, so that a ratio just under a goal's bound does not read as on it."""
    if record is None:
        return "-"
    low, high = record["unit"].rpartition("(")[2].rstrip(")").split("-")
    return f"{record['value']:.3f}x ({low}-{high})"


def runtimes_table(records: list[dict[str, Any]]) -> str:
    """Per runtime and weights: texts/s at batch 1 and 32, each as a ratio to the first variant (ONNX Runtime fp32),
    and the largest output change against it.

    Example:
        >>> rec = lambda v, m, x: {"variant": v, "metric": m, "value": x}
        >>> print(runtimes_table([rec("ORT, fp32", "max_abs_diff", 0.0), rec("ORT, fp32, batch 1", "samples_per_second", 50.0),
        ...     rec("ORT, fp32, batch 32", "samples_per_second", 80.0), rec("OV, fp32", "max_abs_diff", 1e-6),
        ...     rec("OV, fp32, batch 1", "samples_per_second", 40.0), rec("OV, fp32, batch 32", "samples_per_second", 88.0)]))
        | runtime, weights | texts/s, batch 1 | vs first | texts/s, batch 32 | vs first | largest output change |
        | --- | --- | --- | --- | --- | --- |
        | ORT, fp32 | 50.0 | 1.00x | 80.0 | 1.00x | 0 |
        | OV, fp32 | 40.0 | 0.80x | 88.0 | 1.10x | 1e-06 |
    """
    value = {(r["variant"], r["metric"]): r["value"] for r in records}
    variants = [r["variant"] for r in records if r["metric"] == "max_abs_diff"]
    out = [
        "| runtime, weights | texts/s, batch 1 | vs first | texts/s, batch 32 | vs first | largest output change |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for variant in variants:
        cells = []
        for size in (1, 32):
            speed, base = (
                value[(f"{variant}, batch {size}", "samples_per_second")],
                value[(f"{variants[0]}, batch {size}", "samples_per_second")],
            )
            cells += [f"{speed:.1f}", f"{speed / base:.2f}x"]
        out.append(f"| {variant} | " + " | ".join(cells) + f" | {value[(variant, 'max_abs_diff')]:.2g} |")
    engine = [(r["variant"].removesuffix(", batch 32"), r["value"]) for r in records if r["variant"].startswith("ONNX Runtime engine, ")]
    if engine:  # the exported engine, spinning threads or not: a table of its own
        out += ["", "| exported engine (batch 32) | texts/s |", "| --- | --- |"]
        out += [f"| {variant.removeprefix('ONNX Runtime engine, ')} | {speed:.1f} |" for variant, speed in engine]
    return "\n".join(out)


def kernels_table(records: list[dict[str, Any]]) -> str:
    """Billions of multiply-adds per second per product (rows down) and runtime (across), then ONNX Runtime int8's
    ratio to PyTorch fp32 and to PyTorch bf16.

    Example:
        >>> rec = lambda v, x: {"variant": v, "metric": "gmacs_per_second", "value": x}
        >>> print(kernels_table([rec("PyTorch fp32, 8 rows, one layer", 50.0), rec("PyTorch bf16, 8 rows, one layer", 100.0),
        ...     rec("ONNX Runtime int8, 8 rows, one layer", 170.0)]))
        | product (tokens x in x out) | PyTorch fp32 | PyTorch bf16 | ONNX Runtime int8 | int8 / PyTorch fp32 | int8 / PyTorch bf16 |
        | --- | --- | --- | --- | --- | --- |
        | 8 rows, one layer | 50.0 | 100.0 | 170.0 | 3.40x | 1.70x |
    """
    records = [r for r in records if r["metric"] == "gmacs_per_second"]
    value: dict[str, dict[str, float]] = defaultdict(dict)
    for r in records:
        runtime, product = r["variant"].split(", ", 1)
        value[product][runtime] = r["value"]
    runtimes = list(dict.fromkeys(r["variant"].split(", ", 1)[0] for r in records))
    out = [
        "| product (tokens x in x out) | " + " | ".join(runtimes) + " | int8 / PyTorch fp32 | int8 / PyTorch bf16 |",
        "|" + " --- |" * (len(runtimes) + 3),
    ]
    for product, rates in value.items():
        int8 = rates.get("ONNX Runtime int8")
        ratios = [f"{int8 / rates[base]:.2f}x" if int8 and rates.get(base) else "-" for base in ("PyTorch fp32", "PyTorch bf16")]
        out.append(
            f"| {product} | " + " | ".join(f"{rates[r]:.1f}" if r in rates else "-" for r in runtimes) + " | " + " | ".join(ratios) + " |"
        )
    return "\n".join(out)


def export_embeddings_table(records: list[dict[str, Any]]) -> str:
    """Per system and variant: texts/s at batch 1 and 32, each as a ratio to finechain's PyTorch fp32 row and to the
    same system's PyTorch fp32 row, and the lowest and mean cosine to finechain's PyTorch fp32 vectors.

    Example:
        >>> rec = lambda s, v, m, x: {"system": s, "variant": v, "metric": m, "value": x}
        >>> speeds = [("finechain", "PyTorch fp32", 10.0, 100.0), ("st", "PyTorch fp32", 20.0, 50.0), ("st", "ONNX int8", 40.0, 150.0)]
        >>> records = [rec(s, f"{v}, batch {b}", "samples_per_second", x) for s, v, *xs in speeds for b, x in zip((1, 32), xs)]
        >>> records += [rec("st", "ONNX int8", "min_cosine", 0.991), rec("st", "ONNX int8", "mean_cosine", 0.998)]
        >>> print("\\n".join(export_embeddings_table(records).splitlines()[2:]))
        | finechain | PyTorch fp32 | 10.0 | 1.00x | 1.00x | 100.0 | 1.00x | 1.00x | - | - |
        | st | PyTorch fp32 | 20.0 | 2.00x | 1.00x | 50.0 | 0.50x | 1.00x | - | - |
        | st | ONNX int8 | 40.0 | 4.00x | 2.00x | 150.0 | 1.50x | 3.00x | 0.9910 | 0.9980 |
    """
    value = {(r["system"], r["variant"], r["metric"]): r["value"] for r in records}
    rows = list(dict.fromkeys((r["system"], r["variant"].rsplit(", batch ", 1)[0]) for r in records if r["metric"] == "samples_per_second"))
    first = {system: variant for system, variant in reversed(rows)}  # each system's first row: its PyTorch fp32
    columns = ["texts/s, batch {0}", "vs finechain PyTorch fp32", "vs own PyTorch fp32"]
    header = [c.format(size) for size in (1, 32) for c in columns] + ["lowest cosine", "mean cosine"]
    out = ["| system | variant | " + " | ".join(header) + " |", "|" + " --- |" * (len(header) + 2)]
    for system, variant in rows:
        cells = []
        for size in (1, 32):
            speed = value[(system, f"{variant}, batch {size}", "samples_per_second")]
            ours = value[("finechain", f"{first['finechain']}, batch {size}", "samples_per_second")]
            own = value[(system, f"{first[system]}, batch {size}", "samples_per_second")]
            cells += [f"{speed:.1f}", f"{speed / ours:.2f}x", f"{speed / own:.2f}x"]
        cells += [f"{value[(system, variant, m)]:.4f}" if (system, variant, m) in value else "-" for m in ("min_cosine", "mean_cosine")]
        out.append(f"| {system} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _latencies(values: dict[str, float]) -> str:
    return " / ".join(f"{values[q]:.0f}" for q in ("p50_ms", "p95_ms", "p99_ms"))


def serve_table(records: list[dict[str, Any]]) -> str:
    """Per number of clients: finechain serve and the peer side by side (texts/s with every task's answer, p50/p95/p99,
    errors), finechain's share of its own offline batch throughput and its ratio to the peer; then resident memory."""
    offline_record = next((r for r in records if r["system"] == "finechain" and "offline" in r["variant"]), None)
    offline = offline_record["value"] if offline_record else None
    levels: dict[int, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if ", " in r["variant"] and r["variant"].rsplit(", ", 1)[1].split(" ")[0].isdigit() and "client" in r["variant"]:
            clients = int(r["variant"].rsplit(", ", 1)[1].split(" ")[0])
            levels[clients][r["system"]][r["metric"]] = r["value"]
    peer = next((r["system"] for r in records if r["system"] != "finechain"), None)
    head = "| clients | finechain texts/s | of offline | p50 / p95 / p99 ms | errors |"
    if peer:
        head += f" {peer} texts/s | p50 / p95 / p99 ms | errors | finechain / {peer} |"
    out = [head, "|" + " --- |" * (head.count("|") - 1)]
    for clients in sorted(levels):
        ours = levels[clients]["finechain"]
        share = f"{100 * ours['samples_per_second'] / offline:.0f}%" if offline else "-"
        row = f"| {clients} | {ours['samples_per_second']:.1f} | {share} | {_latencies(ours)} | {ours['errors']:.0f} |"
        if peer and levels[clients].get(peer):
            theirs = levels[clients][peer]
            row += f" {theirs['samples_per_second']:.1f} | {_latencies(theirs)} | {theirs['errors']:.0f} |"
            row += f" {ours['samples_per_second'] / theirs['samples_per_second']:.2f}x |"
        out.append(row)
    if offline:
        how = offline_record["variant"].removeprefix("offline batch ").split("), ")[0].strip("(") if offline_record else ""
        out += ["", f"Offline batch throughput of the same chain ({how}): {offline:.1f} texts/s."]
    memory = [r for r in records if r["metric"] == "rss_mb" and "soak round" not in r["variant"]]
    if memory:
        out += ["", "| system | resident memory before the load (MB) | after (MB) |", "| --- | --- | --- |"]
        for system in dict.fromkeys(r["system"] for r in memory):
            values = [r["value"] for r in memory if r["system"] == system]
            out.append(f"| {system} | {values[0]:.0f} | {values[-1]:.0f} |")
    soak = [r for r in records if r["metric"] == "rss_mb" and "soak round" in r["variant"]]
    if soak:
        out += ["", "Resident memory under a steady load after those levels (MB, after each round):", ""]
        out += ["| system | " + " | ".join(r["unit"].removeprefix("MB after ") for r in soak if r["system"] == soak[0]["system"]) + " |"]
        out.append("|" + " --- |" * (1 + sum(r["system"] == soak[0]["system"] for r in soak)))
        for system in dict.fromkeys(r["system"] for r in soak):
            out.append(f"| {system} | " + " | ".join(f"{r['value']:.0f}" for r in soak if r["system"] == system) + " |")
    return "\n".join(out)


def _stage_name(variant: str) -> str:
    """A stage of ``predict`` under one name before and after the engine's stages were renamed (the same three parts:
    ``tokenise ...`` became ``prepare (...)``, ``encoder and heads ...`` ``forward (...)``, ``decoding ...`` ``decode (...)``)."""
    for old, new in (("tokenise", "prepare"), ("prepare", "prepare"), ("encoder and heads", "forward"), ("forward", "forward")):
        if variant.startswith(old):
            return new + variant[variant.rfind(",") :]
    if variant.startswith(("decoding", "decode")):
        return "decode" + variant[variant.rfind(",") :]
    return variant


def snips_table(records: list[dict[str, Any]]) -> str:
    """Per system: slot F1 on dev (where recorded: what settings are chosen on), then on test intent accuracy, slot F1,
    exact match, training seconds, utterances per second (both answers), and the ratio of throughput to the peer's
    (the ``hf-separate`` record)."""
    variants = list(dict.fromkeys(r["variant"] for r in records))
    value = {(r["variant"], r["metric"]): r["value"] for r in records}
    system = {r["variant"]: r["system"] for r in records if r["metric"] == "accuracy"}
    peers = [r["value"] for r in records if r["system"] == "hf-separate" and r["metric"] == "samples_per_second"]
    peer = peers[0] if peers else None
    scored = ("dev_slot_f1", "accuracy", "slot_f1", "exact_match")
    head = "| system | dev slot F1 | intent accuracy | slot F1 | exact match | train s | utterances/s | vs peer |"
    out = [head, "|" + " --- |" * 8]
    for v in variants:
        row = {m: value.get((v, m)) for m in (*scored, "train_seconds", "samples_per_second")}
        cells = [f"{100 * row[m]:.1f}" if row[m] is not None else "-" for m in scored]
        rate = row["samples_per_second"]
        cells += [f"{row['train_seconds']:.0f}" if row["train_seconds"] else "-", f"{rate:.1f}" if rate else "-"]
        cells.append(f"{rate / peer:.2f}x" if rate and peer else "-")
        out.append(f"| {system.get(v, '?')}: {v} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def pass_cost_table(records: list[dict[str, Any]]) -> str:
    """Milliseconds per pass over the grid (rows down, widths across), then the fit ``a + b * tokens``.

    Example:
        >>> rec = lambda task, variant, metric, v: {"task": task, "variant": variant, "metric": metric, "value": v}
        >>> print(pass_cost_table([rec("pass", "c, 1 rows x 16 tokens", "pass_ms", 50.0), rec("fit", "c", "pass_tokens", 40.0)]))
        | rows \\ tokens per row | 16 |
        | --- | --- |
        | 1 | 50.0 |
        <BLANKLINE>
        Fit: pass_tokens 40.0
    """
    grid: dict[int, dict[int, float]] = defaultdict(dict)
    for r in records:
        if r["task"] == "pass":
            rows, width = r["variant"].rsplit(", ", 1)[1].split(" rows x ")
            grid[int(rows)][int(width.split()[0])] = r["value"]
    widths = sorted({w for row in grid.values() for w in row})
    out = ["| rows \\ tokens per row | " + " | ".join(map(str, widths)) + " |", "|" + " --- |" * (len(widths) + 1)]
    out += [f"| {n} | " + " | ".join(f"{grid[n].get(w, float('nan')):.1f}" for w in widths) + " |" for n in sorted(grid)]
    fit = ", ".join(
        f"{r['metric']} {r['value']:.{3 if r['metric'] in {'token_ms', 'max_relative_error'} else 1}f}"
        for r in records
        if r["task"] == "fit"
    )
    return "\n".join([*out, "", f"Fit: {fit}"])


SeedValues = dict[str, dict[tuple[str, str], dict[str, list[float]]]]


def over_seeds(records: list[dict[str, Any]]) -> SeedValues:
    """Each task's values by (system, variant) and metric, one per seed: a variant named ``..., seed N`` counts as
    the variant without its seed.

    Example:
        >>> rec = lambda variant, v: {"task": "t", "system": "s", "variant": variant, "metric": "accuracy", "value": v}
        >>> dict(over_seeds([rec("default, seed 1", 0.8), rec("default, seed 2", 0.9)])["t"][("s", "default")])
        {'accuracy': [0.8, 0.9]}
    """
    values: SeedValues = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        variant = r["variant"].rpartition(", seed ")[0] or r["variant"]
        values[r["task"]][(r["system"], variant)][r["metric"]].append(r["value"])
    return values


def thresholds_table(records: list[dict[str, Any]]) -> str:
    """Per task and training size: each way of choosing a multi-label task's thresholds, its test micro- and macro-F1
    (mean and standard deviation over seeds) and its gap to the first way listed (per label), seed by seed.

    Example:
        >>> rec = lambda way, seed, metric, v: {"task": "snips", "system": "finechain", "variant": f"{way}, 500 texts, seed {seed}",
        ...     "metric": metric, "value": v, "unit": "SNIPS slot types"}
        >>> records = [rec(w, s, m, v) for w, s, m, v in [("per label", 1, "micro_f1", 0.70), ("per label", 2, "micro_f1", 0.72),
        ...     ("shared", 1, "micro_f1", 0.75), ("shared", 2, "micro_f1", 0.74)]]
        >>> print(thresholds_table(records))
        **snips**, 500 texts: SNIPS slot types
        <BLANKLINE>
        | thresholds | micro-F1 % (sd) | vs per label, per seed | macro-F1 % (sd) | vs per label, per seed |
        | --- | --- | --- | --- | --- |
        | per label | 71.0 (1.41) | +0.0 | - | - |
        | shared | 74.5 (0.71) | +3.5 (+5.0, +2.0) | - | - |
        <BLANKLINE>
    """
    groups: dict[tuple[str, str], dict[str, dict[str, dict[int, float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    units = {}
    for r in records:
        base, _, seed = r["variant"].rpartition(", seed ")
        way, _, size = base.rpartition(", ")
        if r["metric"] in ("micro_f1", "macro_f1") and seed.isdigit():
            groups[(r["task"], size)][way][r["metric"]][int(seed)] = 100 * r["value"]
            units[(r["task"], size)] = r["unit"].split(":")[0]
    out = []
    for (task, size), ways in groups.items():
        first = next(iter(ways.values()))
        out += [f"**{task}**, {size}: {units[(task, size)]}", ""]
        out += ["| thresholds | micro-F1 % (sd) | vs per label, per seed | macro-F1 % (sd) | vs per label, per seed |"]
        out += ["| --- | --- | --- | --- | --- |"]
        for way, metrics in ways.items():
            cells = []
            for metric in ("micro_f1", "macro_f1"):
                values = metrics.get(metric, {})
                if not values:
                    cells += ["-", "-"]
                    continue
                sd = statistics.stdev(values.values()) if len(values) > 1 else 0.0
                gaps = [values[s] - first[metric][s] for s in sorted(values) if s in first.get(metric, {})]
                mean_gap = statistics.mean(gaps) if gaps else 0.0
                each = f" ({', '.join(f'{g:+.1f}' for g in gaps)})" if metrics is not first and gaps else ""
                cells += [f"{statistics.mean(values.values()):.1f} ({sd:.2f})", f"{mean_gap:+.1f}{each}"]
            out.append(f"| {way} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def imbalance_table(records: list[dict[str, Any]]) -> str:
    """Per task: each variant's macro-F1 and accuracy (mean and standard deviation over seeds) and training time, with
    its macro-F1 gap to finechain's default and to the Trainer.

    Example:
        >>> rec = lambda system, variant, seed, metric, v: {"task": "agnews", "system": system, "variant": f"{variant}, seed {seed}",
        ...     "metric": metric, "value": v, "unit": "test (100 texts)"}
        >>> runs = [(1, "macro_f1", 0.8), (2, "macro_f1", 0.9), (1, "accuracy", 0.9)]
        >>> records = [rec("finechain", "default", s, m, v) for s, m, v in runs]
        >>> records += [rec("hf-trainer", "full", 1, "macro_f1", 0.82), rec("finechain", "default", 1, "train_seconds", 10.0)]
        >>> print(imbalance_table(records))
        **agnews**: test (100 texts)
        <BLANKLINE>
        | system | variant | macro-F1 % (sd) | accuracy % | train s | vs default | vs hf-trainer |
        | --- | --- | --- | --- | --- | --- | --- |
        | finechain | default | 85.0 (7.07) | 90.0 | 10 | +0.0 | +3.0 |
        | hf-trainer | full | 82.0 (0.00) | - | - | -3.0 | +0.0 |
        <BLANKLINE>
    """
    values = over_seeds(records)
    units = {r["task"]: r["unit"] for r in records if r["metric"] == "macro_f1"}
    out = []
    for task, rows in values.items():
        mean = {key: statistics.mean(m["macro_f1"]) * 100 for key, m in rows.items() if m.get("macro_f1")}
        default = next((v for (system, variant), v in mean.items() if system == "finechain" and variant.startswith("default")), None)
        peer = next((v for (system, _), v in mean.items() if system == "hf-trainer"), None)
        out += [f"**{task}**: {units.get(task, '')}", ""]
        out += ["| system | variant | macro-F1 % (sd) | accuracy % | train s | vs default | vs hf-trainer |"]
        out += ["| --- | --- | --- | --- | --- | --- | --- |"]
        for (system, variant), metrics in sorted(rows.items(), key=lambda kv: kv[0][0] != "finechain"):
            f1 = metrics.get("macro_f1", [])
            sd = statistics.stdev(f1) * 100 if len(f1) > 1 else 0.0
            acc = f"{statistics.mean(metrics['accuracy']) * 100:.1f}" if metrics.get("accuracy") else "-"
            secs = f"{statistics.mean(metrics['train_seconds']):.0f}" if metrics.get("train_seconds") else "-"
            here = mean.get((system, variant))
            gaps = [f"{here - base:+.1f}" if here is not None and base is not None else "-" for base in (default, peer)]
            cell = f"{here:.1f} ({sd:.2f})" if here is not None else "-"
            out.append(f"| {system} | {variant} | {cell} | {acc} | {secs} | {gaps[0]} | {gaps[1]} |")
        out.append("")
    return "\n".join(out)


PLAIN_METRICS = {"train_seconds": "{:.0f}", "samples_per_second": "{:.0f}"}  # shown as they are; scores as percentages


def variants_table(records: list[dict[str, Any]], columns: dict[str, str], base: str) -> str:
    """Per task: each (system, variant)'s mean over seeds (a variant's ``, seed N`` dropped) of each metric in
    ``columns`` (scores in percent, with the standard deviation when there are several seeds; seconds and rates as
    they are), and each score's gap to finechain's variant named ``base``.

    Example:
        >>> rec = lambda variant, metric, v: {"task": "sst2", "system": "finechain", "variant": variant, "metric": metric,
        ...     "value": v, "unit": "dev"}
        >>> records = [rec("default, seed 1", "accuracy", 0.8), rec("default, seed 2", "accuracy", 0.9)]
        >>> records += [rec("fgm, seed 1", "accuracy", 0.9)]
        >>> print(variants_table(records, {"accuracy": "accuracy %"}, "default"))
        **sst2**: dev
        <BLANKLINE>
        | system | variant | accuracy % | accuracy vs default |
        | --- | --- | --- | --- |
        | finechain | default | 85.0 (7.07) | +0.0 |
        | finechain | fgm | 90.0 | +5.0 |
        <BLANKLINE>
    """
    values = over_seeds(records)
    units: dict[str, str] = {}
    for r in records:
        if r["metric"] not in PLAIN_METRICS:
            units.setdefault(r["task"], r["unit"])
    scores = [m for m in columns if m not in PLAIN_METRICS]
    out = []
    for task, rows in values.items():
        base_row = rows.get(("finechain", base), {})
        out += [f"**{task}**: {units.get(task, '')}", ""]
        headers = ["system", "variant", *columns.values(), *(f"{m.replace('_', ' ')} vs {base}" for m in scores)]
        out += ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
        for (system, variant), metrics in rows.items():
            cells = []
            for metric in columns:
                got = metrics.get(metric, [])
                if not got:
                    cells.append("-")
                elif metric in PLAIN_METRICS:
                    cells.append(PLAIN_METRICS[metric].format(statistics.mean(got)))
                else:
                    sd = f" ({statistics.stdev(got) * 100:.2f})" if len(got) > 1 else ""
                    cells.append(f"{statistics.mean(got) * 100:.1f}{sd}")
            for metric in scores:
                here, there = metrics.get(metric), base_row.get(metric)
                cells.append(f"{(statistics.mean(here) - statistics.mean(there)) * 100:+.1f}" if here and there else "-")
            out.append(f"| {system} | {variant} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def zero_shot_table(records: list[dict[str, Any]]) -> str:
    """Zero-shot and few-example variants: accuracy and macro-F1 against the majority class, and training time."""
    columns = {"accuracy": "accuracy %", "macro_f1": "macro-F1 %", "train_seconds": "train s"}
    return variants_table(records, columns, "majority class (no model)")


def robustness_table(records: list[dict[str, Any]]) -> str:
    """Clean and typo accuracy of each training option against the default."""
    return variants_table(records, {"accuracy": "accuracy %", "typo_accuracy": "with typos %", "train_seconds": "train s"}, "default")


def update_table(records: list[dict[str, Any]]) -> str:
    """Accuracy on the old, new and all intents before and after an update, against retraining from scratch."""
    return variants_table(records, {"accuracy": "accuracy %", "train_seconds": "train s"}, "before the update")


def few_shot_table(records: list[dict[str, Any]]) -> str:
    """Per task and sample size: each system's accuracy (mean and standard deviation over seeds) and training time,
    with the accuracy gap to SetFit and SetFit's training time over each system's (above 2: under half its time), both
    on the seeds (samples) that the two ran.

    Example:
        >>> rec = lambda system, variant, seed, metric, v: {"task": "sst2", "system": system,
        ...     "variant": f"sst2, 8 per class: {variant}, seed {seed}", "metric": metric, "value": v, "unit": "dev accuracy"}
        >>> records = [rec("finechain", "recipe", s, "accuracy", v) for s, v in ((1, 0.7), (2, 0.8))]
        >>> records += [rec("finechain", "recipe", 1, "train_seconds", 10.0), rec("setfit", "num_iterations 20", 1, "accuracy", 0.6)]
        >>> records += [rec("setfit", "num_iterations 20", 1, "train_seconds", 30.0)]
        >>> print(few_shot_table(records))
        **sst2**: dev accuracy
        <BLANKLINE>
        | examples | system | variant | seeds | accuracy % (sd) | train s | accuracy vs SetFit (same seeds) | SetFit time / this |
        | --- | --- | --- | --- | --- | --- | --- | --- |
        | 8 per class | finechain | recipe | 2 | 75.0 (7.07) | 10 | +10.0 (1) | 3.0x |
        | 8 per class | setfit | num_iterations 20 | 1 | 60.0 | 30 | +0.0 (1) | 1.0x |
        <BLANKLINE>
    """
    # task -> sample size -> (system, variant) -> metric -> seed -> value
    values: dict[str, dict[str, dict[tuple[str, str], dict[str, dict[str, float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    )
    for r in records:
        name, _, seed = r["variant"].rpartition(", seed ")
        size, _, variant = name.partition(": ")
        values[r["task"]][size.split(", ")[-1]][(r["system"], variant)][r["metric"]][seed] = r["value"]
    units = {r["task"]: r["unit"] for r in records if r["metric"] == "accuracy"}
    out = []
    for task, sizes in values.items():
        out += [f"**{task}**: {units.get(task, '')}", ""]
        out += [
            "| examples | system | variant | seeds | accuracy % (sd) | train s | accuracy vs SetFit (same seeds) | SetFit time / this |"
        ]
        out += ["| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for size in sorted(sizes, key=lambda v: int(v.split()[0])):
            here = sizes[size]
            peer = next((m for (system, _), m in here.items() if system == "setfit"), {})
            for (system, variant), metrics in here.items():
                acc, secs = metrics.get("accuracy", {}), metrics.get("train_seconds", {})
                sd = f" ({statistics.stdev(acc.values()) * 100:.2f})" if len(acc) > 1 else ""
                gap, ratio = "-", "-"
                if common := sorted(set(acc) & set(peer.get("accuracy", {}))):
                    diff = statistics.mean(acc[s] - peer["accuracy"][s] for s in common) * 100
                    gap = f"{diff:+.1f} ({len(common)})"
                if common := sorted(set(secs) & set(peer.get("train_seconds", {}))):
                    ratio = f"{statistics.mean(peer['train_seconds'][s] for s in common) / statistics.mean(secs[s] for s in common):.1f}x"
                cells = [size, system, variant, str(len(acc)), f"{statistics.mean(acc.values()) * 100:.1f}{sd}" if acc else "-"]
                cells += [f"{statistics.mean(secs.values()):.0f}" if secs else "-", gap, ratio]
                out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def comparison_table(base: str, head: str, skip: tuple[str, ...] = ()) -> str:
    """Runs of one suite at an earlier commit and at this one, in turns (``scripts/compare-commits.sh``): per measurement
    each run's value and the ratio of the medians (after / before); metrics in ``skip`` are left out."""
    runs: dict[str, list[dict[tuple[str, str, str, str], float]]] = {"before": [], "after": []}
    for side, prefix in (("before", base), ("after", head)):
        for path in sorted(RESULTS.glob(f"{prefix}_[0-9]*.json")):
            if path.name.endswith(".meta.json"):
                continue
            records = json.loads(path.read_text())
            runs[side].append({(r["task"], r["system"], _stage_name(r["variant"]), r["metric"]): r["value"] for r in records})
    if not runs["before"] or not runs["after"]:
        return ""
    keys = [k for k in runs["before"][0] if k[3] not in skip and all(k in run for run in runs["before"] + runs["after"])]
    n = len(runs["before"])
    head_row = "| task | system | variant | metric | " + " | ".join(f"before {i + 1}" for i in range(n))
    head_row += " | " + " | ".join(f"after {i + 1}" for i in range(len(runs["after"]))) + " | after / before (medians) |"
    out = [head_row, "|" + " --- |" * (5 + n + len(runs["after"]))]
    for key in keys:
        before, after = [run[key] for run in runs["before"]], [run[key] for run in runs["after"]]
        ratio = statistics.median(after) / statistics.median(before) if statistics.median(before) else float("nan")
        cells = " | ".join(f"{v:.3f}" if v < 10 else f"{v:.1f}" for v in before + after)
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {cells} | {ratio:.3f} |")
    return "\n".join(out) + "\n"


# before/after comparisons (scripts/compare-commits.sh): section name -> (title, earlier runs' prefix, this checkout's,
# metrics left out)
COMPARISONS = {
    "redesign_infer": (
        "Inference before and after the redesign (engine, typed predictions): same machine, in turns",
        "infer_4094fb1",
        "infer_head",
        (),
    ),
    "redesign_train": (
        "Training before and after the redesign (one loop with hooks): same machine, in turns",
        "train_4094fb1",
        "train_head",
        ("elapsed_seconds",),  # the "after" runs measured it from the loop's start, not fit's: see the note
    ),
}


# result files in page order; a name like sharing_full is a second run of the ``sharing`` suite (``--output``)
SECTIONS = ["train", "train_epyc", "train_epyc_bf16", "train_epyc_bf16_peer", "train_epyc_checks", "train_conll_split0"]
SECTIONS += ["train_conll_alone_rates", "dropout"]
SECTIONS += ["train_gpu", "train_gpu_h200", "train_gpu_head", "train_gpu_h100_head", "train_gpu_conll", "train_gpu_conll_h200"]
SECTIONS += ["infer", "infer_epyc", "infer_epyc_bf16", "infer_gpu", "memory", "memory_gpu"]
SECTIONS += ["sharing_full", "sharing_full_peer_lr", "sharing_full_gpu", "sharing_full_cpu_seeds", "sharing_seeds"]
SECTIONS += ["sharing", "sharing_trunk_lr", "split_sweep"]
SECTIONS += ["small_data", "small_data_split0", "imbalance", "imbalance_split0", "tagging_defaults", "tagging_defaults_lr_holdout"]
SECTIONS += ["tagging_defaults_lr", "tagging_defaults_ema_holdout", "tagging_defaults_augment_holdout", "tagging_defaults_augment"]
SECTIONS += ["thresholds"]
SECTIONS += ["zero_shot", "few_shot", "few_shot_holdout", "few_shot_holdout_bf16", "few_shot_label_texts", "few_shot_gpu"]
SECTIONS += ["robustness", "update"]
SECTIONS += [
    "branch_batching",
    "mixing",
    "decoding",
    "serve",
    "serve_onnx",
    "serve_onnx_packed",
    "pass_cost",
    "pass_cost_onnx",
    "pass_cost_onnx_threads",
    "pass_cost_onnx_int8",
    "export",
    "export_hidden",
    "export_unlabelled",
    "export_trunk_only",
    "export_rerun",
    "export_task_branches",
    "export_task_branches_sst2",
    "export_task_branches_conll",
    "export_task_branches_u2000",
    "export_avx512",
    "export_avx512_passes",
    "export_avx512_student",
    "export_avx512_openvino",
    "export_avx512_bf16",
    "export_avx512_ffn",
    "export_avx512_ffn_tasks",
    "export_avx512_ffn_875",
    "export_packed",
    "export_packed_run2",
    "export_heads",
    "export_heads11",
    "export_heads11_run2",
    "export_heads11_run3",
    "export_paired",
    "export_paired_run2",
    "export_avx2",
    "runtimes",
    "runtimes_attention",
    "runtimes_avx512",
    "runtimes_spinning",
    "kernels",
    "kernels_avx2",
    "export_embeddings",
    "decoding_crf",
    "snips",
    "snips_chain_e5",
    "snips_chain_s2lr",
    "snips_chain_e10",
    "snips_chain_e10_crf",
    "snips_chain_e5_bf16",
    "snips_chain_slotw2",
    "snips_chain_slot_rates",
    "snips_chain_rates",
    "snips_chain_rates_crf",
    "snips_chain_rates_e10",
    "snips_chain_rates_t3",
    "snips_chain_rates_s14",
    "snips_chain_rates_s15",
    "snips_chain_rates_ema",
    "snips_chain_e5_bf16_s14",
    "snips_chain_e5_bf16_s15",
    "snips_chain_rates_b16",
    "snips_chain_rates_split3",
    "snips_chain_rates_fgm",
    "snips_chain_rates_pieces",
    "snips_chain_rates_allow",
    "snips_chain_rates_split5",
    "snips_chain_rates_split6",
    "snips_chain_rates_split6_s14",
    "snips_chain_rates_split6_s15",
    "snips_chain_rates_split4_s14",
    "snips_chain_rates_split4_s15",
    "snips_chain_rates_augment",
    "snips_chain_rates_augment_s14",
    "snips_chain_rates_augment_s15",
]
TABLES = {
    "train": train_table,
    "split_sweep": split_sweep_table,
    "infer": infer_table,
    "memory": memory_table,
    "sharing": sharing_table,
    "decoding": decoding_table,
    "mixing": mixing_table,
    "branch_batching": branch_batching_table,
    "dropout": dropout_table,
    "sharing_full_peer_lr": peer_learning_rate_table,
    "sharing_seeds": seeds_table,
    "sharing_full_gpu": seeds_table,
    "sharing_full_cpu_seeds": seeds_table,
    "small_data": seeds_table,
    "tagging_defaults": seeds_table,
    "serve": serve_table,
    "pass_cost": pass_cost_table,
    "export": export_table,
    "runtimes": runtimes_table,
    "kernels": kernels_table,
    "export_embeddings": export_embeddings_table,
    "decoding_crf": seeds_table,
    "snips": snips_table,
    "imbalance": imbalance_table,
    "thresholds": thresholds_table,
    "zero_shot": zero_shot_table,
    "robustness": robustness_table,
    "update": update_table,
    "few_shot": few_shot_table,
    "few_shot_holdout": few_shot_table,
    "few_shot_holdout_bf16": few_shot_table,
    "few_shot_label_texts": few_shot_table,
    "few_shot_gpu": few_shot_table,
}


def main(argv: list[str] | None = None) -> None:
    from finechain.io import write_text

    parts = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks report` from `benchmarks/results/*.json`; "
        "prose from `benchmarks/notes/`. Every number comes from a command in this repository.",
        "",
    ]
    if (NOTES / "summary.md").exists():
        parts += [(NOTES / "summary.md").read_text().strip(), ""]
    for suite in SECTIONS:
        path = RESULTS / f"{suite}.json"
        if not path.exists():
            continue
        records = json.loads(path.read_text())
        searched = RESULTS / f"{suite}_tune.json"  # `finechain tune` on the same samples, run on its own (it takes longer)
        if searched.exists():
            records += [r for r in json.loads(searched.read_text()) if r["variant"].startswith("finechain tune")]
        tuned = RESULTS / f"{suite}_peer_lr.json"  # the same run's peers again at a learning rate chosen on validation
        if tuned.exists():
            chosen = [r for r in json.loads(tuned.read_text()) if r["variant"] == "full fine-tune per task"]
            records += [dict(r, variant="full fine-tune, lr chosen on validation") for r in chosen]
        render = TABLES.get(suite) or TABLES[records[0]["suite"]]
        meta_path = RESULTS / f"{suite}.meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        parts += [f"## {SUITE_TITLES.get(suite, suite)}", ""]
        if meta:
            settings = {k: v for k, v in meta.items() if k not in {"versions", "device", "date"}}
            parts += [
                f"- machine: {meta.get('device')}",
                f"- date: {meta.get('date')}",
                f"- versions: {', '.join(f'{k} {v}' for k, v in meta.get('versions', {}).items())}",
                f"- settings: `{json.dumps(settings)}`",
                "",
            ]
        if (NOTES / f"{suite}.md").exists():
            parts += [(NOTES / f"{suite}.md").read_text().strip(), ""]
        parts += [render(records), ""]
    for name, (title, base, head, skip) in COMPARISONS.items():
        table = comparison_table(base, head, skip)
        if table:
            parts += [f"## {title}", ""]
            if (NOTES / f"{name}.md").exists():
                parts += [(NOTES / f"{name}.md").read_text().strip(), ""]
            parts += [table, ""]
    write_text(DOC, "\n".join(parts).rstrip() + "\n")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
