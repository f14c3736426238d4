"""The arguments of ``log_forward_pass`` checked where they enter, before anything runs.

Values known only later are checked where they appear: a selection's names against the
model's layers (:func:`~lens_train.capture.lookup.select`), and what
``activation_postfunc`` returns (:func:`postfunc_output`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..arguments import SEED_LIMIT, check_bool, check_callable, check_int, check_path, fail

_CALL = "lt.log_forward_pass(model, x, {})"


def check_capture_arguments(input_kwargs: Any, layers_to_save: Any, train_mode: Any, activation_postfunc: Any,
                            save_raw_activation: Any, random_seed: Any, save_gradients: Any,
                            save_activations_to: Any, keep_activations_in_memory: Any) -> None:
    """Raise the library's error for the first unusable argument of ``log_forward_pass``.

    Example:
        >>> check_capture_arguments(None, "all", False, None, True, "abc", False, None, True)
        Traceback (most recent call last):
        lens_train.errors.ArgumentTypeError: random_seed must be an int >= 0 below 9223372036854775808 or None, got 'abc'. Example: lt.log_forward_pass(model, x, random_seed=0).
    """
    if input_kwargs is not None and not isinstance(input_kwargs, Mapping):
        fail("input_kwargs", input_kwargs, "a dict of keyword arguments or None", "lt.log_forward_pass(model, (), "
             "input_kwargs={'input_ids': ids})", wrong_type=True)
    check_layers_to_save(layers_to_save)
    for name, value in (("train_mode", train_mode), ("save_raw_activation", save_raw_activation),
                        ("save_gradients", save_gradients), ("keep_activations_in_memory", keep_activations_in_memory)):
        if type(value) is not bool:  # (the example is written only for a value that fails)
            check_bool(name, value, _CALL.format(f"{name}=True"))
    if activation_postfunc is not None:
        check_callable("activation_postfunc", activation_postfunc, _POSTFUNC_EXAMPLE)
    if random_seed is not None:
        check_int("random_seed", random_seed, _SEED_EXAMPLE, low=0, high=SEED_LIMIT, optional=True)
    if save_activations_to is not None:
        check_path("save_activations_to", save_activations_to, _PATH_EXAMPLE, optional=True)


_POSTFUNC_EXAMPLE = _CALL.format("activation_postfunc=lambda t: t.mean(0)")
_SEED_EXAMPLE = _CALL.format("random_seed=0")
_PATH_EXAMPLE = _CALL.format("save_activations_to='runs/bundle'")
_LAYERS_EXAMPLE = _CALL.format("layers_to_save=['conv2d_3_7', 'features.6', -1, 'linear']")


def check_layers_to_save(value: Any) -> None:
    """``"all"``, ``None``, a name or int, or a list/tuple of names and ints."""
    if value is None or isinstance(value, str) or (type(value) is int):
        return
    example = _LAYERS_EXAMPLE
    what = "'all', None, a layer name or int, or a list of them"
    if not isinstance(value, (list, tuple)):
        fail("layers_to_save", value, what, example, wrong_type=True)
    for entry in value:
        if not isinstance(entry, str) and type(entry) is not int:
            fail("layers_to_save", value, f"{what} (entry {entry!r} is neither)", example, wrong_type=True)


def check_validation_arguments(model: Any, input_args: Any, input_kwargs: Any, verbose: Any, random_seed: Any) -> None:
    """Raise the library's error for an unusable argument of ``validate_model_activations``.

    Replaying needs real values: meta tensors (shapes without data) in the inputs or the
    model cannot be validated.

    Example:
        >>> import torch
        >>> check_validation_arguments(torch.nn.ReLU(), torch.ones(2, device="meta"), None, False, None)
        Traceback (most recent call last):
        lens_train.errors.InvalidArgumentError: input_args must be tensors with data (not on the meta device), got tensor(..., device='meta', size=(2,)). Example: lt.validate_model_activations(model, torch.randn(2, 3)).
    """
    example = "lt.validate_model_activations(model, torch.randn(2, 3))"
    check_bool("verbose", verbose, "lt.validate_model_activations(model, x, verbose=True)")
    check_int("random_seed", random_seed, "lt.validate_model_activations(model, x, random_seed=0)", low=0,
              high=SEED_LIMIT, optional=True)
    for name, value in (("input_args", input_args), ("input_kwargs", input_kwargs)):
        meta = _meta_tensor(value, depth=0)
        if meta is not None:
            fail(name, meta, "tensors with data (not on the meta device)", example)
    if any(p.is_meta for p in list(model.parameters()) + list(model.buffers())):
        fail("model", type(model).__name__, "a model whose parameters hold data (not on the meta device)",
             "model.to_empty(device='cpu') and load its weights, then " + example)


def _meta_tensor(value: Any, depth: int) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value if value.is_meta else None
    if depth > 20:
        return None
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
    return next((m for m in (_meta_tensor(v, depth + 1) for v in items) if m is not None), None)
