"""Evaluation of generation on held-out procedural clips (exact depth, known cameras).

* RGB video -> RGBD: AbsRel and delta1 of the generated depth against the exact ground truth,
  under two protocols: ``video_abs_rel``, ``video_delta1`` are this project's own ("rgbd",
  :func:`disparity_metrics` on the generated normalized disparity, aligned per clip);
  ``video_abs_rel_depthcrafter``, ``video_delta1_depthcrafter`` are DepthCrafter's published
  video protocol (:func:`video_depth_metrics`) on what the pipeline exports: the disparity
  1 / ``out.depth``, with the depth range (1e-3, ``PROCEDURAL_MAX_DEPTH``) m.
* TAE (temporal alignment error): the generated depth, aligned to the ground truth and clipped
  to the data's depth range as in DepthCrafter's protocol, of frame i moved into frame i+1 with
  the true intrinsics and poses, against frame i+1's (mean relative disparity error over the
  evaluated pixels; the ground truth's own TAE is reported beside it: moving objects and
  occlusions keep it above 0).
* Text -> RGBD coherence: the generated RGB is depthified (RGB video -> RGBD mode) and that depth
  is compared with the generated depth (AbsRel after alignment): low means the depth explains
  the RGB.
* Prompt adherence (text mode, :mod:`.prompt_adherence`): each text-generated video is checked
  against the scene its caption describes (stored with the clip in the shards): the named
  colours are present (``adherence_presence``), pairs are in the true left/right or
  front/behind order (``adherence_place``), moving objects move the true way
  (``adherence_motion``), all checks together (``adherence``); the same scored against another
  clip's scene (``*_shuffled``) is the chance level. Needs ``num_clips >= 2``. Beside it,
  ``adherence_ground_truth`` (the true clips scored the same way) and
  ``adherence_tokenizer_ceiling`` (the true clips after the pipeline's tokenizer encodes and
  decodes them: the most a generator in these latents can reach; when it is near chance the
  tokenizer, not the DiT, loses the named objects).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import rgbd_kernels as rk

from .depth_protocols import video_depth_metrics
from .metrics import disparity_metrics
from .prompt_adherence import prompt_adherence
from .tokenizer_eval import PROCEDURAL_MAX_DEPTH


def _tae(depth: torch.Tensor, K: torch.Tensor, poses: torch.Tensor) -> float:
    """Mean over consecutive frame pairs of the mean relative disparity error of frame i's
    depth (T, H, W), moved into frame i+1, against frame i+1's (non-finite or <= 0: invalid)."""
    from .geometry import reprojection_errors

    errs = []
    for i in range(depth.shape[0] - 1):
        e, _ = reprojection_errors(depth, K, poses, i, i + 1)
        if e.numel():
            errs.append(e.abs().mean().item())
    return sum(errs) / max(len(errs), 1)


