"""Read spec files: YAML with the line of every value, validated by the models of ``schema``; every problem is one
line naming the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finechain.errors import SpecError
from finechain.heads import HEADS, HeadOptions, head_type
from finechain.io import read_text_file
from finechain.spec.flows import FlowSpec, StageSpec, flow_problem
from finechain.spec.names import closest_name
from finechain.spec.schema import FLAT_HEAD_OPTIONS, ChainSpec, TaskSpec

Lines = dict[tuple[Any, ...], int]
MAX_VALUES = 100_000  # a spec is small; more values than this come from nested YAML aliases (a "billion laughs" file)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int], path: Path) -> int:
    """How many values ``node`` stands for once every alias is expanded (memoised: linear in the file's size)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise SpecError(
            "a YAML alias refers to a value that contains it", file=path, line=node.start_mark.line + 1, fix="remove the recursive alias"
        )
    open_nodes.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    size = 1
    for child in children:
        size += _expanded_size(child, sizes, open_nodes, path)
        if size > MAX_VALUES:
            raise SpecError(
                f"the spec expands to more than {MAX_VALUES:,} values through YAML aliases",
                file=path,
                line=node.start_mark.line + 1,
                fix="write the values out instead of nesting aliases",
            )
    open_nodes.discard(key)
    sizes[key] = size
    return size


def _line_index(node: yaml.Node, path: tuple[Any, ...] = (), seen: set[int] | None = None) -> Lines:
    """The line of every key path; a node reached again through an alias is indexed once, at its first path."""
    seen = set() if seen is None else seen
    lines = {path: node.start_mark.line + 1}
    if id(node) in seen:
        return lines
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[(*path, key.value)] = key.start_mark.line + 1
            lines.update({k: v for k, v in _line_index(value, (*path, key.value), seen).items() if k != (*path, key.value)})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, i), seen))
    return lines


def _load_yaml(path: Path) -> tuple[Any, Lines]:
    text = read_text_file(path)
    try:
        loader = yaml.SafeLoader(text)  # (its reader already refuses control characters)
        try:
            node = loader.get_single_node()
            if node is not None:
                _expanded_size(node, {}, set(), path)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else text[: getattr(err, "position", 0)].count("\n") + 1
        problem = getattr(err, "problem", None) or getattr(err, "reason", None) or str(err).splitlines()[0]
        raise SpecError(f"invalid YAML: {problem}", file=path, line=line, fix="see docs/spec.md for an example") from None
    if not isinstance(data, dict) or node is None:
        raise SpecError("the spec must be a YAML mapping", file=path, line=1, fix="see docs/spec.md for an example")
    return data, _line_index(node)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in get_args(annotation) if (m := _nested_model(arg)) is not None), None)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The spec model that holds the field at ``loc`` (list indices skipped), e.g. TaskSpec for ``tasks.0.x``."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        inner = _nested_model(field.annotation) if field is not None else None
        if inner is None:
            return None
        model = inner
    return model


def _head_hint(name: str, kind: str | None) -> str | None:
    """For an unknown head option: the head type that has it, or a close name among this type's options."""
    owners = sorted(t for t in HEADS.names() if name in HEADS.get(t).Options.model_fields)
    if owners and kind not in owners:
        return f"'{name}' is an option of {' and '.join(owners)} tasks, not of {kind} tasks: remove it"
    options = HEADS.get(kind).Options if kind in HEADS else HeadOptions
    close = closest_name(name, options.model_fields)
    return f"did you mean '{close}'?" if close else None


def unknown_field_hint(model: type[BaseModel], loc: tuple[Any, ...], kind: str | None = None) -> str:
    """How to fix an unknown spec field: the close name it may be a typo of, or the block it belongs in. ``kind`` is the
    task's type, for options of a task's ``head:``.

    Example:
        >>> unknown_field_hint(ChainSpec, ("tasks", 0, "learning_rat"))
        "did you mean 'training.learning_rate'? (training settings go under 'training:')"
        >>> unknown_field_hint(ChainSpec, ("epochs",))
        "move it under 'training:'"
        >>> unknown_field_hint(ChainSpec, ("tasks", 0, "text_colum"))
        "did you mean 'text_column'?"
        >>> unknown_field_hint(ChainSpec, ("tasks", 0, "head", "decoding"), "classification")
        "'decoding' is an option of tagging tasks, not of classification tasks: remove it"
    """
    *parents, name = loc
    holder = _model_at(model, tuple(parents))
    if holder is None:
        return "remove or rename it"
    if issubclass(holder, HeadOptions):
        return _head_hint(str(name), kind) or "remove or rename it"
    training = next((f for f in ("training",) if f in holder.model_fields), None)
    nested = _nested_model(holder.model_fields[training].annotation) if training else None
    if nested is not None and name in nested.model_fields:
        return f"move it under '{training}:'"
    close = closest_name(str(name), holder.model_fields)
    if close:
        return f"did you mean '{close}'?"
    close = closest_name(str(name), nested.model_fields) if nested is not None else None
    if close:
        return f"did you mean '{training}.{close}'? (training settings go under '{training}:')"
    return "remove or rename it"


