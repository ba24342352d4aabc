"""evaluate_generation's depth figures on an oracle pipeline whose depth is the ground truth
with known errors: the metrics must say what those errors are."""
from types import SimpleNamespace

import numpy as np
import torch

import rgbd_kernels as rk
from rgbd_world.data import RGBDVideoDataset
from rgbd_world.eval.generation_eval import evaluate_generation


class OraclePipe:
    """Returns each clip's true disparity, perturbed by ``noise`` (relative, per pixel) and with
    a few pixels pushed far away (``far_fraction``): what a good generator with rare outliers
    would give. The video is matched to the dataset clip it came from."""

    def __init__(self, data_dir, noise=0.05, far_fraction=0.02):
        self.defaults = {"num_frames": 9, "height": 32, "width": 32}
        self.tokenizer = SimpleNamespace(temporal_compression=8)
        self.noise, self.far = noise, far_fraction
        self.data_dir = data_dir

    def __call__(self, prompt="", video=None, num_inference_steps=1, generator=None,
                 progress=False):
        ds = RGBDVideoDataset(self.data_dir, frames=9, size=(32, 32), augment=False)
        for i in range(len(ds)):
            clip = ds[i]
            rgb8 = ((clip["rgb"].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255)
            if np.array_equal(rgb8.to(torch.uint8).numpy(), video):
                break
        else:
            raise AssertionError("video not from the dataset")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        disp, valid = rk.depth_to_disparity(clip["depth"][0])
        fill = disp[valid].median()
        disp = torch.where(valid, disp, fill)
        disp = disp * (1 + self.noise * torch.randn(disp.shape, generator=gen))
        far = torch.rand(disp.shape, generator=gen) < self.far
        disp = torch.where(far, disp.min() * 0.01, disp)
        exported = 1.0 / (3.0 * disp + 0.2)        # the pipeline exports relative depth
        return SimpleNamespace(disparity=2.0 * disp - 0.1,  # any affine map of disparity
                               depth=exported, rgb=None)


def test_tae_of_a_near_perfect_generation_is_near_the_ground_truths(tmp_path):
    """Before the fix, a few far outliers made the affine-aligned disparity <= 0 somewhere,
    those pixels became depths of 1e6 and the TAE read ~20 against 0.002 for the truth."""
    data = tmp_path / "data"
    exact = evaluate_generation(OraclePipe(data, noise=0.0, far_fraction=0.0), num_clips=2,
                                steps=1, data_dir=data, text_mode=False)
    assert exact["video_abs_rel_depthcrafter"] < 1e-4 and exact["video_abs_rel"] < 1e-4
    assert exact["tae"] < 5 * exact["tae_ground_truth"] + 0.01, exact
    noisy = evaluate_generation(OraclePipe(data), num_clips=2, steps=1, data_dir=data,
                                text_mode=False)
    assert noisy["tae"] < 0.3, noisy                    # 5% noise and 2% outliers, not 20x
    assert noisy["tae"] > exact["tae"]
