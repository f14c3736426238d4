"""Real architectures, tiny: ResNet, U-Net, ViT, GPT, RNNs, mixture of experts, graph nets..."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.models import TinyHFEncoder, hf_inputs

from . import zoo


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, c // 2, 1)
        self.conv = nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=2)
        self.expand = nn.Conv2d(c // 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.expand(F.relu(self.conv(F.relu(self.reduce(x))))))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.layer1 = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 4))
        self.layer2 = nn.Sequential(BasicBlock(4, 8, stride=2), Bottleneck(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class UNet(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(2 * c, 2 * c, 2, stride=2)
        self.dec2 = nn.Conv2d(4 * c, c, 3, padding=1)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = nn.Conv2d(2 * c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        m = self.mid(e2)
        d2 = F.relu(self.dec2(torch.cat([self.up2(m), e2], dim=1)))
        return torch.sigmoid(self.dec1(torch.cat([self.up1(d2), e1], dim=1)))


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.heads = heads
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        if self.causal:
            mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
            att = att.masked_fill(~mask, float("-inf"))
        y = att.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads, causal)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, d: int = 8, patch: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.02)
        self.blocks = nn.Sequential(*(Block(d, 2) for _ in range(depth)))
        self.head = nn.Linear(d, 3)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.blocks(x)[:, 0])


class GPT(nn.Module):
    def __init__(self, vocab: int = 11, d: int = 8, depth: int = 2, ctx: int = 6) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, 2, causal=True) for _ in range(depth))
        self.ln = nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1])
        x = self.wte(ids) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x) @ self.wte.weight.T  # tied output embedding


class RNNs(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](4, 6, num_layers=2, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class MoE(nn.Module):
    def __init__(self, d: int = 6, experts: int = 4, k: int = 2) -> None:
        super().__init__()
        self.router = nn.Linear(d, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d)) for _ in range(experts))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, chosen = self.router(x).softmax(-1).topk(self.k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(chosen == e)
            if rows.numel() == 0:
                continue
            out.index_add_(0, rows, expert(x[rows]) * weights[rows, slot].unsqueeze(-1))
        return out


class GraphNet(nn.Module):
    """Message passing: gather on edges, scatter-add to nodes, scatter-max readout."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.msg = nn.Linear(2 * d, d)
        self.upd = nn.Linear(2 * d, d)

    def forward(self, nodes: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        src, dst = edges
        for _ in range(2):
            m = F.relu(self.msg(torch.cat([nodes[src], nodes[dst]], dim=-1)))
            agg = torch.zeros_like(nodes).index_add_(0, dst, m)
            deg = torch.zeros(nodes.shape[0]).scatter_add_(0, dst, torch.ones(dst.shape[0])).clamp(min=1)
            nodes = nodes + self.upd(torch.cat([nodes, agg / deg.unsqueeze(-1)], dim=-1))
        pooled = torch.zeros(2, nodes.shape[1]).scatter_reduce(0, torch.tensor([0, 0, 1, 1, 1]).unsqueeze(-1).expand_as(nodes), nodes, "amax", include_self=False)
        return pooled


class SqueezeExcite(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.point = nn.Conv2d(c, c, 1)
        self.fc1 = nn.Linear(c, 2)
        self.fc2 = nn.Linear(2, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.point(F.relu6(self.conv(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        return y * s[:, :, None, None]


class DenseBlock(nn.Module):
    def __init__(self, c: int = 2, growth: int = 2, layers: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c + i * growth, growth, 3, padding=1) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(F.relu(conv(torch.cat(feats, 1))))
        return torch.cat(feats, 1)


class SwiGLURMS(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))
        self.w = nn.Linear(d, 4 * d)
        self.out = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale
        a, b = self.w(x).chunk(2, dim=-1)
        return self.out(F.silu(a) * b) + F.glu(torch.cat([x, x], -1), dim=-1)


class Mixer(nn.Module):
    def __init__(self, tokens: int = 4, d: int = 6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 8), nn.GELU(), nn.Linear(8, tokens))
        self.chan_mlp = nn.Sequential(nn.Linear(d, 8), nn.GELU(), nn.Linear(8, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.chan_mlp(self.norm(x))


class Siamese(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(self.enc(a), self.enc(b))


class EinsumAttention(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bid,bjd->bij", self.q(x), self.k(x)).softmax(-1)
        return torch.einsum("bij,bjd->bid", scores, x)


class Conv1dAudio(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 5, stride=2, padding=2)
        self.deconv = nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.deconv(F.leaky_relu(self.conv(F.pad(x, (1, 1)))))
        img = self.shuffle(y[:, :, :8].reshape(1, 4, 2, 2))
        return F.interpolate(img, scale_factor=0.5, mode="nearest").sum() + y.mean()


def _tx_encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


zoo("arch_resnet")(lambda: (TinyResNet().train(), torch.randn(2, 3, 8, 8)))
zoo("arch_resnet_eval")(lambda: (TinyResNet().eval(), torch.randn(2, 3, 8, 8)))
zoo("arch_unet")(lambda: (UNet(), torch.randn(1, 1, 8, 8)))
zoo("arch_vit")(lambda: (ViT().train(), torch.randn(2, 3, 8, 8)))
zoo("arch_gpt_causal")(lambda: (GPT().train(), torch.randint(0, 11, (2, 6))))
zoo("arch_lstm")(lambda: (RNNs("lstm"), torch.randn(2, 5, 4)))
zoo("arch_gru")(lambda: (RNNs("gru"), torch.randn(2, 5, 4)))
zoo("arch_rnn")(lambda: (RNNs("rnn"), torch.randn(2, 5, 4)))
zoo("arch_moe_topk")(lambda: (MoE(), torch.randn(7, 6)))
zoo("arch_graph_net")(lambda: (GraphNet(), (torch.randn(5, 4), torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2]]))))
zoo("arch_squeeze_excite")(lambda: (SqueezeExcite(), torch.randn(2, 4, 5, 5)))
zoo("arch_dense_block")(lambda: (DenseBlock(), torch.randn(1, 2, 4, 4)))
zoo("arch_swiglu_rmsnorm")(lambda: (SwiGLURMS(), torch.randn(2, 3, 4)))
zoo("arch_mlp_mixer")(lambda: (Mixer(), torch.randn(2, 4, 6)))
zoo("arch_siamese")(lambda: (Siamese(), (torch.randn(3, 4), torch.randn(3, 4))))
zoo("arch_einsum_attention")(lambda: (EinsumAttention(), torch.randn(2, 3, 4)))
zoo("arch_conv1d_transpose_shuffle")(lambda: (Conv1dAudio(), torch.randn(1, 2, 16)))
zoo("arch_torch_transformer_encoder")(lambda: (_tx_encoder().train(), torch.randn(2, 5, 8)))
zoo("arch_multihead_attention")(lambda: (nn.MultiheadAttention(8, 2, batch_first=True), (torch.randn(2, 4, 8),) * 3,
                                          {"need_weights": True}))
zoo("arch_transformer_decoder_layer")(lambda: (nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                                                (torch.randn(2, 4, 8), torch.randn(2, 3, 8)),
                                                {"tgt_mask": nn.Transformer.generate_square_subsequent_mask(4)}))
zoo("arch_embedding_bag")(lambda: (nn.EmbeddingBag(10, 4, mode="mean"), (torch.tensor([1, 2, 4, 5, 4, 3]), torch.tensor([0, 3]))))
zoo("arch_autoencoder")(lambda: (nn.Sequential(nn.Linear(8, 3), nn.Tanh(), nn.Linear(3, 8), nn.Sigmoid()), torch.rand(4, 8)))
zoo("arch_hf_style_input_kwargs")(lambda: (TinyHFEncoder().train(), (), hf_inputs()))
zoo("arch_hf_style_tuple_output")(lambda: (TinyHFEncoder().eval(), hf_inputs()["input_ids"],
                                            {"attention_mask": hf_inputs()["attention_mask"], "return_dict": False}))
