"""Prompt adherence: the true render of a scene adheres to it, unrelated, blank, noisy or mirrored
videos do not, and evaluate_generation reports it for text mode."""
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import rgbd_kernels as rk
from rgbd_world.data import RGBDVideoDataset
from rgbd_world.data.synthetic import PALETTE, render, sample_scene
from rgbd_world.eval.generation_eval import evaluate_generation
from rgbd_world.eval.prompt_adherence import (_class_colors, adherence_scores, classify_colors,
                                              prompt_adherence)

T, H, W = 9, 32, 32
# scenes whose objects are big enough at 32x32 to be checked, with left/right pairs and
# (12, 18, 25) objects that move across the image
SEEDS = (2, 8, 12, 18, 20, 25)


def _video(scene):
    """The true render as a generator would return it: RGB quantized to 8 bits, disparity
    1 / depth (0 for the sky)."""
    clip = render(scene, T, H, W)
    rgb = (clip.rgb * 255).round() / 255
    disp = torch.where(torch.isfinite(clip.depth), 1.0 / clip.depth, torch.zeros_like(clip.depth))
    return rgb, disp


@pytest.fixture(scope="module")
def truth():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    scenes = [sample_scene(s, T) for s in SEEDS]
    videos = [_video(s) for s in scenes]
    torch.set_num_threads(old)
    return videos, scenes


def test_palette_colours_are_classified_under_shading():
    names, colors = _class_colors(sample_scene(0, T))
    for name, rgb in PALETTE.items():
        for shade in (0.3, 0.6, 1.0):
            img = (torch.tensor(rgb) * shade).expand(1, 4, 4, 3)
            labels = classify_colors(img, colors)
            assert (labels == names.index(name)).all(), (name, shade, labels.unique())


def test_true_videos_adhere_and_shuffled_scenes_do_not(truth):
    videos, scenes = truth
    scores = prompt_adherence(videos, scenes, T, H, W, seed=0)
    assert scores["adherence"] >= 0.85, scores
    assert scores["adherence"] >= scores["adherence_shuffled"] + 0.3, scores
    for c in ("presence", "place", "motion"):
        assert scores[f"adherence_{c}"] >= 0.85, scores
        assert 0.0 <= scores[f"adherence_{c}_shuffled"] <= 1.0
    # every component had checks: the fixture's scenes exercise them all
    per_clip = [adherence_scores(*v, s, T, H, W) for v, s in zip(videos, scenes)]
    for c in ("presence", "place", "motion"):
        assert sum(p[f"{c}_checks"] for p in per_clip) > 0, c
    # another derangement gives another chance level, but still far below the truth
    other = prompt_adherence(videos, scenes, T, H, W, seed=3)
    assert other["adherence"] == scores["adherence"]
    assert other["adherence_shuffled"] <= other["adherence"] - 0.3


def test_blank_and_noise_videos_score_low_on_presence(truth):
    _, scenes = truth
    gen = torch.Generator().manual_seed(0)
    grey = torch.full((T, H, W, 3), 0.5)
    noise = torch.rand(T, H, W, 3, generator=gen)
    disp = torch.rand(T, H, W, generator=gen)
    for video in (grey, noise):
        presence = [adherence_scores(video, disp, s, T, H, W)["presence"] for s in scenes]
        presence = [p for p in presence if not math.isnan(p)]
        assert presence and sum(presence) / len(presence) <= 0.2, presence


def test_a_mirrored_video_loses_place_and_motion(truth):
    videos, scenes = truth
    true, mirrored = [], []
    for (rgb, disp), scene in zip(videos, scenes):
        true.append(adherence_scores(rgb, disp, scene, T, H, W))
        # mirrored left-right: left/right orders flip and horizontal motion reverses
        mirrored.append(adherence_scores(rgb.flip(2), disp.flip(2), scene, T, H, W))

    def mean(scores, key):
        vals = [s[key] for s in scores if not math.isnan(s[key])]
        return sum(vals) / len(vals)

    assert mean(mirrored, "presence") == mean(true, "presence")   # colours are all still there
    assert mean(mirrored, "place") <= mean(true, "place") - 0.3
    assert mean(mirrored, "motion") <= mean(true, "motion") - 0.5
    assert mean(mirrored, "adherence") < mean(true, "adherence")


