"""The stage-2 diffusion transformer (Cosmos-Predict2-style DiT on RGBD latents).

Input channels (in this order): the noisy RGBD latent (C_lat), the RGB conditioning latent
(C_cond; zeros when absent), the condition mask (1 on latent frames given clean), the padding
mask (1 on padded pixels). (1, 2, 2) patches -> linear embedding without bias -> blocks of
self-attention (3D RoPE, QK RMSNorm) -> cross-attention to the text -> GELU MLP, each sublayer
``x + gate * f(LN(x) * (1 + scale) + shift)`` with AdaLN-LoRA from the per-frame timestep
embedding -> final AdaLN + linear (zero-initialised: the initial prediction is 0) -> unpatchify.
"""
from __future__ import annotations

import torch
from torch import nn

from rgbd_kernels._nvtx import nvtx_range
from rgbd_kernels.nn import Attention

from .config import DiTConfig
from .modulation import AdaLNLoRA, TimestepEmbedding, modulate
from .rope import Rope3D

PATCH = (1, 2, 2)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden
        self.self_attn = Attention(d, cfg.heads, backend=cfg.backend, fp8=cfg.fp8)
        self.cross_attn = Attention(d, cfg.heads, context_dim=cfg.text_dim, backend=cfg.backend)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * d, d))
        self.modulation = AdaLNLoRA(d, cfg.adaln_rank, 9)

    def forward(self, x, emb, text, text_mask, rope):
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

    x (B, C_lat, T, H, W) noisy latent (H, W even); t (B,) or (B, T) in [0, 1]; text
    (B, L, text_dim) with text_mask (B, L) bool (False = ignore; an all-False row is the null
    text of classifier-free guidance); cond (B, C_cond, T, H, W); cond_mask (B, 1, T, 1, 1) or
    (B, T); padding_mask (B, 1, T, H, W). Returns the velocity (B, C_lat, T, H, W).
    """

    def __init__(self, config: DiTConfig | str = "tiny", **overrides):
        super().__init__()
        cfg = DiTConfig.preset(config, **overrides) if isinstance(config, str) else config
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
    def _rope(self, t, h, w, device):
        key = (t, h, w, str(device))
        if key not in self._rope_cache:
            self._rope_cache = {key: Rope3D(t, h, w, self.config.head_dim, self.config.rope_theta,
                                            device)}
        return self._rope_cache[key]

    def _check(self, x, t, text, text_mask, cond, cond_mask, padding_mask):
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.latent_channels:
            raise ValueError(f"x must be (B, {cfg.latent_channels}, T, H, W), got {tuple(x.shape)}")
        b, _, frames, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"x height and width must be even (patch 2), got H={h}, W={w}")
        if t.shape not in ((b,), (b, frames)):
            raise ValueError(f"t must be (B,) = ({b},) or (B, T) = ({b}, {frames}), got {tuple(t.shape)}")
        if text.dim() != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
            raise ValueError(f"text must be (B, L, {cfg.text_dim}), got {tuple(text.shape)}")
        if text_mask is not None and (text_mask.dtype != torch.bool or text_mask.shape != text.shape[:2]):
            raise ValueError(f"text_mask must be bool {tuple(text.shape[:2])}, got "
                             f"{text_mask.dtype} {tuple(text_mask.shape)}")
        if cond is not None and cond.shape != (b, cfg.cond_channels, frames, h, w):
            raise ValueError(f"cond must be {(b, cfg.cond_channels, frames, h, w)}, got {tuple(cond.shape)}")
        if cond_mask is not None and cond_mask.numel() != b * frames:
            raise ValueError(f"cond_mask must be (B, 1, T, 1, 1) or (B, T), got {tuple(cond_mask.shape)}")
        if padding_mask is not None and padding_mask.shape != (b, 1, frames, h, w):
            raise ValueError(f"padding_mask must be {(b, 1, frames, h, w)}, got {tuple(padding_mask.shape)}")

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T, H/2 * W/2, C * 4)."""
        b, c, t, h, w = x.shape
        x = x.view(b, c, t, h // 2, 2, w // 2, 2).permute(0, 2, 3, 5, 1, 4, 6)
        return x.reshape(b, t, (h // 2) * (w // 2), c * 4)

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, t, _, _ = x.shape
        c = self.config.latent_channels
        x = x.view(b, t, h // 2, w // 2, c, 2, 2).permute(0, 4, 1, 2, 5, 3, 6)
        return x.reshape(b, c, t, h, w)

    # ------------------------------------------------------------------ forward
    def forward(self, x, t, text, text_mask=None, cond=None, cond_mask=None, padding_mask=None):
        self._check(x, t, text, text_mask, cond, cond_mask, padding_mask)
        cfg = self.config
        b, _, frames, h, w = x.shape
        cond = x.new_zeros(b, cfg.cond_channels, frames, h, w) if cond is None else cond.to(x.dtype)
        cm = x.new_zeros(b, 1, frames, h, w) if cond_mask is None else \
            cond_mask.reshape(b, 1, frames, 1, 1).to(x.dtype).expand(b, 1, frames, h, w)
        pm = x.new_zeros(b, 1, frames, h, w) if padding_mask is None else padding_mask.to(x.dtype)
        with nvtx_range("dit.embed"):
            tokens = self.patch_embed(self.patchify(torch.cat([x, cond, cm, pm], dim=1)))
            t = t.view(b, 1).expand(b, frames) if t.dim() == 1 else t
            emb = self.time_embed(t.to(tokens.dtype))
        rope = self._rope(frames, h // 2, w // 2, x.device)
        for block in self.blocks:
            with nvtx_range("dit.block"):
                tokens = block(tokens, emb, text.to(tokens.dtype), text_mask, rope)
        shift, scale = self.final_modulation(emb)
        out = self.final(modulate(tokens, shift, scale))
        return self.unpatchify(out, h, w)

    def flops_per_step(self, batch: int, frames: int, height: int, width: int, text_len: int) -> int:
        """Approximate training FLOPs (forward + backward = 3x forward) for MFU."""
        cfg = self.config
        n = frames * (height // 2) * (width // 2)
        d = cfg.hidden
        per_block = (2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d        # self-attn
                     + 2 * n * d * d + 2 * text_len * cfg.text_dim * 2 * d     # cross q, kv
                     + 4 * n * text_len * d + 2 * n * d * d                    # cross attn, out
                     + 2 * 2 * n * d * cfg.mlp_ratio * d)                      # MLP
        return 3 * batch * cfg.depth * per_block
