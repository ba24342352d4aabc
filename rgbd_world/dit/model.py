"""The stage-2 diffusion transformer (Cosmos-Predict2-style DiT on RGBD latents).

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

Layout options (``DiTConfig``; :data:`rgbd_world.dit.config.PREDICT2` is Cosmos-Predict2's):
the timestep path and AdaLN form (``modulation``), MLP biases and GELU, final-layer bias and
feature order, RoPE layout and per-axis scaling. With the Predict2 options the model computes
what diffusers' ``CosmosTransformer3DModel`` computes (``DiT.from_diffusers`` /
``dit.to_diffusers()``, :mod:`rgbd_world.dit.diffusers_compat`).

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

from rgbd_kernels import nvtx_range
from rgbd_kernels.nn import Attention

from rgbd_world.saved_model import SavedModel

from .config import PATCH, DiTConfig
from .diffusers_compat import (DIFFUSERS_QK_EPS, DiTLoadError, diffusers_dit_config,
                               dit_config_from_diffusers, dit_state_from_diffusers,
                               dit_state_to_diffusers)
from .modulation import AdaLNLoRA, Predict2TimestepEmbedding, TimestepEmbedding, modulate
from .rope import Rope3D



class DiTBlock(nn.Module):
    """self-attn -> cross-attn -> MLP on tokens (B, T, N, D), modulated per frame."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden
        self.self_attn = Attention(d, cfg.heads, backend=cfg.backend, fp8=cfg.fp8,
                                   eps=cfg.qk_norm_eps)
        self.cross_attn = Attention(d, cfg.heads, context_dim=cfg.text_dim, backend=cfg.backend,
                                    eps=cfg.qk_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d, bias=cfg.mlp_bias),
                                 nn.GELU(approximate=cfg.gelu),
                                 nn.Linear(cfg.mlp_ratio * d, d, bias=cfg.mlp_bias))
        if cfg.modulation == "block":
            # 9 vectors per frame: (shift, scale, gate) x (self-attn, cross-attn, MLP)
            self.modulation = AdaLNLoRA(d, cfg.adaln_rank, 9)
        else:  # Predict2: one LoRA per sublayer, plus the shared base of the timestep MLP
            self.modulation_self_attn = AdaLNLoRA(d, cfg.adaln_rank, 3)
            self.modulation_cross_attn = AdaLNLoRA(d, cfg.adaln_rank, 3)
            self.modulation_mlp = AdaLNLoRA(d, cfg.adaln_rank, 3)

    def modulations(self, emb: torch.Tensor, base: torch.Tensor | None = None):
        """The 9 (B, T, 1, D) vectors (shift, scale, gate) x (self-attn, cross-attn, MLP)."""
        if base is None:
            return self.modulation(emb)
        return (self.modulation_self_attn(emb, base) + self.modulation_cross_attn(emb, base)
                + self.modulation_mlp(emb, base))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None, rope, base: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, N, D) tokens per frame, emb (B, T, D), text (B, L, text_dim); ``base``
        (B, T, 3D): the shared modulation of ``modulation="sublayer"`` (else None)."""
        b, t, n, d = x.shape
        s1, c1, g1, s2, c2, g2, s3, c3, g3 = self.modulations(emb, base)
        h = modulate(x, s1, c1).reshape(b, t * n, d)
        x = x + g1 * self.self_attn(h, rope=rope).view(b, t, n, d)
        h = modulate(x, s2, c2).reshape(b, t * n, d)
        x = x + g2 * self.cross_attn(h, text, context_mask=text_mask).view(b, t, n, d)
        return x + g3 * self.mlp(modulate(x, s3, c3))


class DiT(SavedModel, nn.Module):
    """``forward(x, t, text, text_mask=None, cond=None, cond_mask=None, padding_mask=None) -> v``.

    Args:
        x: noisy latent (B, latent_channels, T, H, W), H and W even.
        t: flow-matching time in [0, 1], (B,) (shared by every frame) or (B, T) per latent frame
            (e.g. 0 on frames given clean); embedded as the sinusoid of ``timestep_scale * t``
            (1000 t by default, t in the Predict2 layout).
        text: (B, L, text_dim) text embeddings; text_mask: (B, L) bool, True = attend, or None
            (all attend). An all-False row is the null text of classifier-free guidance.
        cond: (B, cond_channels, T, H, W) RGB conditioning latent, or None (zeros).
        cond_mask: (B, 1, T, 1, 1) or (B, T), float or bool: 1 on latent frames given clean.
        padding_mask: (B, 1, T, H, W), float or bool: 1 on padded latent pixels.
    Returns:
        the velocity prediction (B, latent_channels, T, H, W) in x's dtype.

    ``DiT(cfg)`` or ``DiT("tiny", latent_channels=8, ...)``; ``model.blocks`` is the
    nn.ModuleList of blocks (for sharding / activation checkpointing).
    ``save_pretrained(dir)`` / ``DiT.from_pretrained(dir)``: config.json (format
    ``"rgbd-world-dit"``) + model.safetensors (:mod:`rgbd_world.saved_model`).
    """

    saved_format = "rgbd-world-dit"
    saved_format_version = 1
    config_class = DiTConfig

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
        if cfg.modulation == "block":
            self.time_embed = TimestepEmbedding(d, cfg.timestep_dim, scale=cfg.timestep_scale)
        else:
            self.time_embed = Predict2TimestepEmbedding(d, scale=cfg.timestep_scale)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_modulation = AdaLNLoRA(d, cfg.adaln_rank, 2)
        self.final = nn.Linear(d, cfg.latent_channels * p, bias=cfg.final_bias)
        nn.init.zeros_(self.final.weight)
        if self.final.bias is not None:
            nn.init.zeros_(self.final.bias)
        self._rope_cache: dict = {}

    # ------------------------------------------------------------------ diffusers interop
    @staticmethod
    def state_shapes(config: DiTConfig) -> dict[str, tuple]:
        """State-dict key -> shape of a DiT of ``config`` (built on the meta device)."""
        with torch.device("meta"):
            model = DiT(dataclasses.replace(config, backend="reference", fp8=False))
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    @classmethod
    def from_diffusers(cls, transformer, **overrides) -> "DiT":
        """The DiT of a diffusers ``CosmosTransformer3DModel`` (same weights and outputs; same
        device and dtype, eval mode; the call and timestep mapping are in
        :mod:`rgbd_world.dit.diffusers_compat`). ``overrides``: run-time fields (backend, fp8)."""
        from diffusers import CosmosTransformer3DModel  # optional dependency: only needed here
        if not isinstance(transformer, CosmosTransformer3DModel):
            raise DiTLoadError(f"expected a diffusers CosmosTransformer3DModel, found "
                               f"{type(transformer).__name__}")
        eps = transformer.transformer_blocks[0].attn1.norm_q.eps if len(
            transformer.transformer_blocks) else DIFFUSERS_QK_EPS
        cfg = dit_config_from_diffusers(transformer.config, qk_norm_eps=eps, **overrides)
        param = next(transformer.parameters())
        state = dit_state_from_diffusers(transformer.state_dict(), cfg,
                                         int(transformer.config.in_channels),
                                         bool(transformer.config.concat_padding_mask),
                                         our_shapes=cls.state_shapes(cfg))
        model = cls(cfg)
        model.load_state_dict(state, strict=True)
        return model.to(param.device).to(param.dtype).eval()

    def to_diffusers(self):
        """This (Predict2-layout) DiT as a diffusers ``CosmosTransformer3DModel`` (same
        device and dtype, eval mode); its QK norms use our ``qk_norm_eps``."""
        from diffusers import CosmosTransformer3DModel
        cfg = self.config
        model = CosmosTransformer3DModel(**diffusers_dit_config(cfg))
        model.load_state_dict(dit_state_to_diffusers(self.state_dict(), cfg), strict=True)
        for block in model.transformer_blocks:
            for attn in (block.attn1, block.attn2):
                attn.norm_q.eps = attn.norm_k.eps = cfg.qk_norm_eps
        param = next(self.parameters())
        model = model.to(param.device)
        return (model.to(param.dtype) if param.dtype != torch.float32 else model).eval()

    # ------------------------------------------------------------------ helpers
    def rope(self, frames: int, height: int, width: int, device) -> Rope3D:
        """The 3D RoPE of a token grid (frames, height, width) = (T, H/2, W/2), cached (last one;
        built inside the graph under torch.compile: a cache write there forces a recompile)."""
        cfg = self.config
        if torch.compiler.is_compiling():
            return Rope3D(frames, height, width, cfg.head_dim, cfg.rope_theta, device,
                          scale=cfg.rope_scale, layout=cfg.rope_layout)
        key = (frames, height, width, str(device))
        if key not in self._rope_cache:
            self._rope_cache = {key: Rope3D(frames, height, width, cfg.head_dim, cfg.rope_theta,
                                            device, scale=cfg.rope_scale, layout=cfg.rope_layout)}
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
        """(B, T, H/2 * W/2, C_lat * 4) -> (B, C_lat, T, H, W): features ordered (c, dh, dw)
        (the inverse of :meth:`patchify`), or (dh, dw, c) with ``unpatchify_order="dh_dw_c"``."""
        b, t, _, _ = x.shape
        c = self.config.latent_channels
        if self.config.unpatchify_order == "dh_dw_c":
            x = x.reshape(b, t, h // 2, w // 2, 2, 2, c).permute(0, 6, 1, 2, 4, 3, 5)
        else:
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
            emb = self.time_embed(t)  # (B, T, D): sinusoid of timestep_scale * t in float32
            base = None
            if isinstance(emb, tuple):  # modulation="sublayer": (normed sinusoid, shared base)
                emb, base = emb
        rope = self.rope(frames, h // 2, w // 2, x.device)
        text = text.to(tokens.dtype)
        if text_mask is not None:
            text_mask = text_mask.to(x.device)
        for block in self.blocks:
            with nvtx_range("dit.block"):
                tokens = block(tokens, emb, text, text_mask, rope, base)
        shift, scale = self.final_modulation(
            emb, None if base is None else base[..., :2 * self.config.hidden])
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
