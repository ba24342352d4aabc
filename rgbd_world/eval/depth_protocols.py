"""Video depth accuracy under a named evaluation protocol: :func:`video_depth_metrics`.

Every protocol aligns the predicted disparity to the ground truth's disparity 1/depth with a
least-squares scale s and shift t (``s * pred + t``), turns the aligned disparity into depth and
reports AbsRel = mean |p - g| / g and delta1 = fraction with max(p/g, g/p) < 1.25 over the
evaluated pixels. They differ in what is fitted, what is clipped and how pixels are averaged:

``"depthcrafter"`` (the video protocol of DepthCrafter's published evaluation code):
    evaluated pixels: min_depth < gt < max_depth (and ``valid``). The prediction is clipped to
    >= 1e-3 first; one fit per video over all its evaluated pixels, to 1 / (gt + 1e-8); the
    aligned disparity is clipped to >= 1e-3, inverted, and the depth clipped to
    [min_depth, max_depth]. AbsRel and delta1 are computed per frame and averaged over the
    frames that have evaluated pixels. The prediction must be a positive disparity (a signed,
    median-centred one loses every pixel below 1e-3 to the clip).
``"marigold"`` (the image protocol of Marigold's published evaluation code, alignment
    ``least_square_disparity``, applied to every frame as an image): evaluated pixels as above;
    one fit per frame over the evaluated pixels where the prediction is also > 0, to 1 / gt (the
    raw prediction, unclipped); the aligned disparity is clipped to >= 1e-3, inverted, and the
    depth clipped to [min_depth, max_depth] and to >= 1e-6. Metrics per frame, averaged.
``"rgbd"`` (this project's own, :func:`rgbd_world.eval.disparity_metrics` per clip): evaluated
    pixels: finite prediction and min_depth < gt < max_depth (and ``valid``); one fit per video
    with ``rgbd_kernels.align_scale_shift`` (any sign: it is made for the median-0 normalized
    disparity the tokenizer reconstructs); aligned disparity clamped to >= 1e-8 and inverted;
    predicted depth clipped to the clip's own ground-truth depth range; AbsRel and delta1 over
    all the clip's evaluated pixels at once (pixel-weighted, not per frame). Not a published
    protocol: its numbers are not comparable with published ones.

A batch of clips never pools pixels: every clip is evaluated alone and the batch value is the
mean of the per-clip values (over clips with evaluated pixels). A least-squares fit with fewer
than two distinct predictions takes the minimum-norm solution (as numpy's ``lstsq`` does; the
"rgbd" protocol keeps ``align_scale_shift``'s own rule). The published protocols compute in
float64, the fit centred: it is the exact least-squares solution, which numpy's ``lstsq`` (what
the published scripts call) matches to ~1e-9 except on nearly collinear inputs (predictions like
1e6 + small variations), where its default rank cutoff falls back to the minimum-norm answer.
"""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["PROTOCOLS", "video_depth_metrics"]

PROTOCOLS = ("depthcrafter", "marigold", "rgbd")
_DISPARITY_FLOOR = 1e-3   # both published protocols clip (aligned) disparity here
_MARIGOLD_DEPTH_FLOOR = 1e-6


def _check_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN, got {value!r}")
    return value


