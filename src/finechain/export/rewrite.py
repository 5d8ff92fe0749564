"""A copy of an exported chain with its graph rewritten (int8 weights, fp16 or bf16 storage): a chain folder is exported
first, the tokenizer copied, the flows named again from the new folder, and each task's outputs compared with the
graph the step started from. Nothing is left at ``out`` unless the whole step worked."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from finechain.export.checks import compare_embeddings, compare_outputs
from finechain.inference import Engine
from finechain.inference.exported import EXPORT_MANIFEST, ExportedChain, ExportManifest, graph_files, is_exported, read_export_manifest
from finechain.io import building_folder, write_json
from finechain.spec.flows import FlowSpec, rebased_json


def rewritten_export(
    source: str | Path,
    out: str | Path,
    *,
    rewrite: Callable[[Path, Path], None],
    check: Callable[[Path, str], None],
    weights: Callable[[str], str],
    step: str | Callable[[], str],
    adds_up: bool,
    overwrite: bool = False,
    runtime: str | None = None,
) -> ExportManifest:
    """Write ``source`` (an exported folder; a chain folder is exported first) at ``out`` with each of its graphs passed
    through ``rewrite(graph, new_graph)``. ``check(source, weights)`` raises when the step cannot apply to the source's
    weights; the manifest gets ``weights(old weights)`` and ``step`` (or, when ``step`` is a callable, what it returns
    once the graphs are rewritten). Each task's ``max_abs_diff`` becomes the largest change of its outputs against the
    source graph on sample texts, or with ``adds_up`` that change added to the source's own value (at most that far
    from the chain it came from). ``runtime`` (when given) becomes the runtime the new graphs are made for, checked with.

    Example:
        >>> rewritten_export("demo-onnx", "demo-int8", rewrite=quantize_graph, check=fp32_only, weights=lambda _: "int8",
        ...                  step=INT8_STEP, adds_up=False).weights  # doctest: +SKIP
        'int8'
    """
    source = Path(source)
    with building_folder(out, overwrite) as target:
        before = source
        if not is_exported(source):
            from finechain.export.onnx import export_onnx  # a chain folder: PyTorch is needed for this step only

            before = target / ".fp32"  # exported first, removed before the folder is put in place
            export_onnx(source, before)
        manifest = read_export_manifest(before)
        check(source, manifest.weights)
        shutil.copy2(before / manifest.tokenizer, target / manifest.tokenizer)
        for graph in graph_files(manifest):  # the one graph, or the trunk's and each task's
            (target / graph).parent.mkdir(parents=True, exist_ok=True)
            rewrite(before / graph, target / graph)
        flows_json = rebased_json([FlowSpec.model_validate(f) for f in manifest.flows], before, out)  # other chains named from out
        step_done = step if isinstance(step, str) else step()  # a callable: said once the graphs are rewritten
        update = {"weights": weights(manifest.weights), "steps": [*manifest.steps, step_done], "flows": flows_json}
        if runtime is not None and runtime != manifest.runtime:
            update |= {"runtime": runtime, "format": max(manifest.format, 4)}  # older readers would run it on the wrong runtime
        manifest = manifest.model_copy(update=update, deep=True)
        write_json(target / EXPORT_MANIFEST, manifest.model_dump(mode="json"))
        names = list(manifest.tasks)
        reference, rewritten = Engine(ExportedChain(before)), Engine(ExportedChain(target))
        changes = compare_outputs(reference, rewritten, names)
        for name in names:
            manifest.tasks[name].max_abs_diff = ((manifest.tasks[name].max_abs_diff or 0.0) if adds_up else 0.0) + changes[name]
        if manifest.embeddings:
            change = compare_embeddings(reference, rewritten)
            manifest.embeddings_max_abs_diff = ((manifest.embeddings_max_abs_diff or 0.0) if adds_up else 0.0) + change
        write_json(target / EXPORT_MANIFEST, manifest.model_dump(mode="json"))
        if before != source:
            shutil.rmtree(before)
    return manifest
