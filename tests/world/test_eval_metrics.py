"""Evaluation metrics against scikit-image / numpy and hand-made edge maps."""
import numpy as np
import pytest
import torch

from rgbd_world.eval import boundary_f1, depth_edges, disparity_metrics, psnr, ssim

skm = pytest.importorskip("skimage.metrics")


def test_psnr_matches_skimage_per_frame_mean():
    t = torch.rand(2, 3, 4, 24, 20) * 2 - 1
    p = (t + 0.1 * torch.randn_like(t)).clamp(-1, 1)
    want = np.mean([skm.peak_signal_noise_ratio(t[b, :, f].numpy(), p[b, :, f].numpy(),
                                                data_range=2.0)
                    for b in range(2) for f in range(4)])
    assert psnr(p, t).item() == pytest.approx(want, rel=1e-5)


def test_ssim_matches_skimage_gaussian():
    t = torch.rand(2, 3, 3, 32, 27) * 2 - 1
    p = (t + 0.2 * torch.randn_like(t)).clamp(-1, 1)
    want = np.mean([skm.structural_similarity(
        t[b, :, f].numpy(), p[b, :, f].numpy(), data_range=2.0, channel_axis=0,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for b in range(2) for f in range(3)])
    got = ssim(p, t).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert ssim(t, t).item() == pytest.approx(1.0, abs=1e-9)


def test_disparity_metrics_align_then_match_numpy():
    gt = torch.rand(2, 5, 12, 16, dtype=torch.float64) + 0.2
    gt[1] = gt[1] * 3  # the clips' depth ranges differ
    valid = torch.rand(2, 5, 12, 16) > 0.2
    pred = 0.5 * gt * (1 + 0.2 * torch.randn_like(gt)) + 0.1
    out = disparity_metrics(pred, gt, valid)
    rels, hits = [], []
    for b in range(2):  # each clip alone: one least-squares fit, its own depth range, its pixels
        v = valid[b].numpy()
        a = np.stack([pred[b].numpy()[v], np.ones(v.sum())], 1)
        s, t = np.linalg.lstsq(a, gt[b].numpy()[v], rcond=None)[0]
        gd = 1 / gt[b].numpy()[v]
        pd = np.clip(1 / np.maximum(s * pred[b].numpy()[v] + t, 1e-8), gd.min(), gd.max())
        rels.append(np.mean(np.abs(pd - gd) / gd))
        hits.append(np.mean(np.maximum(pd / gd, gd / pd) < 1.25))
    assert out["abs_rel"].item() == pytest.approx(np.mean(rels), rel=1e-4)
    assert out["delta1"].item() == pytest.approx(np.mean(hits), rel=1e-4)
    exact = disparity_metrics(3 * gt - 0.1, gt, valid)
    far = gt.clone()
    far[0, 0, 0, 0] = 0.2  # a far pixel whose aligned prediction goes negative stays bounded
    wild = disparity_metrics(torch.where(far == 0.2, -5.0, pred), far, valid | (far == 0.2))
    assert wild["abs_rel"].item() < 10
    assert exact["abs_rel"].item() < 1e-5 and exact["delta1"].item() == 1.0


def _step(col, h=12, w=16, near=2.0, far=1.0):
    d = torch.full((1, h, w), far)
    d[..., col:] = near
    return d


def test_depth_edges_relative_threshold():
    d = _step(6)
    e = depth_edges(d, threshold=0.1)
    assert e[0, :, 5:7].all() and e.sum() == 2 * 12
    assert depth_edges(_step(6, near=1.05), threshold=0.1).sum() == 0  # 5% < 10% threshold
    valid = torch.ones_like(d, dtype=torch.bool)
    valid[..., 6] = False
    assert depth_edges(d, valid).sum() == 0  # a pair with an invalid pixel is no edge


def test_boundary_f1_hand_cases():
    gt = _step(6)
    assert boundary_f1(_step(7), gt, align=False)["f1"].item() == 1.0   # 1-pixel tolerance
    far = boundary_f1(_step(10), gt, align=False)
    assert far["precision"].item() == 0.0 and far["f1"].item() == 0.0
    two = _step(6)
    two[..., 12:] = 4.0   # the true edge plus a spurious one
    r = boundary_f1(two, gt, align=False)
    assert r["recall"].item() == 1.0 and r["precision"].item() == 0.5
    assert r["f1"].item() == pytest.approx(2 / 3, rel=1e-6)
    assert boundary_f1(3 * gt + 1, gt)["f1"].item() == 1.0           # alignment first
    flat = torch.rand(1, 12, 16) * 0.01 + 1
    assert boundary_f1(flat, gt, align=False)["f1"].item() == 0.0


@pytest.fixture(scope="module")
def held_out_clips(tmp_path_factory):
    from rgbd_world.data import generate_dataset

    root = tmp_path_factory.mktemp("eval-clips")
    generate_dataset(root, 2, frames=9, height=32, width=32, seed=7, progress=False)
    return root


def test_evaluate_tokenizer_reports_depthcrafter_on_the_exported_disparity(held_out_clips):
    import rgbd_kernels as rk
    from rgbd_world.data import RGBDVideoDataset
    from rgbd_world.eval import evaluate_tokenizer, video_depth_metrics
    from rgbd_world.eval.tokenizer_eval import PROCEDURAL_MAX_DEPTH
    from rgbd_world.pipeline import relative_depth
    from rgbd_world.tokenizer import VideoTokenizer

    torch.manual_seed(0)
    model = VideoTokenizer("tiny", in_channels=4).eval()
    ds = RGBDVideoDataset(held_out_clips, frames=9, size=(32, 32), augment=False)
    got = evaluate_tokenizer(model, ds, max_clips=2, progress=False)
    assert {"abs_rel", "delta1", "boundary_f1", "abs_rel_depthcrafter",
            "delta1_depthcrafter"} <= set(got)
    ours, theirs = [], []
    with torch.no_grad():
        for i in range(2):
            clip = ds[i]
            recon = model(torch.cat([clip["rgb"], clip["disparity"]])[None]).reconstruction
            gt_disp, valid = rk.depth_to_disparity(clip["depth"])
            valid = valid & clip["valid"]
            ours.append(disparity_metrics(recon[:, 3], gt_disp, valid)["abs_rel"].item())
            exported = 1.0 / relative_depth(recon[0, 3])     # what the pipeline writes out
            theirs.append(video_depth_metrics(exported[None], clip["depth"], valid,
                                              max_depth=PROCEDURAL_MAX_DEPTH)["abs_rel"].item())
    assert got["abs_rel"] == pytest.approx(np.mean(ours), rel=1e-5)
    assert got["abs_rel_depthcrafter"] == pytest.approx(np.mean(theirs), rel=1e-5)


def test_evaluate_generation_reports_depthcrafter_on_the_exported_depth(tmp_path):
    from pathlib import Path

    import rgbd_kernels as rk
    from rgbd_world.data import RGBDVideoDataset
    from rgbd_world.eval import video_depth_metrics
    from rgbd_world.eval.generation_eval import evaluate_generation
    from rgbd_world.eval.tokenizer_eval import PROCEDURAL_MAX_DEPTH
    from rgbd_world.pipeline import RGBDPipeline

    root = Path(__file__).resolve().parents[2]
    pipe = RGBDPipeline.from_pretrained(root / "rgbd_world" / "assets" / "tiny-rgbd")
    got = evaluate_generation(pipe, num_clips=1, steps=2, data_dir=tmp_path, text_mode=False)
    d = pipe.defaults
    clip = RGBDVideoDataset(tmp_path, frames=d["num_frames"], size=(d["height"], d["width"]),
                            augment=False)[0]
    video = ((clip["rgb"].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    out = pipe(prompt=clip["caption"], video=video.numpy(), steps=2, seed=0, progress=False)
    _, valid = rk.depth_to_disparity(clip["depth"][0])
    want = video_depth_metrics((1.0 / out.depth)[None], clip["depth"][0][None], valid[None],
                               max_depth=PROCEDURAL_MAX_DEPTH)
    assert got["video_abs_rel_depthcrafter"] == pytest.approx(want["abs_rel"].item(), rel=1e-6)
    assert got["video_delta1_depthcrafter"] == pytest.approx(want["delta1"].item(), rel=1e-6)
    assert {"video_abs_rel", "video_delta1"} <= set(got)


def test_evaluate_tokenizer_teacher_agreement_and_boundary_parts(held_out_clips):
    from rgbd_world.data import RGBDVideoDataset
    from rgbd_world.eval import evaluate_tokenizer
    from rgbd_world.tokenizer import VideoTokenizer, inflate_to_rgbd

    torch.manual_seed(1)
    teacher = VideoTokenizer("tiny").eval()
    ds = RGBDVideoDataset(held_out_clips, frames=9, size=(32, 32), augment=False)
    fresh = evaluate_tokenizer(inflate_to_rgbd(teacher, geometry_channels=4), ds, max_clips=2,
                               progress=False, teacher=teacher)
    # a fresh inflation encodes the RGB channels exactly as its teacher does
    assert fresh["teacher_rel_mse"] < 1e-8 and fresh["teacher_cosine"] > 1 - 1e-6
    other = evaluate_tokenizer(VideoTokenizer("tiny", in_channels=4).eval(), ds, max_clips=2,
                               progress=False, teacher=teacher)
    assert other["teacher_rel_mse"] > 0.1 and other["teacher_cosine"] < 0.9
    for key in ("boundary_precision", "boundary_recall", "boundary_f1"):
        assert 0.0 <= other[key] <= 1.0
