"""The bytes of a bundle: checksums, checksummed JSON frames, and tensor storage.

Everything here is pure and file-free, so the writer and the reader agree by
construction. The layout itself is documented in ``docs/bundles.md``.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

import torch
import xxhash

from ..capture.api import gc_paused
from ..errors import BundleError

FORMAT_NAME = "lens_train.bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
JOURNAL_NAME = "commits.jsonl"
SHARD_PATTERN = re.compile(r"activations-(\d{5})\.safetensors\Z")
# Tensors are checksummed per block: one hash per 16 MiB of bytes.
CHECKSUM_BLOCK = 16 << 20

# safetensors dtype tags of the dtypes stored natively; complex tensors are stored as
# their real view, every other dtype as raw bytes (the manifest keeps the true dtype).
_SAFETENSORS_TAGS: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
for _name, _tag in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
                    ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
    if isinstance(getattr(torch, _name, None), torch.dtype):
        _SAFETENSORS_TAGS[getattr(torch, _name)] = _tag


def shard_name(number: int) -> str:
    """File name of shard ``number``.

    Example:
        >>> shard_name(3)
        'activations-00003.safetensors'
    """
    return f"activations-{number:05d}.safetensors"


# -- checksums ------------------------------------------------------------------------
def checksum(data: memoryview | bytes) -> list[str]:
    """xxh3-64 of each :data:`CHECKSUM_BLOCK` bytes of ``data``, as hex strings.

    xxh3 runs near memory bandwidth (~20 GB/s on one core), so hashing costs little
    next to reading or writing the bytes; blocks keep one entry per 16 MiB.

    Example:
        >>> checksum(b"lens")
        ['7135c2a1fc414e1e']
    """
    mv = memoryview(data).cast("B")
    return [f"{xxhash.xxh3_64_intdigest(mv[i:i + CHECKSUM_BLOCK]):016x}" for i in range(0, max(len(mv), 1), CHECKSUM_BLOCK)]


# -- checksummed JSON frames ------------------------------------------------------------
def frame(key: str, obj: Any) -> bytes:
    """``obj`` as one line of JSON, ``{"crc32":"...","<key>":...}``, checksummed over its exact bytes.

    Example:
        >>> frame("unit", {"a": 1})
        b'{"crc32":"561bacaf","unit":{"a":1}}\\n'
    """
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")
    return b'{"crc32":"%08x","%s":%s}\n' % (zlib.crc32(body), key.encode("ascii"), body)


def unframe(data: bytes, key: str, where: str) -> Any:
    """The object of a :func:`frame` line; ``BundleError`` naming ``where`` if it was altered.

    Example:
        >>> unframe(frame("unit", [1, 2]), "unit", "x")
        [1, 2]
    """
    match = re.fullmatch(rb'\{"crc32":"([0-9a-f]{8})","' + key.encode("ascii") + rb'":(.*)\}\n?', data, re.DOTALL)
    if match is None:
        raise BundleError(f"{where} is not a lens_train {key} record (it was truncated or modified).")
    body = match.group(2)
    if f"{zlib.crc32(body):08x}".encode("ascii") != match.group(1):
        raise BundleError(f"{where} fails its checksum: the file was modified or corrupted after it was written.")
    try:
        with gc_paused():
            return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{where} holds invalid JSON ({exc}).") from None


def _no_constant(name: str) -> Any:
    # the writer spells non-finite floats {"$float": "nan"}; a bare NaN/Infinity was not written by it
    raise ValueError(f"bare {name} is not JSON")


# -- tensors ------------------------------------------------------------------------------
def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``'float32'``.

    Example:
        >>> dtype_name(torch.bfloat16)
        'bfloat16'
    """
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: Any, where: str) -> torch.dtype:
    """The torch dtype called ``name``; only dtypes are ever looked up, nothing else in torch.

    Example:
        >>> parse_dtype("complex64", "x")
        torch.complex64
    """
    value = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(value, torch.dtype):
        raise BundleError(f"{where} names an unknown dtype {name!r} (written by a newer torch?).")
    return value


def to_stored(tensor: torch.Tensor) -> tuple[torch.Tensor, str, str, list[int]]:
    """(contiguous CPU tensor, storage kind, safetensors tag, safetensors shape) of ``tensor``.

    The stored bytes are always the tensor's own contiguous bytes; the kind only says
    how the safetensors header describes them to other readers.

    Example:
        >>> _, kind, tag, shape = to_stored(torch.zeros(3, dtype=torch.complex64))
        >>> kind, tag, shape
        ('complex_as_real', 'F32', [3, 2])
    """
    t = tensor.detach()
    if t.layout != torch.strided or t.is_quantized or t.device.type == "meta":
        kind = "meta" if t.device.type == "meta" else str(t.layout if t.layout != torch.strided else "quantized")
        raise TypeError(f"{kind} tensors have no storable bytes")
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.resolve_conj().resolve_neg()
    # is_contiguous() ignores the strides of size-1 dims; the byte view needs them standard too
    if not t.is_contiguous() or (t.numel() and t.reshape(-1).stride(0) != 1):
        t = t.clone(memory_format=torch.contiguous_format)
    kind, tag, shape = stored_header(t.dtype, list(t.shape), t.numel() * t.element_size())
    return t, kind, tag, shape


def stored_header(dtype: torch.dtype, shape: list[int], nbytes: int) -> tuple[str, str, list[int]]:
    """(storage kind, safetensors tag, safetensors shape) under which a tensor of ``dtype`` and ``shape`` is stored.

    Example:
        >>> stored_header(torch.complex64, [3], 24), stored_header(torch.float32, [2], 8)
        (('complex_as_real', 'F32', [3, 2]), ('native', 'F32', [2]))
    """
    if dtype.is_complex:
        real = torch.view_as_real(torch.empty(0, dtype=dtype)).dtype
        return "complex_as_real", _SAFETENSORS_TAGS[real], [*shape, 2]
    tag = _SAFETENSORS_TAGS.get(dtype)
    return ("bytes", "U8", [nbytes]) if tag is None else ("native", tag, list(shape))


def byte_view(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without copying.

    Example:
        >>> len(byte_view(torch.zeros(2, 3, dtype=torch.float16)))
        12
    """
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def from_bytes(raw: torch.Tensor, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    """The tensor whose contiguous bytes are the uint8 tensor ``raw``.

    Example:
        >>> t = torch.arange(6.0).reshape(2, 3)
        >>> torch.equal(from_bytes(t.reshape(-1).view(torch.uint8), torch.float32, [2, 3]), t)
        True
    """
    if raw.numel() == 0:
        return torch.empty(shape, dtype=dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if raw.storage_offset() % itemsize:
        raw = raw.clone()  # a memory-mapped slice not aligned for this dtype
    return raw.view(dtype).reshape(shape)


def expected_nbytes(dtype: torch.dtype, shape: list[int]) -> int:
    """Bytes of a contiguous tensor of ``dtype`` and ``shape``.

    Example:
        >>> expected_nbytes(torch.complex128, [2, 2])
        64
    """
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n
