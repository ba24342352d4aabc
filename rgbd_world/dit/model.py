"""The stage-2 diffusion transformer (Cosmos-Predict2-style DiT on RGBD latents, GUIDE §7).

    cfg = DiTConfig.preset("tiny", latent_channels=16, cond_channels=16, text_dim=enc.dim)
    model = DiT(cfg)
    v = model(x, t, text, text_mask=None, cond=None, cond_mask=None, padding_mask=None)

Input channels, in this order (``cfg.in_channels = latent + cond + 2``):

1. the noisy RGBD latent ``x`` (latent_channels),
2. the RGB conditioning latent ``cond`` (cond_channels; zeros when absent),
3. the condition mask (1 on latent frames given as clean ground truth: image / continuation),
4. the padding mask (1 on padded latent pixels; zeros when absent).

Then (1, 2, 2) patches -> linear embedding without bias -> ``depth`` blocks of
self-attention (3D RoPE, QK RMSNorm) -> cross-attention to the text -> GELU MLP (ratio 4), each
sublayer ``x + gate * f(LN(x) * (1 + scale) + shift)`` with its shift/scale/gate from the
block's AdaLN-LoRA of the PER-FRAME timestep embedding (one vector per latent frame, broadcast
over that frame's tokens) -> final ``LN * (1 + scale) + shift`` (AdaLN-LoRA) + linear ->
unpatchify to (B, latent_channels, T, H, W).

Initialisation (adaLN-Zero): every AdaLN-LoRA up-projection (hence every gate, shift and scale)
and the final linear start at zero, so the initial velocity is exactly 0 and the first
gradients reach the final layer and the gates.

Text masking: ``text_mask`` (B, L) bool goes to the cross-attention as a key-padding mask
(``rgbd_kernels.nn.Attention(context_mask=...)``): masked tokens get no attention weight, so
their values never matter. A sample whose mask is all False (the null text of classifier-free
guidance) gets a cross-attention output of exactly 0. The cross-attention runs on the "sdpa" /
"reference" backends whenever a mask is given (FP8 / TE apply to the self-attention).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from rgbd_kernels._nvtx import nvtx_range
from rgbd_kernels.nn import Attention

from .config import DiTConfig
from .modulation import AdaLNLoRA, TimestepEmbedding, modulate
from .rope import Rope3D

PATCH = (1, 2, 2)


class DiTBlock(nn.Module):
    """self-attn -> cross-attn -> MLP on tokens (B, T, N, D), modulated per frame."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden
        self.self_attn = Attention(d, cfg.heads, backend=cfg.backend, fp8=cfg.fp8)
        self.cross_attn = Attention(d, cfg.heads, context_dim=cfg.text_dim, backend=cfg.backend)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * d, d))
        # 9 vectors per frame: (shift, scale, gate) x (self-attn, cross-attn, MLP)
        self.modulation = AdaLNLoRA(d, cfg.adaln_rank, 9)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None, rope) -> torch.Tensor:
        """x (B, T, N, D) tokens per frame, emb (B, T, D), text (B, L, text_dim)."""
        b, t, n, d = x.shape
        s1, c1, g1, s2, c2, g2, s3, c3, g3 = self.modulation(emb)
        h = modulate(x, s1, c1).reshape(b, t * n, d)
        x = x + g1 * self.self_attn(h, rope=rope).view(b, t, n, d)
        h = modulate(x, s2, c2).reshape(b, t * n, d)
        x = x + g2 * self.cross_attn(h, text, context_mask=text_mask).view(b, t, n, d)
        return x + g3 * self.mlp(modulate(x, s3, c3))