def nearest_line(lines: Lines, loc: tuple[Any, ...]) -> int | None:
    """The line of ``loc`` in the file, or of its nearest enclosing key that has one (None: not even the root).

    Example:
        >>> nearest_line({("flows", 0): 2, ("flows", 0, "stages", 1): 5}, ("flows", 0, "stages", 1, "allow", "sprot"))
        5
    """
    return next((lines[loc[:cut]] for cut in range(len(loc), -1, -1) if loc[:cut] in lines), None)


def _as_written(loc: tuple[Any, ...], lines: Lines) -> tuple[Any, ...]:
    """``loc`` as the file spells it: a head option written flat (``tasks.0.decoding``) keeps its flat path."""
    if "head" in loc and loc not in lines:
        at = loc.index("head")
        flat = (*loc[:at], *loc[at + 1 :])
        if len(loc) > at + 1 and loc[at + 1] in FLAT_HEAD_OPTIONS and flat in lines:
            return flat
    return loc


def _task_type(data: Any, loc: tuple[Any, ...]) -> str | None:
    """The ``type`` of the task that ``loc`` (relative to ``data``) points into, if any."""
    if len(loc) > 1 and loc[0] == "tasks" and isinstance(loc[1], int) and isinstance(data, dict):
        tasks = data.get("tasks")
        task = tasks[loc[1]] if isinstance(tasks, list) and loc[1] < len(tasks) else None
        return task.get("type", "classification") if isinstance(task, dict) else None
    return data.get("type", "classification") if isinstance(data, dict) else None


def _raise_first(
    err: ValidationError, path: Path, lines: Lines, data: Any, prefix: tuple[Any, ...] = (), model: type[BaseModel] = ChainSpec
) -> None:
    first, kinds = _reported_error(err.errors())
    loc = _as_written(first["loc"], {k[len(prefix) :]: v for k, v in lines.items() if k[: len(prefix)] == prefix})
    line = nearest_line(lines, (*prefix, *loc))
    field = ".".join(str(p) for p in loc) or "spec"
    unknown = first["type"] == "extra_forbidden"
    message = "unknown field" if unknown else first["msg"].removeprefix("Value error, ")
    if len(kinds) > 1:  # a value that may be one of several kinds (`split: auto` or a number) and is none of them
        alternatives = " or ".join(dict.fromkeys(kinds))
        message = f"expected {alternatives}, not {first.get('input')!r}"
        raise SpecError(f"{field}: {message}", file=path, line=line, fix=f"write {alternatives}") from None
    if unknown:
        hint = unknown_field_hint(model, tuple(first["loc"]), _task_type(data, tuple(first["loc"])))
    else:
        hint = VALUE_HINTS.get(first["type"], "see docs/spec.md")
        if first["type"] in VALUE_HINTS:
            message += f", not {first.get('input')!r}"
    raise SpecError(f"{field}: {message}", file=path, line=line, fix=hint) from None


# the wrappers and union members pydantic names in an error's location besides the fields: "function-after", "int",
# "literal['auto']", "dict[str,union[str,list[str]]]", ...
_TYPE_PARTS = {"function-after", "function-wrap", "function-before", "int", "float", "str", "bool", "list", "dict", "none"}

# a union member's error, as the kind of value it asked for
_KINDS = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping",
}


def _type_part(part: Any) -> bool:
    return isinstance(part, str) and (part in _TYPE_PARTS or "[" in part)