class RoundTrip(torch.nn.Module):
    """A stand-in RGBD tokenizer: gives the input back, or (``grey``) its RGB turned grey."""

    temporal_compression = 8

    def __init__(self, grey=False):
        super().__init__()
        self.grey = grey
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        if self.grey:
            x = torch.cat([x[:, :3].mean(1, keepdim=True).expand(-1, 3, -1, -1, -1), x[:, 3:]], 1)
        return SimpleNamespace(reconstruction=x)


class TextOraclePipe:
    """Text mode: returns the clip whose caption is the prompt (RGB in [0, 1] and its true
    disparity). Video mode: the true disparity of the dataset clip the video came from."""

    def __init__(self, data_dir, grey_tokenizer=False):
        self.defaults = {"num_frames": T, "height": H, "width": W}
        self.tokenizer = RoundTrip(grey_tokenizer)
        self.data_dir = data_dir

    def __call__(self, prompt="", video=None, num_inference_steps=1, generator=None,
                 progress=False):
        ds = RGBDVideoDataset(self.data_dir, frames=T, size=(H, W), augment=False)
        for i in range(len(ds)):
            clip = ds[i]
            rgb8 = ((clip["rgb"].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255)
            if video is None and clip["caption"] == prompt:
                break
            if video is not None and np.array_equal(rgb8.to(torch.uint8).numpy(), video):
                break
        else:
            raise AssertionError("prompt or video not from the dataset")
        disp, valid = rk.depth_to_disparity(clip["depth"][0])
        disp = torch.where(valid, disp, disp[valid].min())
        return SimpleNamespace(disparity=2.0 * disp - 0.1, depth=1.0 / (3.0 * disp + 0.2),
                               rgb=rgb8 / 255)


def test_evaluate_generation_reports_adherence_above_chance(tmp_path):
    data = tmp_path / "data"
    out = evaluate_generation(TextOraclePipe(data), num_clips=4, steps=1, data_dir=data,
                              text_mode=True)
    print({k: round(v, 3) for k, v in out.items() if k.startswith("adherence")})
    assert out["adherence"] >= 0.85, out
    assert out["adherence"] >= out["adherence_shuffled"] + 0.3, out
    assert out["adherence_presence"] >= 0.85, out
    # the true clips, and their round trip through a lossless tokenizer, adhere as well
    assert out["adherence_ground_truth"] >= 0.85, out
    assert out["adherence_tokenizer_ceiling"] == pytest.approx(out["adherence_ground_truth"],
                                                               abs=0.05), out


def test_a_tokenizer_that_loses_colour_caps_adherence(tmp_path):
    data = tmp_path / "data"
    out = evaluate_generation(TextOraclePipe(data, grey_tokenizer=True), num_clips=4, steps=1,
                              data_dir=data, text_mode=True)
    assert out["adherence_ground_truth"] >= 0.85, out
    assert out["adherence_tokenizer_ceiling"] <= out["adherence_shuffled"] + 0.1, out


@pytest.mark.parametrize("call, name", [
    (lambda v, s: adherence_scores(v[0][:, :, :16], v[1], s, T, H, W), "rgb"),
    (lambda v, s: adherence_scores(v[0], v[1][:4], s, T, H, W), "disparity"),
    (lambda v, s: adherence_scores(v[0] * 255, v[1], s, T, H, W), "rgb"),
    (lambda v, s: adherence_scores(v[0], v[1], {"objects": []}, T, H, W), "scene"),
    (lambda v, s: adherence_scores(v[0], v[1], s, 0, H, W), "frames"),
    (lambda v, s: prompt_adherence([v], [s], T, H, W), "num_clips"),
    (lambda v, s: prompt_adherence([v, v], [s], T, H, W), "scenes"),
    (lambda v, s: prompt_adherence([v, v], [s, s], T, H, W, seed=-1), "seed"),
    (lambda v, s: prompt_adherence([v, v[0]], [s, s], T, H, W), "videos[1]"),
])
def test_bad_arguments_name_the_argument(truth, call, name):
    videos, scenes = truth
    with pytest.raises(ValueError, match=re.escape(name) + "="):
        call(videos[0], scenes[0])


def test_evaluate_generation_text_mode_needs_two_clips(tmp_path):
    with pytest.raises(ValueError, match="num_clips"):
        evaluate_generation(TextOraclePipe(tmp_path), num_clips=1, steps=1, data_dir=tmp_path,
                            text_mode=True)
