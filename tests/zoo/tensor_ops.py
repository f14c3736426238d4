"""Tensor-level cases: in-place ops, views, setitem, factories, properties, dtypes."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import zoo


class Lambda(nn.Module):
    """A module whose forward is ``fn`` (keeps each zoo entry one line)."""

    def __init__(self, fn, *modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(modules)

    def forward(self, *args, **kwargs):
        return self.fn(self, *args, **kwargs)


def x34() -> torch.Tensor:
    return torch.randn(3, 4)


# -- in-place ---------------------------------------------------------------------------
def _add_then_mul(m, x):
    y = x * 1.5
    y.add_(1)
    y.mul_(2)
    return y - x


def _inplace_input(m, x):
    x.add_(1)
    x.relu_()
    return x * 2


def _inplace_view_zero(m, x):
    y = x * 2
    v = y[0]
    v.zero_()
    return y + 1


def _inplace_view_of_view(m, x):
    y = x + 1
    flat = y.view(-1)
    part = flat[:5]
    part.mul_(0.5)
    return flat * 3, y.sum()


def _inplace_saved_then_changed(m, x):
    y = x.exp()
    z = y * 2  # uses y before the in-place change
    y.sub_(1)
    return z + y


def _inplace_functional(m, x):
    y = torch.nn.functional.relu(x * 1, inplace=True)
    return torch.nn.functional.dropout(y, 0.0, training=False, inplace=True) + 1


def _inplace_out_kwarg(m, x):
    out = torch.empty(3, 4)
    torch.add(x, 2, out=out)
    return out * x


def _transpose_inplace(m, x):
    y = x.clone()
    y.t_()
    return y @ x


zoo("inplace_add_then_mul")(lambda: (Lambda(_add_then_mul), x34()))
zoo("inplace_on_input")(lambda: (Lambda(_inplace_input), x34()))
zoo("inplace_view_zero")(lambda: (Lambda(_inplace_view_zero), x34()))
zoo("inplace_view_of_view")(lambda: (Lambda(_inplace_view_of_view), x34()))
zoo("inplace_after_use")(lambda: (Lambda(_inplace_saved_then_changed), x34()))
zoo("inplace_functional")(lambda: (Lambda(_inplace_functional), x34()))
zoo("inplace_out_kwarg")(lambda: (Lambda(_inplace_out_kwarg), x34()))
zoo("inplace_transpose")(lambda: (Lambda(_transpose_inplace), torch.randn(4, 4)))


# -- __setitem__ ------------------------------------------------------------------------
def _setitem_constant(m, x):
    y = x.clone()
    y[0] = 0
    y[:, -1] = 5.0
    return y * 2


def _setitem_tensor(m, x):
    y = torch.zeros_like(x)
    y[:, 1] = x[:, 0] * 2
    y[1:] = y[1:] + x[1:]
    return y


def _setitem_mask(m, x):
    y = x.clone()
    y[y > 0] = 0.0
    return y.sum(1)


def _setitem_index_tensor(m, x):
    y = x.clone()
    idx = torch.tensor([0, 2])
    y[idx] = x[idx].flip(-1)
    return y


zoo("setitem_constant")(lambda: (Lambda(_setitem_constant), x34()))
zoo("setitem_tensor")(lambda: (Lambda(_setitem_tensor), x34()))
zoo("setitem_mask")(lambda: (Lambda(_setitem_mask), x34()))
zoo("setitem_index_tensor")(lambda: (Lambda(_setitem_index_tensor), x34()))


# -- views and reshapes -----------------------------------------------------------------
def _views(m, x):
    a = x.view(4, 3).transpose(0, 1).contiguous()
    b = x.reshape(2, 6).permute(1, 0).flatten()
    c = x.unsqueeze(0).expand(2, 3, 4)
    d = x.narrow(1, 1, 2)
    e, f = x.chunk(2, dim=1)
    g = torch.stack(x.unbind(0), dim=1)
    return a.sum() + b.sum() + c.mean() + d.sum() + (e * f).sum() + g.sum()


def _split_cat(m, x):
    parts = torch.split(x, [1, 3], dim=1)
    return torch.cat([parts[1], parts[0]], dim=1) * torch.arange(4.0)


zoo("views_and_reshapes")(lambda: (Lambda(_views), x34()))
zoo("split_and_cat")(lambda: (Lambda(_split_cat), x34()))


# -- the same tensor twice, identities ----------------------------------------------------
zoo("same_tensor_twice_addmm")(lambda: (Lambda(lambda m, x: torch.addmm(x, x, x)), torch.randn(4, 4)))
zoo("same_tensor_twice_mul")(lambda: (Lambda(lambda m, x: x * x + (x @ x.T).sum()), x34()))
zoo("identity_module")(lambda: (Lambda(lambda m, x: m.mods[0](x) * 2, nn.Identity()), x34()))
zoo("identity_contiguous")(lambda: (Lambda(lambda m, x: x.contiguous().to(torch.float32) + x.detach()), x34()))
zoo("identity_returns_input")(lambda: (Lambda(lambda m, x, y: (x, y * 2)), (x34(), x34())))


# -- tensors created inside forward ------------------------------------------------------
def _factories(m, x):
    noise = torch.randn(3, 4)
    ones = torch.ones(3, 4)
    rng = torch.arange(4, dtype=torch.float32)
    eye = torch.eye(4)
    const = torch.tensor([1.0, 2.0, 3.0, 4.0])
    full = torch.full((3, 4), 0.5)
    return (x + noise * ones + rng) @ eye + const * full


def _likes(m, x):
    return x + torch.randn_like(x) + torch.zeros_like(x) + torch.ones_like(x) + torch.rand_like(x) + x.new_ones(3, 4)


def _from_numpy(m, x):
    table = torch.from_numpy(np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4))
    return x * table + torch.as_tensor(np.ones(4, dtype=np.float32))


zoo("factories")(lambda: (Lambda(_factories), x34()))
zoo("factories_like")(lambda: (Lambda(_likes), x34()))
zoo("factories_from_numpy")(lambda: (Lambda(_from_numpy), x34()))


# -- tensor properties, complex, integer and bool ------------------------------------------
def _properties(m, x):
    c = torch.complex(x, x.flip(0))
    return x.T.sum(0), x.mT.sum(1), c.real * c.imag, x.data * 2, c.mH.abs()


def _complex(m, x):
    spec = torch.fft.rfft(x, dim=-1)
    spec = spec * torch.exp(1j * torch.arange(spec.shape[-1]))
    return torch.fft.irfft(spec, n=4, dim=-1) + spec.abs().sum() + torch.angle(spec).mean()


def _integers(m, x):
    idx = x.argmax(dim=1)
    counts = torch.bincount(idx, minlength=4)
    picked = x.gather(1, idx.unsqueeze(1))
    return picked.squeeze(1) * counts[:3].float() + (idx * 3 // 2).float()


def _bools(m, x):
    mask = (x > 0) & ~(x > 1) | (x < -2)
    y = x.masked_fill(mask, 0.0)
    return torch.where(mask.any(dim=1, keepdim=True), y, -y), mask.sum()


zoo("tensor_properties")(lambda: (Lambda(_properties), x34()))
zoo("complex_fft")(lambda: (Lambda(_complex), x34()))
zoo("integer_tensors")(lambda: (Lambda(_integers), x34()))
zoo("bool_tensors")(lambda: (Lambda(_bools), x34()))
zoo("integer_input")(lambda: (Lambda(lambda m, ids: (ids * 2 + 1) % 7), torch.arange(12).reshape(3, 4)))


# -- custom autograd, no_grad, autograd inside forward, orphans ----------------------------
class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def _custom_function(m, x):
    return _Square.apply(m.mods[0](x)).sum(1)


def _no_grad_block(m, x):
    h = m.mods[0](x)
    with torch.no_grad():
        scale = h.abs().max() + 1
    return h / scale


def _autograd_inside(m, x):
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        energy = (m.mods[0](x) ** 2).sum()
        (force,) = torch.autograd.grad(energy, x, create_graph=False)
    return -force * 0.5 + x.detach()


def _orphans(m, x):
    unused = torch.sin(x) * 3  # never reaches the output
    _ = unused.sum()
    torch.randn(2)  # a random draw that changes later draws
    return torch.cos(x) + torch.rand(3, 4)


zoo("custom_autograd_function")(lambda: (Lambda(_custom_function, nn.Linear(4, 4)), x34()))
zoo("no_grad_block")(lambda: (Lambda(_no_grad_block, nn.Linear(4, 4)), x34()))
zoo("autograd_grad_inside_forward")(lambda: (Lambda(_autograd_inside, nn.Linear(4, 4)), x34()))
zoo("orphan_tensors")(lambda: (Lambda(_orphans), x34()))
