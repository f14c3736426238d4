"""The long tail that real models bring: packed sequences, empty tensors, autocast, masks from
constants, zero-initialized branches, modules made inside ``forward``, detached targets,
spatial transformers, scans, shape-only results.

Each model is correct code a user could train; a capture must log it and a validation must
pass it (none of these is a corrupted capture).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import zoo


class PackedRNN(nn.Module):
    """Variable-length sequences packed for a GRU or LSTM, unpacked, then pooled per length."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[kind](4, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        padded, lens = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.head(padded.sum(1) / lens.unsqueeze(1).to(padded.dtype))


class EmptyTensors(nn.Module):
    """Slices past the end, an empty concatenation and a reduction over nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        rest = h[:, h.shape[1]:]  # (3, 0): the part of a feature vector "after the rotary dims"
        h = torch.cat([h, rest * 2.0], dim=1)
        return h + rest.sum(1, keepdim=True)  # zeros: a sum over no elements


class AutocastRegion(nn.Module):
    """A bf16 autocast region inside ``forward`` (mixed precision for one sub-block)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = F.gelu(self.fc1(x))
            scores = h @ h.transpose(0, 1)
        return self.fc2(h.float()) + scores.float().mean()


class ModuleMadeInForward(nn.Module):
    """A Linear built inside ``forward`` that shares the weight of an existing one."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tied = nn.Linear(4, 4, bias=False)
        tied.weight = self.fc.weight
        return self.fc(x) + tied(x.flip(0))


class DetachedTarget(nn.Module):
    """A student and a stop-gradient teacher; the distillation loss is computed in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Linear(4, 3)
        self.teacher = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.student(x)
        target = self.teacher(x).detach()
        with torch.no_grad():
            soft = target.softmax(-1)
        loss = F.mse_loss(pred, target) + F.kl_div(pred.log_softmax(-1), soft, reduction="batchmean")
        return pred + (pred - pred.detach()), loss


class SpatialTransformer(nn.Module):
    """A localisation net predicts an affine transform; the image is resampled with it.

    ``identity_init``: the usual initialisation, zero weights and a near-identity bias, so at
    first the transform does not depend on the image (a zero-initialized branch too).
    """

    def __init__(self, identity_init: bool) -> None:
        super().__init__()
        self.loc = nn.Linear(2 * 6 * 6, 6)
        if identity_init:
            nn.init.zeros_(self.loc.weight)
            with torch.no_grad():
                self.loc.bias.copy_(torch.tensor([0.9, 0.1, 0.0, -0.1, 0.9, 0.05]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.loc(x.flatten(1)).view(-1, 2, 3) + 0.01 * x.mean((1, 2, 3))[:, None, None]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class MaskFromConstants(nn.Module):
    """Attention whose masks are cast from constants: ``torch.ones(...).to(torch.bool)``."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        keep = torch.ones(b, t).to(torch.bool)  # "no padding" built by an encoder-decoder
        causal = torch.ones(t, t, dtype=torch.float32).tril().to(torch.bool)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(d)
        scores = scores.masked_fill(~(keep[:, None, :] & causal), torch.finfo(scores.dtype).min)
        return scores.softmax(-1) @ v


class ZeroConvBranch(nn.Module):
    """A ControlNet-style branch joined through zero-initialized convolutions (zero at init)."""

    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.base = nn.Conv2d(c, c, 3, padding=1)
        self.control = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.SiLU())
        self.zero = nn.Conv2d(c, c, 1)
        self.zero_linear = nn.Linear(c, c)
        for layer in (self.zero, self.zero_linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        c = self.control(hint)
        h = self.base(x) + self.zero(c)
        return h + self.zero_linear(c.mean((2, 3)))[:, :, None, None]


class SelectiveScan(nn.Module):
    """A state-space-like scan: sequence split with ``tensor_split`` (one piece empty), a loop over steps."""

    def __init__(self, d: int = 4, n: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(d, 2 * d)
        self.a_log = nn.Parameter(torch.zeros(d, n))
        self.b = nn.Linear(d, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_in, gate = self.inp(x).chunk(2, dim=-1)
        seen, future = torch.tensor_split(h_in, [x.shape[1]], dim=1)  # future is empty: no padding
        decay = torch.exp(-torch.exp(self.a_log))
        bx = self.b(seen)
        state = seen.new_zeros(x.shape[0], *self.a_log.shape)
        outs = []
        for t in range(seen.shape[1]):
            state = state * decay + seen[:, t, :, None] * bx[:, t, None, :]
            outs.append(state.sum(-1))
        y = torch.stack(outs, dim=1)
        return torch.cat([y, future], dim=1) * F.silu(gate)


class ShapeOnly(nn.Module):
    """Parameter-free ops whose results depend only on shapes: position ids, a size-1 norm, ramps."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.pos = nn.Embedding(8, d)
        self.fc = nn.Linear(d, d)
        self.gate = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        pos = torch.ones_like(x[..., 0], dtype=torch.long).cumsum(1) - 1
        scale = x.new_tensor(float(d)).rsqrt()
        centered = F.layer_norm(self.gate(x), (1,))  # a norm over one element: zeros whatever the input
        ramp = torch.zeros_like(x[..., :1]) + torch.linspace(0, 1, t)[None, :, None]
        return self.fc(x * scale) + self.pos(pos) + centered + ramp


zoo("long_tail_packed_gru")(lambda: (PackedRNN("gru"), (torch.randn(3, 5, 4), torch.tensor([5, 2, 3]))))
zoo("long_tail_packed_lstm")(lambda: (PackedRNN("lstm"), (torch.randn(3, 5, 4), torch.tensor([4, 5, 1]))))
zoo("long_tail_empty_tensors")(lambda: (EmptyTensors(), torch.randn(3, 4)))
zoo("long_tail_autocast_bf16")(lambda: (AutocastRegion(), torch.randn(3, 4)))
zoo("long_tail_module_made_in_forward")(lambda: (ModuleMadeInForward(), torch.randn(3, 4)))
zoo("long_tail_detached_target")(lambda: (DetachedTarget(), torch.randn(3, 4)))
zoo("long_tail_affine_grid_sample")(lambda: (SpatialTransformer(identity_init=False), torch.randn(2, 2, 6, 6)))
zoo("long_tail_affine_grid_identity_init")(lambda: (SpatialTransformer(identity_init=True), torch.randn(2, 2, 6, 6)))
zoo("long_tail_mask_from_constants")(lambda: (MaskFromConstants(), torch.randn(2, 5, 4)))
zoo("long_tail_zero_conv_branch")(lambda: (ZeroConvBranch(), (torch.randn(2, 3, 5, 5), torch.randn(2, 1, 5, 5))))
zoo("long_tail_tensor_split_scan")(lambda: (SelectiveScan(), torch.randn(2, 5, 4)))
zoo("long_tail_shape_only")(lambda: (ShapeOnly(), torch.randn(2, 5, 4)))