class DiT(nn.Module):
    """``forward(x, t, text, text_mask=None, cond=None, cond_mask=None, padding_mask=None) -> v``.

    Args:
        x: noisy latent (B, latent_channels, T, H, W), H and W even.
        t: flow-matching time in [0, 1], (B,) (shared by every frame) or (B, T) per latent frame
            (e.g. 0 on frames given clean); embedded as the sinusoid of 1000 t.
        text: (B, L, text_dim) text embeddings; text_mask: (B, L) bool, True = attend, or None
            (all attend). An all-False row is the null text of classifier-free guidance.
        cond: (B, cond_channels, T, H, W) RGB conditioning latent, or None (zeros).
        cond_mask: (B, 1, T, 1, 1) or (B, T), float or bool: 1 on latent frames given clean.
        padding_mask: (B, 1, T, H, W), float or bool: 1 on padded latent pixels.
    Returns:
        the velocity prediction (B, latent_channels, T, H, W) in x's dtype.

    ``DiT(cfg)`` or ``DiT("tiny", latent_channels=8, ...)``; ``model.blocks`` is the
    nn.ModuleList of blocks (for sharding / activation checkpointing).
    """

    def __init__(self, config: DiTConfig | str = "tiny", **overrides):
        super().__init__()
        if isinstance(config, str):
            cfg = DiTConfig.preset(config, **overrides)
        elif isinstance(config, DiTConfig):
            cfg = dataclasses.replace(config, **overrides) if overrides else config
        else:
            raise TypeError(f"config must be a DiTConfig or a preset name, got {type(config).__name__}")
        self.config = cfg
        d, p = cfg.hidden, PATCH[1] * PATCH[2]
        self.patch_embed = nn.Linear(cfg.in_channels * p, d, bias=False)
        self.time_embed = TimestepEmbedding(d, cfg.timestep_dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_modulation = AdaLNLoRA(d, cfg.adaln_rank, 2)
        self.final = nn.Linear(d, cfg.latent_channels * p)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)
        self._rope_cache: dict = {}

    # ------------------------------------------------------------------ helpers
    def rope(self, frames: int, height: int, width: int, device) -> Rope3D:
        """The 3D RoPE of a token grid (frames, height, width) = (T, H/2, W/2), cached (last one)."""
        key = (frames, height, width, str(device))
        if key not in self._rope_cache:
            self._rope_cache = {key: Rope3D(frames, height, width, self.config.head_dim,
                                            self.config.rope_theta, device)}
        return self._rope_cache[key]

    def _check(self, x, t, text, text_mask, cond, cond_mask, padding_mask):
        cfg = self.config
        if not torch.is_tensor(x) or x.dim() != 5 or x.shape[1] != cfg.latent_channels:
            raise ValueError(f"x must be (B, {cfg.latent_channels}, T, H, W) (latent_channels="
                             f"{cfg.latent_channels}), got {tuple(getattr(x, 'shape', ()))}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a float tensor, got {x.dtype}")
        b, _, frames, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"x height and width must be even (patch 2), got H={h}, W={w}")
        if not torch.is_tensor(t) or tuple(t.shape) not in ((b,), (b, frames)):
            raise ValueError(f"t must be (B,) = ({b},) or (B, T) = ({b}, {frames}), got "
                             f"{tuple(getattr(t, 'shape', ()))}")
        if not t.is_floating_point():
            raise ValueError(f"t must be a float tensor of times in [0, 1], got {t.dtype}")
        if not torch.is_tensor(text) or text.dim() != 3 or text.shape[0] != b \
                or text.shape[2] != cfg.text_dim:
            raise ValueError(f"text must be (B, L, {cfg.text_dim}) with B={b} (text_dim="
                             f"{cfg.text_dim}), got {tuple(getattr(text, 'shape', ()))}")
        if text_mask is not None and (text_mask.dtype != torch.bool
                                      or tuple(text_mask.shape) != tuple(text.shape[:2])):
            raise ValueError(f"text_mask must be bool {tuple(text.shape[:2])}, got "
                             f"{text_mask.dtype} {tuple(text_mask.shape)}")
        if cond is not None and tuple(cond.shape) != (b, cfg.cond_channels, frames, h, w):
            raise ValueError(f"cond must be {(b, cfg.cond_channels, frames, h, w)} (cond_channels="
                             f"{cfg.cond_channels}), got {tuple(cond.shape)}")
        if cond_mask is not None and tuple(cond_mask.shape) not in ((b, 1, frames, 1, 1), (b, frames)):
            raise ValueError(f"cond_mask must be (B, 1, T, 1, 1) = {(b, 1, frames, 1, 1)} or (B, T) = "
                             f"{(b, frames)}, got {tuple(cond_mask.shape)}")
        if padding_mask is not None and tuple(padding_mask.shape) != (b, 1, frames, h, w):
            raise ValueError(f"padding_mask must be {(b, 1, frames, h, w)}, got "
                             f"{tuple(padding_mask.shape)}")

    @staticmethod
    def patchify(x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T, H/2 * W/2, C * 4); features ordered (c, dh, dw)."""
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t, h // 2, 2, w // 2, 2).permute(0, 2, 3, 5, 1, 4, 6)
        return x.reshape(b, t, (h // 2) * (w // 2), c * 4)

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, T, H/2 * W/2, C_lat * 4) -> (B, C_lat, T, H, W), the inverse of :meth:`patchify`."""
        b, t, _, _ = x.shape
        c = self.config.latent_channels
        x = x.reshape(b, t, h // 2, w // 2, c, 2, 2).permute(0, 4, 1, 2, 5, 3, 6)
        return x.reshape(b, c, t, h, w)

    def build_input(self, x, cond=None, cond_mask=None, padding_mask=None) -> torch.Tensor:
        """The (B, in_channels, T, H, W) input: [x, cond, condition mask, padding mask]."""
        cfg = self.config
        b, _, frames, h, w = x.shape
        cond = x.new_zeros(b, cfg.cond_channels, frames, h, w) if cond is None else cond.to(x.dtype)
        cm = x.new_zeros(b, 1, frames, h, w) if cond_mask is None else \
            cond_mask.reshape(b, 1, frames, 1, 1).to(x.dtype).expand(b, 1, frames, h, w)
        pm = x.new_zeros(b, 1, frames, h, w) if padding_mask is None else padding_mask.to(x.dtype)
        return torch.cat([x, cond, cm, pm], dim=1)

    # ------------------------------------------------------------------ forward
    def forward(self, x, t, text, text_mask=None, cond=None, cond_mask=None, padding_mask=None):
        self._check(x, t, text, text_mask, cond, cond_mask, padding_mask)
        b, _, frames, h, w = x.shape
        dtype = self.patch_embed.weight.dtype
        with nvtx_range("dit.embed"):
            inp = self.build_input(x, cond, cond_mask, padding_mask).to(dtype)
            tokens = self.patch_embed(self.patchify(inp))  # (B, T, N, D)
            t = t.reshape(b, 1).expand(b, frames) if t.dim() == 1 else t
            emb = self.time_embed(t)  # (B, T, D): sinusoid of 1000 t in float32 inside
        rope = self.rope(frames, h // 2, w // 2, x.device)
        text = text.to(tokens.dtype)
        if text_mask is not None:
            text_mask = text_mask.to(x.device)
        for block in self.blocks:
            with nvtx_range("dit.block"):
                tokens = block(tokens, emb, text, text_mask, rope)
        shift, scale = self.final_modulation(emb)
        out = self.final(modulate(tokens, shift, scale))
        return self.unpatchify(out, h, w).to(x.dtype)

    # ------------------------------------------------------------------ accounting
    def flops_per_step(self, batch: int, frames: int, height: int, width: int, text_len: int,
                       training: bool = True) -> int:
        """Matmul FLOPs of one step on latents (batch, C, frames, height, width) with text_len
        text tokens: forward (x3 for forward + backward when ``training``), for MFU logging.
        Counts the linear layers, the attention score and value products, and the patch
        embedding / final layer; element-wise ops and the (per-frame) modulation are ignored."""
        cfg = self.config
        n = frames * (height // 2) * (width // 2)
        d, lt = cfg.hidden, text_len
        per_block = (2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d        # self-attn
                     + 2 * n * d * d + 2 * lt * cfg.text_dim * 2 * d           # cross q, kv
                     + 4 * n * lt * d + 2 * n * d * d                          # cross attn, out
                     + 2 * 2 * n * d * cfg.mlp_ratio * d)                      # MLP
        io = 2 * n * cfg.in_channels * 4 * d + 2 * n * d * cfg.latent_channels * 4
        forward = batch * (cfg.depth * per_block + io)
        return 3 * forward if training else forward

    def num_flops_per_token(self, frames: int, height: int, width: int, text_len: int) -> float:
        """Training FLOPs per latent token ((1, 2, 2) patch) of one sample of that shape."""
        return self.flops_per_step(1, frames, height, width, text_len) / (frames * (height // 2) * (width // 2))
