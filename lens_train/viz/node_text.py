"""What each node, edge and the header say, and their colours (TorchLens conventions).

Labels are Graphviz HTML-like labels (the text between ``<`` and ``>``), so every
piece of user text goes through :func:`html` first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from ..capture.printing import human_bytes

if TYPE_CHECKING:
    from ..capture.layer_log import LayerLog
    from ..capture.model_log import ModelLog, ModuleLog
    from .placement import VisOptions

INPUT_COLOR = "#98FB98"
OUTPUT_COLOR = "#FF9999"
BUFFER_COLOR = "#AAAAAA"
PARAMS_COLOR = "#E6E6E6"
BOOL_COLOR = "#F7D460"
DEFAULT_COLOR = "white"
IF_EDGE_COLOR = "#C07000"

# Functions whose result does not depend on argument order: their edges need no ``arg N``.
_COMMUTATIVE = frozenset({
    "add", "radd", "iadd", "mul", "rmul", "imul", "eq", "ne", "maximum", "minimum", "and", "or", "xor",
    "rand", "ror", "rxor", "iand", "ior", "ixor", "logicaland", "logicalor", "logicalxor",
    "bitwiseand", "bitwiseor", "bitwisexor", "hypot",
})


def html(text: object) -> str:
    """Escape text for a Graphviz HTML-like label.

    Example:
        >>> html("x<y & z")
        'x&lt;y &amp; z'
    """
    return escape(str(text), {'"': "&quot;"})


def shape_label(shape: Sequence[int]) -> str:
    """A tensor or parameter shape as TorchLens prints it: ``5x5``, ``x5``, ``scalar``.

    Example:
        >>> shape_label((5, 5)), shape_label((5,)), shape_label(())
        ('5x5', 'x5', 'scalar')
    """
    if not shape:
        return "scalar"
    if len(shape) == 1:
        return f"x{shape[0]}"
    return "x".join(str(s) for s in shape)


def pass_ranges(passes: Iterable[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``'1-3,5'``.

    Example:
        >>> pass_ranges([4, 1, 2, 3, 6])
        '1-4,6'
    """
    runs: list[list[int]] = []
    for n in sorted(set(passes)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def layer_label(passes: list[LayerLog], log: ModelLog, rolled: bool, boundary: str | None = None) -> str:
    """The text of a layer node: label, shape and size, module, params, condition.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(5, 5)), torch.ones(5, 5), layers_to_save=None)
        >>> layer_label([log["linear_1_1"]], log, rolled=False)
        '<b>linear_1_1</b><br/>5x5 (100 B)<br/>@0<br/>params: 5x5, x5'
    """
    first = passes[0]
    title = first.layer_label_no_pass if rolled else first.layer_label
    if rolled and first.num_passes > 1:
        title += f" (x{first.num_passes})"
    lines = [f"<b>{html(title)}</b>"] + [html(line) for line in shape_lines([(p.pass_num, p.tensor_shape, p.tensor_fsize) for p in passes])]
    where = _address_line(first, log, rolled)
    if where:
        lines.append(html(where))
    if first.parent_params:
        lines.append(html("params: " + ", ".join(shape_label(s) for s in first.parent_params)))
    decided = list(dict.fromkeys(v for layer in passes for v in layer.bool_values))
    if decided:
        lines.append(html("if: " + ", ".join(str(v) for v in decided)))
    if boundary:
        lines.append(f"<i>{'enters' if boundary == 'in' else 'leaves'} the module</i>")
    return "<br/>".join(lines)


def shape_lines(passes: list[tuple[int, tuple[int, ...], int]], limit: int = 4, unit: str = "pass") -> list[str]:
    """Shape and size lines of a node standing for ``(pass, shape, bytes)`` passes.

    One line when every pass has the same shape (``5x5 (100 B)``); otherwise one line
    per distinct shape saying which passes (``unit="call"``: module calls) had it, at
    most ``limit`` lines.

    Example:
        >>> shape_lines([(1, (5, 5), 100)])
        ['5x5 (100 B)']
        >>> shape_lines([(1, (1, 5), 20), (2, (2, 5), 40), (3, (2, 5), 40)])
        ['1x5 (20 B): pass 1', '2x5 (40 B): passes 2-3']
    """
    by_shape: dict[tuple[tuple[int, ...], int], list[int]] = {}
    for num, shape, nbytes in passes:
        by_shape.setdefault((tuple(shape), nbytes), []).append(num)
    texts = [f"{shape_label(shape)} ({human_bytes(nbytes)})" for shape, nbytes in by_shape]
    if len(texts) == 1:
        return texts
    plural = "es" if unit.endswith("s") else "s"
    lines = [f"{text}: {unit}{plural if len(nums) > 1 else ''} {pass_ranges(nums)}" for text, nums in zip(texts, by_shape.values())]
    if len(lines) > limit:
        lines = lines[: limit - 1] + [f"... {len(lines) - limit + 1} more shapes"]
    return lines


def _address_line(layer: LayerLog, log: ModelLog, rolled: bool) -> str:
    if layer.is_buffer and layer.buffer_address:
        return "@" + layer.buffer_address
    if not layer.module_outputs:
        return ""
    entry = layer.module_outputs[0]
    address = entry.rsplit(":", 1)[0]
    calls = log.modules[address].num_passes if address in log.modules else 1
    return "@" + (address if rolled or calls == 1 else entry)


def layer_style(first: LayerLog, from_input: bool, boundary: str | None) -> dict[str, str]:
    """Colour, shape and border of a layer node.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Linear(5, 5), torch.ones(5, 5), layers_to_save=None)
        >>> style = layer_style(log["linear_1_1"], from_input=True, boundary=None)
        >>> style["fillcolor"], style["style"]
        ('#E6E6E6', 'filled')
    """
    if first.is_input or boundary == "in":
        fill = INPUT_COLOR
    elif first.is_output or boundary == "out":
        fill = OUTPUT_COLOR
    elif first.is_buffer:
        fill = BUFFER_COLOR
    elif first.bool_values:
        fill = BOOL_COLOR
    elif first.num_params:
        fill = PARAMS_COLOR
    else:
        fill = DEFAULT_COLOR
    # Tensors that do not descend from an input (torch.randn, constants) are dashed.
    dashed = boundary is not None or not (from_input or first.is_input or first.is_buffer)
    return {
        "shape": "box" if first.containing_modules and boundary is None else "oval",
        "style": "filled,dashed" if dashed else "filled",
        "fillcolor": fill,
        "tooltip": _tooltip(first, from_input),
    }


def _tooltip(layer: LayerLog, from_input: bool) -> str:
    parts = [f"{layer.layer_label}: {layer.func_name}", f"dtype {layer.tensor_dtype}"]
    if layer.computed_inside_module:
        parts.append(f"inside {layer.computed_inside_module}")
    if layer.is_internally_generated or not (from_input or layer.is_input or layer.is_buffer):
        parts.append("internally generated (no input ancestor)")
    return "; ".join(parts)


def module_label(module: ModuleLog, call: dict[str, Any], log: ModelLog, rolled: bool) -> str:
    """The text of a collapsed module node: address, class, output shape, parameter count.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()))
        >>> log = lt.log_forward_pass(model, torch.ones(1, 2), layers_to_save=None)
        >>> module_label(log.modules["0"], log.modules["0"].calls[0], log, rolled=True)
        '<b>@0</b><br/>Sequential<br/>1x3 (12 B)<br/>params: 9'
    """
    address = module.address if rolled or module.num_passes == 1 else f"{module.address}:{call['pass_num']}"
    calls = f" (x{module.num_passes})" if rolled and module.num_passes > 1 else ""
    lines = [f"<b>@{html(address)}{calls}</b>", html(module.module_type)]
    calls = module.calls if rolled else [call]
    outs = [(c["pass_num"], log[c["outputs"][0]]) for c in calls if c["outputs"]]
    if outs:
        shapes = shape_lines([(num, out.tensor_shape, out.tensor_fsize) for num, out in outs], unit="call")
        more = len(call["outputs"]) - 1
        if more:  # the first output tensor is shown; say how many others the module returns
            shapes = [shapes[0] + f" +{more}"] if len(shapes) == 1 else shapes + [f"+{more} more outputs"]
        lines += [html(line) for line in shapes]
    if module.num_params:
        lines.append(html(f"params: {module.num_params:,}"))
    return "<br/>".join(lines)


def module_style(module: ModuleLog) -> dict[str, str]:
    """Colour and shape of a collapsed module node.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.ReLU()), torch.ones(2), layers_to_save=None)
        >>> module_style(log.modules["0"])["fillcolor"]
        'white'
    """
    fill = PARAMS_COLOR if module.num_params else DEFAULT_COLOR
    return {"shape": "box3d", "style": "filled", "fillcolor": fill, "tooltip": f"{module.address} ({module.module_type}), collapsed"}


def cluster_label(module: ModuleLog, key: str, rolled: bool) -> str:
    """``@address (Class)``, with the call number (unrolled) or call count (rolled).

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.ReLU()), torch.ones(2), layers_to_save=None)
        >>> cluster_label(log.modules["0"], "0:1", rolled=False)
        '<b>@0</b> (ReLU)'
    """
    shown = module.address if rolled or module.num_passes == 1 else key
    text = f"<b>@{html(shown)}</b> ({html(module.module_type)})"
    if rolled and module.num_passes > 1:
        text += f" (x{module.num_passes})"
    num = key.rpartition(":")[2]
    calls = module.calls if rolled or not num.isdigit() else module.calls[int(num) - 1:int(num)]
    return text + buffer_update_text(calls)


def buffer_update_text(calls: list[dict[str, Any]]) -> str:
    """A line naming the bookkeeping (buffer updates) these module calls ran, or ``""``.

    Bookkeeping takes no node (it is not numbered): the module that ran it says so.

    Example:
        >>> buffer_update_text([{"buffer_updates": ["add_bk_1"]}])
        '<br/><i>buffer update: add_bk_1</i>'
    """
    updates = sorted({u for call in calls for u in call.get("buffer_updates", ())})
    if not updates:
        return ""
    return f'<br/><i>buffer update{"s" if len(updates) > 1 else ""}: {html(", ".join(updates))}</i>'


def labels_arguments(layer: LayerLog) -> bool:
    """Whether edges into ``layer`` should say which argument they feed.

    Example:
        >>> import torch, lens_train as lt
        >>> class Div(torch.nn.Module):
        ...     def forward(self, x):
        ...         return x / (x + 1)
        >>> log = lt.log_forward_pass(Div(), torch.ones(2), layers_to_save=None)
        >>> labels_arguments(log["truediv_1_2"]), labels_arguments(log["add_1_1"])
        (True, False)
    """
    if layer.layer_type in _COMMUTATIVE:
        return False
    positions = {pos for locs in layer.parent_layer_arg_locs.values() for pos in locs}
    return len(positions) > 1


def arg_text(positions: Iterable[Any]) -> str:
    """``[0]`` -> ``'arg 0'``; ``[(0, 1)]`` -> ``'arg 0[1]'``; ``['weight']`` -> ``'arg weight'``.

    Example:
        >>> arg_text([1, 0]), arg_text([(0, 1)]), arg_text(["other"])
        ('arg 0, 1', 'arg 0[1]', 'arg other')
    """
    def one(p: Any) -> str:
        return f"{p[0]}[{p[1]}]" if isinstance(p, tuple) else str(p)

    return "arg " + ", ".join(one(p) for p in sorted(set(positions), key=_position_order))


def _position_order(p: Any) -> tuple[int, int, str]:
    # positional (int or (list position, index)) before keyword arguments
    if isinstance(p, str):
        return (1, 0, p)
    return (0, p[0] if isinstance(p, tuple) else int(p), str(p))


def header_label(log: ModelLog, opts: VisOptions) -> str:
    """Model name, tensor count and size, parameter count and size, and the view.

    Example:
        >>> import torch, lens_train as lt
        >>> from lens_train.viz.placement import VisOptions
        >>> log = lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2), layers_to_save=None)
        >>> header_label(log, VisOptions("rolled")).split('<br align="left"/>')[:3]
        ['<b>ReLU</b>', '3 tensors total (24 B)', 'no parameters']
    """
    params = (
        f"{log.num_params_total:,} params in {log.num_param_tensors} tensors ({human_bytes(log.param_bytes_total)})"
        if log.num_params_total else "no parameters"
    )
    view = f"{opts.mode} view"
    if opts.module:
        view += f", inside {opts.module}"
    if opts.nesting_depth:
        view += f", nesting depth {opts.nesting_depth}"
    lines = [f"<b>{html(log.model_name)}</b>", html(f"{len(log)} tensors total ({human_bytes(log.total_activation_bytes)})"),
             html(params), html(view)]
    return '<br align="left"/>'.join(lines) + '<br align="left"/>'