def _check_inputs(pred_disparity, gt_depth, valid, protocol, min_depth, max_depth):
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    for name, t in (("pred_disparity", pred_disparity), ("gt_depth", gt_depth)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be (B, T, H, W) (a single clip: add [None]), got shape "
                             f"{tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    if pred_disparity.shape != gt_depth.shape:
        raise ValueError(f"pred_disparity and gt_depth must have the same shape, got "
                         f"{tuple(pred_disparity.shape)} and {tuple(gt_depth.shape)}")
    if pred_disparity.device != gt_depth.device:
        raise ValueError(f"pred_disparity and gt_depth must be on the same device, got "
                         f"{pred_disparity.device} and {gt_depth.device}")
    if valid is not None:
        if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool:
            got = valid.dtype if isinstance(valid, torch.Tensor) else type(valid).__name__
            raise TypeError(f"valid must be a bool tensor or None, got {got}")
        if valid.shape != gt_depth.shape:
            raise ValueError(f"valid must have gt_depth's shape {tuple(gt_depth.shape)}, got "
                             f"{tuple(valid.shape)}")
        if valid.device != gt_depth.device:
            raise ValueError(f"valid must be on gt_depth's device {gt_depth.device}, got "
                             f"{valid.device}")
    lo = _check_number("min_depth", min_depth)
    hi = _check_number("max_depth", max_depth)
    if not 0 <= lo < math.inf:
        raise ValueError(f"min_depth must be finite and >= 0, got {min_depth!r}")
    if not hi > lo:
        raise ValueError(f"max_depth must be greater than min_depth ({min_depth!r}), got "
                         f"{max_depth!r}")
    return lo, hi


def _least_squares(pred: torch.Tensor, target: torch.Tensor, use: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (G, N) float64 ``pred``/``target`` over ``use``: the (s, t) minimizing
    sum (s p + t - g)^2, centred; minimum-norm when fewer than two distinct p (zeros when none)."""
    n = use.sum(1).to(pred.dtype)
    p = torch.where(use, pred, 0.0)
    g = torch.where(use, target, 0.0)
    n1 = n.clamp_min(1)
    mp, mg = p.sum(1) / n1, g.sum(1) / n1
    dp = torch.where(use, pred - mp[:, None], 0.0)
    dg = torch.where(use, target - mg[:, None], 0.0)
    var, cov = (dp * dp).sum(1), (dp * dg).sum(1)
    pmax = torch.where(use, pred, -math.inf).amax(1)
    pmin = torch.where(use, pred, math.inf).amin(1)
    spread = (pmax > pmin) & (var > 0)
    s = torch.where(spread, cov / torch.where(spread, var, 1.0), 0.0)
    t = mg - s * mp
    # one distinct value c: every (s, t) with c s + t = mean g fits; numpy picks the shortest
    c = torch.where(n > 0, pmax, 0.0)
    s_min, t_min = c * mg / (c * c + 1), mg / (c * c + 1)
    s = torch.where(spread, s, torch.where(n > 0, s_min, 0.0))
    t = torch.where(spread, t, torch.where(n > 0, t_min, 0.0))
    return s, t


def _per_frame_means(pred_depth, gt, use):
    """Per-frame AbsRel and delta1 of (B, T, H, W) float64 inputs, averaged over the frames with
    evaluated pixels -> ((B,), (B,), (B,) bool: the clip has evaluated pixels)."""
    safe_g = torch.where(use, gt, 1.0)
    safe_p = torch.where(use, pred_depth, 1.0)
    rel = torch.where(use, (safe_p - safe_g).abs() / safe_g, 0.0)
    hit = torch.where(use, torch.maximum(safe_p / safe_g, safe_g / safe_p) < 1.25, False)
    n = use.sum((-1, -2))
    frame_ok = n > 0
    n1 = n.clamp_min(1).to(torch.float64)
    frames = frame_ok.sum(1)
    f1 = frames.clamp_min(1).to(torch.float64)
    abs_rel = torch.where(frame_ok, rel.sum((-1, -2)) / n1, 0.0).sum(1) / f1
    delta1 = torch.where(frame_ok, hit.sum((-1, -2)) / n1, 0.0).sum(1) / f1
    has = frames > 0
    return torch.where(has, abs_rel, torch.nan), torch.where(has, delta1, torch.nan), has


def _depthcrafter(pred, gt, use, lo, hi):
    b = pred.shape[0]
    p = pred.clamp_min(_DISPARITY_FLOOR)
    target = 1.0 / (torch.where(use, gt, 1.0) + 1e-8)
    s, t = _least_squares(p.reshape(b, -1), target.reshape(b, -1), use.reshape(b, -1))
    aligned = (s.view(b, 1, 1, 1) * p + t.view(b, 1, 1, 1)).clamp_min(_DISPARITY_FLOOR)
    depth = (1.0 / aligned).clamp(lo, hi)
    return depth, s, t


def _marigold(pred, gt, use, lo, hi):
    b, f = pred.shape[:2]
    fit = use & (gt > 0) & (pred > 0)
    target = 1.0 / torch.where(fit, gt, 1.0)
    s, t = _least_squares(pred.reshape(b * f, -1), target.reshape(b * f, -1),
                          fit.reshape(b * f, -1))
    s, t = s.view(b, f), t.view(b, f)
    aligned = (s[..., None, None] * pred + t[..., None, None]).clamp_min(_DISPARITY_FLOOR)
    depth = (1.0 / aligned).clamp(lo, hi).clamp_min(_MARIGOLD_DEPTH_FLOOR)
    return depth, s, t


def video_depth_metrics(pred_disparity: torch.Tensor, gt_depth: torch.Tensor,
                        valid: torch.Tensor | None = None, protocol: str = "depthcrafter",
                        min_depth: float = 1e-3, max_depth: float = math.inf
                        ) -> dict[str, torch.Tensor]:
    """AbsRel and delta1 of predicted disparity videos under ``protocol`` (module docstring).

    pred_disparity: (B, T, H, W) float, any units (affine-invariant). gt_depth: (B, T, H, W)
    float depth (0, inf or NaN where unknown). valid: optional (B, T, H, W) bool, further
    restricting the evaluated pixels (e.g. a crop). min_depth / max_depth: the data set's depth
    range (the published evaluations use 1e-3 and e.g. 70 for Sintel, 80 for KITTI, 10 for
    ScanNet/Bonn/NYU; inf: no upper bound).

    Returns float64 tensors: "abs_rel", "delta1" (0-d: the mean over clips with evaluated
    pixels; NaN if none has any), "abs_rel_per_clip", "delta1_per_clip" ((B,): NaN for a clip
    without evaluated pixels), "scale", "shift" ((B,) per video; (B, T) for "marigold"),
    "pred_depth" ((B, T, H, W): the protocol's aligned, clipped predicted depth) and "valid"
    ((B, T, H, W) bool: the evaluated pixels).
    """
    lo, hi = _check_inputs(pred_disparity, gt_depth, valid, protocol, min_depth, max_depth)
    pred = pred_disparity.detach().to(torch.float64)
    gt = gt_depth.detach().to(torch.float64)
    use = (gt > lo) & (gt < hi)   # False for NaN
    if valid is not None:
        use = use & valid
    if protocol == "rgbd":
        from .metrics import rgbd_protocol

        use = use & torch.isfinite(pred)
        gt_disp = torch.where(use, 1.0 / torch.where(use, gt, 1.0), 0.0)
        r = rgbd_protocol(pred, gt_disp, use, per="clip")
        abs_rel, delta1 = r["abs_rel"].double(), r["delta1"].double()
        has = use.flatten(1).any(1)
        depth, s, t = r["pred_depth"].double(), r["scale"].double(), r["shift"].double()
    else:
        fn = _depthcrafter if protocol == "depthcrafter" else _marigold
        depth, s, t = fn(pred, gt, use, lo, hi)
        abs_rel, delta1, has = _per_frame_means(depth, gt, use)
    k = has.sum().clamp_min(1).to(torch.float64)
    any_clip = has.any()
    mean_abs_rel = torch.where(any_clip, torch.where(has, abs_rel, 0.0).sum() / k, torch.nan)
    mean_delta1 = torch.where(any_clip, torch.where(has, delta1, 0.0).sum() / k, torch.nan)
    return {"abs_rel": mean_abs_rel, "delta1": mean_delta1, "abs_rel_per_clip": abs_rel,
            "delta1_per_clip": delta1, "scale": s, "shift": t, "pred_depth": depth, "valid": use}