def _reported_error(errors: list[Any]) -> tuple[dict[str, Any], list[str]]:
    """The error to report, with its location as fields only, and, where the value may be one of several kinds (a
    union), the kinds it could have been: the members' errors at the deepest location the value reached (a mapping
    whose values are wrong is reported at the value, not as "not 'names'").

    Example:
        >>> errors = [{"type": "int_parsing", "loc": ("split", "int"), "msg": "m", "input": "x"},
        ...           {"type": "literal_error", "loc": ("split", "literal['auto']"), "msg": "Input should be 'auto'", "input": "x"}]
        >>> _reported_error(errors)[1]
        ['a whole number', "'auto'"]
    """
    fields = [dict(error, loc=tuple(part for part in error["loc"] if not _type_part(part))) for error in errors]
    first = fields[0]
    cut = next((i for i, part in enumerate(errors[0]["loc"]) if _type_part(part) and "function" not in part), None)
    if cut is None:
        return first, []
    owner = tuple(part for part in errors[0]["loc"][:cut] if not _type_part(part))
    members = [error for error in fields if error["loc"][: len(owner)] == owner]
    deepest = max(len(error["loc"]) for error in members)
    members = [error for error in members if len(error["loc"]) == deepest]
    kinds = [_KINDS.get(e["type"], e["msg"].removeprefix("Input should be ")) for e in members]
    return members[0], kinds if len(members) > 1 else []


# what to do about a value of the wrong kind (pydantic's error type -> fix)
VALUE_HINTS = {
    "int_parsing": "write a whole number, e.g. 5 (YAML reads 1e9 as text: write 1000000000)",
    "int_from_float": "write a whole number, e.g. 5",
    "int_type": "write a whole number, e.g. 5",
    "float_parsing": "write a number, e.g. 0.001 or 1.0e-3",
    "float_type": "write a number, e.g. 0.001 or 1.0e-3",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write text (quote it if it looks like a number or a list)",
    "list_type": "write a list, e.g. [a, b]",
    "dict_type": "write a mapping, e.g. {key: value}",
    "model_type": "write a mapping of its fields, see docs/spec.md",
}


def _require_train(task: TaskSpec, path: Path, lines: Lines, at: tuple[Any, ...]) -> None:
    if task.train is None and head_type(task.type).option_labels(task.head) is None:  # zero-shot tasks need no examples
        raise SpecError(f"task '{task.name}' has no 'train' file", file=path, line=lines.get(at), fix="add 'train: path/to/train.csv'")


def load_chain_spec(path: str | Path) -> ChainSpec:
    """Read and validate a chain spec; data paths are made relative to the spec file.

    Example:
        >>> spec = load_chain_spec("examples/demo.yaml")  # doctest: +SKIP
        >>> spec.tasks[0].name  # doctest: +SKIP
        'intent'
    """
    path = Path(path)
    data, lines = _load_yaml(path)
    try:
        spec = ChainSpec.model_validate(data)
    except ValidationError as err:
        _raise_first(err, path, lines, data)
    for i, task in enumerate(spec.tasks):
        _require_train(task, path, lines, ("tasks", i))
    _check_flows(spec, path, lines)
    flows = [flow.model_copy(update={"stages": [_resolve_chain(s, path.parent) for s in flow.stages]}) for flow in spec.flows]
    return spec.model_copy(update={"tasks": [t.resolve_paths(path.parent) for t in spec.tasks], "flows": flows})


class FlowFile(BaseModel):
    """A file of flows for ``add-flow``: ``flows: [...]`` (or one flow mapping, read as a list of one)."""

    model_config = ConfigDict(extra="forbid")

    flows: list[FlowSpec] = Field(min_length=1)


def load_flow_file(path: str | Path, tasks: dict[str, str]) -> tuple[list[FlowSpec], Lines]:
    """Read a flow file for ``add-flow``: one flow mapping, or ``flows: [...]`` with unique names, each graph checked
    against a chain's ``tasks`` (name -> type), other chains' folders made relative to the file's folder. Returns the
    flows and the YAML lines (keys ``("flows", i, ...)``). What needs the tasks' labels is checked when they are added.

    Example:
        >>> flows, _ = load_flow_file("assistant.yaml", {"intent": "classification", "slots": "tagging"})  # doctest: +SKIP
        >>> flows[0].stages[1].after  # doctest: +SKIP
        'intent'
    """
    path = Path(path)
    data, lines = _load_yaml(path)
    if "flows" not in data:  # one flow: its lines as the first of a list
        data, lines = {"flows": [data]}, {("flows", 0, *key): line for key, line in lines.items()}
    try:
        flows = FlowFile.model_validate(data).flows
    except ValidationError as err:
        _raise_first(err, path, lines, data, model=FlowFile)
    _check_flow_graphs(flows, tasks, path, lines)
    for i, flow in enumerate(flows):
        for j, stage in enumerate(flow.stages):
            if stage.train_on != "data":
                line = lines.get(("flows", i, "stages", j, "train_on"))
                message = f"stage '{stage.key}' has 'train_on', which applies when a chain is trained from its spec"
                raise SpecError(message, file=path, line=line, fix="drop it: the chain's tasks are trained already")
    flows = [flow.model_copy(update={"stages": [_resolve_chain(s, path.parent) for s in flow.stages]}) for flow in flows]
    return flows, lines