def clip_scene(ds, index: int) -> dict:
    """The scene dict stored in the shard meta of clip ``index`` of ``ds`` (a procedural
    shard dataset, as :func:`rgbd_world.data.generate_dataset` writes it)."""
    source = ds.clips[index]
    with np.load(source.path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    for entry in meta["clips"]:
        if entry["name"] == source.name and "scene" in entry:
            return entry["scene"]
    raise ValueError(f"{source.source}: no scene stored in the shard meta")


@torch.no_grad()
def _round_trip(tokenizer, clip) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip through the pipeline's RGBD tokenizer: (rgb (T, H, W, 3) in [0, 1], disparity
    (T, H, W) in the tokenizer's normalized units)."""
    device = next(tokenizer.parameters()).device
    x = torch.cat([clip["rgb"], clip["disparity"]], 0)[None].to(device)
    recon = tokenizer(x).reconstruction[0].float().cpu()
    return ((recon[:3].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1), recon[3]


def evaluate_generation(pipe, num_clips: int = 4, steps: int = 10, seed: int = 12345,
                        data_dir: str | Path | None = None, text_mode: bool = True) -> dict[str, float]:
    from tqdm.auto import tqdm

    from rgbd_world.data import RGBDVideoDataset, generate_dataset
    from rgbd_world.validation import InvalidArgument, check_int, check_seed

    check_int("num_clips", num_clips, 1)   # checked before any clip is rendered
    if text_mode and num_clips < 2:
        raise InvalidArgument("num_clips", num_clips, "an integer >= 2 with text_mode (prompt "
                              "adherence's chance level scores each video against another "
                              "clip's scene)")
    check_int("steps", steps, 1)
    check_seed(seed)
    d = pipe.defaults
    data_dir = Path(data_dir or Path("outputs") / "eval-generation-data")
    generate_dataset(data_dir, num_clips, frames=d["num_frames"], height=d["height"],
                     width=d["width"], seed=seed, progress=False)
    ds = RGBDVideoDataset(data_dir, frames=d["num_frames"], size=(d["height"], d["width"]),
                          augment=False, temporal_compression=pipe.tokenizer.temporal_compression)
    sums: dict[str, float] = {}
    videos, scenes, truth_videos, recon_videos = [], [], [], []
    n = min(num_clips, len(ds))
    for i in tqdm(range(n), desc="eval-generation"):
        clip = ds[i]
        video = ((clip["rgb"].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        out = pipe(prompt=clip["caption"], video=video.numpy(), num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(i), progress=False)
        gt_disp, valid = rk.depth_to_disparity(clip["depth"][0])
        m = disparity_metrics(out.disparity[None], gt_disp[None], valid[None])
        dc = video_depth_metrics((1.0 / out.depth)[None], clip["depth"][0][None], valid[None],
                                 protocol="depthcrafter", max_depth=PROCEDURAL_MAX_DEPTH)
        values = {"video_abs_rel": m["abs_rel"].item(), "video_delta1": m["delta1"].item(),
                  "video_abs_rel_depthcrafter": dc["abs_rel"].item(),
                  "video_delta1_depthcrafter": dc["delta1"].item(),
                  # TAE on the generated depth aligned to the ground truth and clipped to the
                  # data's depth range (DepthCrafter's protocol): an affine fit can push some
                  # disparities to <= 0, i.e. depths outside any range, that would dominate it
                  "tae": _tae(dc["pred_depth"][0].where(dc["valid"][0], torch.nan),
                              clip["K"], clip["poses"]),
                  "tae_ground_truth": _tae(clip["depth"][0].where(valid, torch.nan),
                                           clip["K"], clip["poses"])}
        if text_mode:
            gen = pipe(prompt=clip["caption"], num_inference_steps=steps,
                       generator=torch.Generator().manual_seed(i), progress=False)
            rgb8 = (gen.rgb * 255).round().to(torch.uint8).numpy()
            redo = pipe(prompt="", video=rgb8, num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(i), progress=False)
            ref = rk.align_scale_shift(gen.disparity[None], redo.disparity[None], per="clip")[0][0]
            # both are affine-invariant: compare as positive disparities on a common scale
            shift = torch.minimum(ref.min(), redo.disparity.min()) - 0.1
            coh = rk.abs_rel(1.0 / (ref - shift), 1.0 / (redo.disparity - shift))
            values["text_coherence_abs_rel"] = coh.item()
            videos.append((gen.rgb, gen.disparity))
            scenes.append(clip_scene(ds, clip["index"]))
            truth_videos.append((((clip["rgb"].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1),
                                 rk.depth_to_disparity(clip["depth"][0])[0]))
            recon_videos.append(_round_trip(pipe.tokenizer, clip))
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
    result = {k: v / n for k, v in sums.items()} | {"clips": n, "steps": steps}
    if text_mode:
        frames, height, width = videos[0][0].shape[:3]
        result |= prompt_adherence(videos, scenes, frames, height, width, seed=seed)
        # the same score for the true clips and for their tokenizer round trip: the second is
        # what a generator working in this tokenizer's latents can reach at best
        for key, vids in (("adherence_ground_truth", truth_videos),
                          ("adherence_tokenizer_ceiling", recon_videos)):
            result[key] = prompt_adherence(vids, scenes, frames, height, width,
                                           seed=seed)["adherence"]
    return result


