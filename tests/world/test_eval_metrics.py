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