def _check_flow_graphs(flows: list[FlowSpec], tasks: dict[str, str], path: Path, lines: Lines) -> None:
    """Every flow's graph against ``tasks`` (name -> type): the first problem, with its YAML line."""
    span_tasks = {name for name, kind in tasks.items() if head_type(kind).token_level}
    names: list[str] = []
    for i, flow in enumerate(flows):
        if flow.name in names:
            line = lines.get(("flows", i, "name"))
            raise SpecError(f"flow '{flow.name}' is listed twice", file=path, line=line, fix="give each flow its own name")
        names.append(flow.name)
        found = flow_problem(flow, span_tasks, set(tasks))
        if found is not None:
            j, (message, where, fix) = found
            raise SpecError(message, file=path, line=nearest_line(lines, ("flows", i, "stages", j, *where)), fix=fix)


def _check_flows(spec: ChainSpec, path: Path, lines: Lines) -> None:
    """Every flow's graph against the spec's tasks, and its routed training: the first problem, with its YAML line."""
    _check_flow_graphs(spec.flows, {t.name: t.type for t in spec.tasks}, path, lines)
    trained_by: dict[str, str] = {}  # a task trained on a route's rows: by one stage only
    for i, flow in enumerate(spec.flows):
        for j, stage in enumerate(flow.stages):
            if stage.train_on == "data" or stage.chain is not None:
                continue
            line = lines.get(("flows", i, "stages", j, "train_on"))
            if stage.task in trained_by:
                message = (
                    f"task '{stage.task}' is trained on a route's rows by two stages ({trained_by[stage.task]}, {flow.name}.{stage.key})"
                )
                raise SpecError(message, file=path, line=line, fix="keep 'train_on' on one of them; add a task per route")
            trained_by[stage.task] = f"{flow.name}.{stage.key}"
            task = next(t for t in spec.tasks if t.name == stage.task)
            if task.train is None:
                raise SpecError(
                    f"stage '{stage.key}' trains task '{stage.task}' on its route's rows, but it has no 'train' file",
                    file=path,
                    line=line,
                    fix="give the task a 'train' file",
                )


def _resolve_chain(stage: StageSpec, base: Path) -> StageSpec:
    """A stage's other chain folder, relative to the spec file's folder."""
    if stage.chain is None or Path(stage.chain).is_absolute():
        return stage
    return stage.model_copy(update={"chain": str(base / stage.chain)})


def spec_line(path: str | Path, *keys: Any) -> int | None:
    """The line of ``keys`` (e.g. ``"split"``, or ``"tasks", 0, "train"``) in a spec file, if it is set there.

    Example:
        >>> spec_line("chain.yaml", "split")  # doctest: +SKIP
        3
    """
    return _load_yaml(Path(path))[1].get(keys) if keys else None


def load_task_specs(path: str | Path) -> list[TaskSpec]:
    """Read a task file for ``add-task``: one task mapping, or ``tasks: [...]`` with unique names.

    Example:
        >>> load_task_specs("topic.yaml")[0].type  # doctest: +SKIP
        'classification'
    """
    path = Path(path)
    data, lines = _load_yaml(path)
    items, prefix = (data["tasks"], ("tasks",)) if "tasks" in data else ([data], ())
    if not isinstance(items, list) or not items:
        raise SpecError("tasks must be a non-empty list", file=path, line=lines.get(("tasks",)), fix="list one or more tasks")
    specs: list[TaskSpec] = []
    for i, item in enumerate(items):
        at = (*prefix, i) if prefix else ()
        try:
            spec = TaskSpec.model_validate(item)
        except ValidationError as err:
            _raise_first(err, path, lines, item, at, TaskSpec)
        _require_train(spec, path, lines, at)
        if spec.name in {s.name for s in specs}:
            raise SpecError(
                f"task '{spec.name}' is listed twice", file=path, line=lines.get((*at, "name")), fix="give each task its own name"
            )
        specs.append(spec.resolve_paths(path.parent))
    return specs
