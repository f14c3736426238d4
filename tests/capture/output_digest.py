"""Digests of everything a capture produces, to prove an engine change leaves the output identical.

``tests/capture/test_output_identity.py`` compares each zoo model's digest with the one
stored in ``tests/capture/data/zoo_digest.json``. After a change that is *meant* to alter
the output, regenerate the file and say why in the commit::

    .venv/bin/python -m tests.capture.output_digest > tests/capture/data/zoo_digest.json
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import torch

import lens_train as lt
from lens_train.viz.dot import to_dot

# Fields that measure time, or hold values hashed apart
_VOLATILE = {"time_s", "elapsed_s", "created", "crc32"}
_TIME_LINE = re.compile(r"Time elapsed: [^\n]*")


def _plain(value: Any) -> Any:
    """A JSON-able, address-free view of a field value."""
    if isinstance(value, torch.Tensor):
        v = value.detach()
        return ["tensor", list(v.shape), str(v.dtype), _tensor_hash(v)]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "co_filename"):
        return [Path(value.co_filename).name, value.co_name]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "file") and hasattr(value, "line"):  # FrameInfo
        return [Path(value.file).name, value.line, value.function]
    return str(value)


def _tensor_hash(t: torch.Tensor) -> str:
    if t.is_sparse or t.layout != torch.strided or t.device.type == "meta":
        return "n/a"
    try:
        data = t.contiguous().cpu().reshape(-1)
        if data.is_complex():
            data = torch.view_as_real(data).reshape(-1)
        raw = data.view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError):  # quantized, nested...: the values' text
        raw = repr(t).encode()
    return hashlib.sha1(raw).hexdigest()[:16]


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


# Printed call stacks name files of the checkout and of installed packages (transformers):
# the digests must not depend on where either lives.
ROOT = str(Path(__file__).resolve().parents[2])
SITE = sysconfig.get_paths()["purelib"]


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str).replace(SITE, "<site>").replace(ROOT, "<root>")
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _layers(log: Any) -> list[dict[str, Any]]:
    out = []
    for layer in log.layers:
        fields = {n: _plain(getattr(layer, n)) for n in layer.__dataclass_fields__
                  if not n.startswith("_") and n not in _VOLATILE}
        fields["func_call_stack"] = _plain(layer.func_call_stack)
        fields["lookup_keys"] = _plain(layer.lookup_keys)
        out.append(fields)
    return out


def _bundle(log: Any) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        lt.save(log, Path(tmp) / "b")
        manifest = json.loads((Path(tmp) / "b" / "manifest.json").read_text())
    units = manifest["manifest"]["units"]
    for unit in units:
        table = unit["metadata"]["layers"]
        column = table["columns"].index("time_s")
        for row in table["rows"]:
            row[column] = None
    manifest["manifest"].pop("library", None)
    return _strip(manifest)


def digest(log: Any) -> dict[str, str]:
    """Per-part hashes of one log: layers, lookup, modules, meta, printing, graphs, bundle.

    ``torch.empty`` and its kind return uninitialized memory: those values are zeroed first.
    """
    for layer in log.layers:
        if layer.layer_type.startswith("empty") and isinstance(layer.tensor_contents, torch.Tensor):
            layer.tensor_contents = torch.zeros_like(layer.tensor_contents)
    return {
        "layers": _hash(_layers(log)),
        "lookup": _hash([log.lookup_keys, [_plain(layer.lookup_keys) for layer in log.layers]]),
        "modules": _hash({a: [m.module_type, m.depth, m.num_params, m.calls] for a, m in log.modules.items()}),
        "meta": _hash(_strip(_plain(log.meta))),
        "print": _hash([_TIME_LINE.sub("", str(log)), [_TIME_LINE.sub("", str(layer)) for layer in log.layers]]),
        "dot": _hash([to_dot(log, vis_opt="unrolled"), to_dot(log, vis_opt="rolled")]),
        "bundle": _hash(_bundle(log)),
    }


HF_NAMES = ("gpt2", "llama", "bert", "t5", "vit", "mamba")


def zoo_digests(names: list[str] | None = None) -> dict[str, dict[str, str]]:
    """The digest of every zoo model and a few Hugging Face ones (``hf_gpt2``...), captured with seed 0."""
    from tests.zoo import ZOO, build
    from tests.zoo.hf_architectures import build_hf

    builders = {**{n: (lambda n=n: build(n)) for n in ZOO},
                **{f"hf_{n}": (lambda n=n: build_hf(n)) for n in HF_NAMES}}
    out = {}
    for name in sorted(names or builders):
        torch.manual_seed(0)
        model, args, kwargs = builders[name]()
        log = lt.log_forward_pass(model, args, kwargs, random_seed=0)
        out[name] = digest(log)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    json.dump(zoo_digests(sys.argv[1:] or None), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
