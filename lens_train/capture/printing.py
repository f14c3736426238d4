"""Text views of a :class:`ModelLog` and its layers, in the TorchLens style."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .layer_log import LayerLog
    from .model_log import ModelLog


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'``.

    Example:
        >>> human_bytes(148), human_bytes(2048)
        ('148 B', '2.0 KB')
    """
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def shape_text(shape: tuple[int, ...]) -> str:
    """``(5, 5)`` -> ``'5x5'``; a scalar is ``'scalar'``."""
    return "x".join(str(s) for s in shape) if shape else "scalar"


def format_layer(layer: LayerLog) -> str:
    """The printout of one layer pass: tensor, parameters, function, modules, graph links, call stack."""
    passes = f" (pass {layer.pass_num}/{layer.num_passes})" if layer.num_passes > 1 else ""
    lines = [
        f"Layer {layer.layer_label}{passes}, operation {layer.operation_index + 1}:",
        f"\tOutput tensor: shape={layer.tensor_shape}, dtype={layer.tensor_dtype}, size={human_bytes(layer.tensor_fsize)}, device={layer.device}",
        f"\t\t{_saved_text(layer)}",
    ]
    if layer.edit is not None:
        original = layer.original_activation
        lines.append(f"\tEdited: {layer.edit}; before the edit: {_preview(original) if original is not None else '(not kept)'}")
    if layer.gradient is not None:
        g = layer.gradient
        lines.append(f"\tGradient: shape={tuple(g.shape)}, dtype={g.dtype}, size={human_bytes(g.nelement() * g.element_size())}")
    if layer.transformed_activation is not None:
        lines.append(f"\tTransformed activation: {_preview(layer.transformed_activation)}")
    lines.append(f"\tParams: {_params_text(layer)}")
    lines.append(f"\tFunction: {layer.func_name} (grad_fn: {layer.grad_fn_name})")
    lines.append(f"\tComputed inside module: {layer.computed_inside_module or 'not computed inside a module'}")
    lines.append(f"\tOutput of modules: {', '.join(layer.module_outputs) or 'none'}")
    lines.append(f"\tOutput of bottom-level module: {layer.bottom_level_module_output or 'none'}")
    lines.append(f"\tParent layers: {_parents_text(layer) or 'no parent layers'}")
    lines.append(f"\tChild layers: {', '.join(layer.child_layers) or 'no child layers'}")
    flags = [n for n in ("is_input", "is_output", "is_buffer", "is_internally_generated", "is_inplace", "is_conditional") if getattr(layer, n)]
    if layer.buffer_address:
        flags.append(f"buffer address: {layer.buffer_address}")
    if layer.bool_values:
        flags.append(f"bool values: {layer.bool_values}, branch taken starts at {', '.join(layer.branch_start_layers) or 'none'}")
    if flags:
        lines.append(f"\tFlags: {', '.join(flags)}")
    if layer.num_passes > 1:
        lines.append(f"\tPasses: {', '.join(layer.pass_labels)}")
    lines.append(f"\tTime elapsed: {layer.time_s * 1e3:.3f} ms")
    lines.extend(_stack_lines(layer))
    lines.append(f"\tLookup keys: {', '.join(map(str, layer.lookup_keys))}")
    return "\n".join(lines)


def _saved_text(layer: LayerLog) -> str:
    if layer.tensor_contents is not None:
        return _preview(layer.tensor_contents)
    return "(saved on disk; call .materialize_activation())" if layer.is_saved else "(not saved)"


def _params_text(layer: LayerLog) -> str:
    if not layer.num_params:
        return "no params used"
    shapes = ", ".join(shape_text(s) for s in layer.parent_params)
    return (f"computed from {len(layer.parent_params)} parameter(s) ({shapes}); {layer.num_params} params, "
            f"{human_bytes(layer.param_bytes)} ({', '.join(layer.param_addresses)})")


def _parents_text(layer: LayerLog) -> str:
    def where(pos: Any) -> str:
        return f"{pos[0]}[{pos[1]}]" if isinstance(pos, tuple) else str(pos)

    locs = layer.parent_layer_arg_locs
    return ", ".join(f"{p} (arg {', '.join(where(x) for x in locs.get(p, []))})" if locs.get(p) else p
                     for p in layer.parent_layers)


def _stack_lines(layer: LayerLog, n: int = 3) -> list[str]:
    frames = layer.func_call_stack
    if not frames:
        return []
    more = f" (+{len(frames) - n} outer)" if len(frames) > n else ""
    return [f"\tCall stack (innermost first){more}:", *(f"\t\t{f}" for f in frames[:n])]


def _preview(t: Any, n: int = 8) -> str:
    try:
        flat = t.detach().reshape(-1)[:n].tolist()
    except (AttributeError, RuntimeError):
        return repr(t)[:120]
    more = ", ..." if t.numel() > n else ""
    return "[" + ", ".join(_num(v) for v in flat) + more + "]"


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_model_log(log: ModelLog) -> str:
    """The printout of a whole log: summary, module hierarchy, numbered layer list."""
    s = log.structure
    if s["is_recurrent"]:
        kind = f"recurrent (at most {s['max_passes']} loops)"
    else:
        kind = "purely feedforward"
    branching = "with branching" if s["is_branching"] else "without branching"
    cond = "with conditional (if-then) branching" if s["has_conditionals"] else "no conditional (if-then) branching"
    lines = [
        f"Log of {log.model_name} forward pass:",
        f"\tModel structure: {kind}, {branching}; {cond}; {len(log.modules)} submodules.",
        f"\tNumber of tensors: {len(log)} total ({human_bytes(log.total_activation_bytes)}), "
        f"{log.num_saved} saved ({human_bytes(log.saved_activation_bytes)}).",
        f"\tNumber of operations: {log.num_operations}; {log.num_param_ops} use parameters.",
        f"\tParameters: {log.num_params_total} params in {log.num_param_tensors} tensors ({human_bytes(log.param_bytes_total)}).",
        f"\tRandom seed: {log.random_seed}",
        f"\tTime elapsed: {log.elapsed_s:.3f}s",
    ]
    if log.modules:
        lines.append("\tModule hierarchy:")
        for m in log.modules.values():
            calls = f" (x{m.num_passes})" if m.num_passes > 1 else ""
            lines.append("\t\t" + "  " * (m.depth - 1) + f"{m.address} ({m.module_type}){calls}")
    lines.append("\tLayers (in order of execution):")
    for i, layer in enumerate(log):
        passes = f" ({layer.pass_num}/{layer.num_passes} passes)" if layer.num_passes > 1 else ""
        saved = "" if layer.is_saved else " (not saved)"
        edited = f" [edited: {layer.edit}]" if layer.edit is not None else ""
        lines.append(f"\t\t({i}) {layer.layer_label}{passes} {shape_text(layer.tensor_shape)}{saved}{edited}")
    if log.meta.get("sharding_ops"):
        lines.append(f"\t{log.meta['sharding_ops']} ops run inside FSDP's hooks (all-gathers, parameter views) "
                     "are not numbered.")
    updates = [u for u in log.buffer_updates if u["writes"]]
    if updates:
        lines.append("\tBuffer updates (bookkeeping, not numbered; log.buffer_updates):")
        for u in updates:
            where = f" in {u['module']}" if u["module"] else ""
            lines.append(f"\t\t{u['label']}: {u['buffer']}.{u['func_name']}{where}")
    return "\n".join(lines)
