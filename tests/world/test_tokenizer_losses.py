"""Stage-1 losses against hand-computed and independent numpy values."""
import numpy as np
import pytest
import torch

from rgbd_world.tokenizer import VideoTokenizer, inflate_to_rgbd
from rgbd_world.tokenizer.losses import (LossWeights, TokenizerLoss, boundary_loss, disparity_l1,
                                         distillation_loss, gradient_matching_loss, rgb_l1)


def _normalize_np(d, v):
    t = np.median(d[v])
    s = np.mean(np.abs(d[v] - t))
    return 0.5 * (d - t) / s


def test_rgb_l1_is_mean_absolute_error():
    p, t = torch.randn(2, 3, 5, 6, 7), torch.randn(2, 3, 5, 6, 7)
    assert rgb_l1(p, t).item() == pytest.approx(np.abs(p.numpy() - t.numpy()).mean(), rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        rgb_l1(p, t[:, :2])


def test_disparity_l1_normalizes_per_frame_on_valid_pixels():
    p = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    t = torch.rand(2, 3, 9, 11, dtype=torch.float64) + 0.1
    valid = torch.rand(2, 3, 9, 11) > 0.3
    t_holes = torch.where(valid, t, torch.nan)  # invalid pixels may hold garbage
    got = disparity_l1(p, t_holes, valid).item()
    errs, n = 0.0, 0
    for idx in np.ndindex(2, 3):
        v = valid[idx].numpy()
        a = _normalize_np(p[idx].numpy(), v)
        b = _normalize_np(t[idx].numpy(), v)
        errs += np.abs(a - b)[v].sum()
        n += v.sum()
    assert got == pytest.approx(errs / n, rel=1e-5)
    # affine invariance in the prediction
    assert disparity_l1(3 * p + 2, t_holes, valid).item() == pytest.approx(got, rel=1e-5)
    assert disparity_l1(p, t, torch.zeros_like(valid)).item() == 0.0


def test_gradient_matching_hand_computed():
    """R = pred - target = column index on a 4x4 frame: scale 1: 12 pairs of |1| over 16 pixels;
    scale 2 (every 2nd pixel): 2 pairs of |2| over 4; scales 4 and 8: one pixel, no pairs."""
    cols = torch.arange(4.0).expand(4, 4)
    target = torch.rand(4, 4) + 1
    pred = target + cols
    loss = gradient_matching_loss(pred[None], target[None], normalize=False)
    assert loss.item() == pytest.approx(12 / 16 + 4 / 4, rel=1e-6)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 0, 1] = False  # drops 2 x-pairs at scale 1 (y-pair differences are 0 anyway)
    loss = gradient_matching_loss(pred[None], target[None], valid, normalize=False)
    assert loss.item() == pytest.approx(10 / 15 + 4 / 4, rel=1e-6)
    # two scales only, and y gradients count too (transpose)
    loss = gradient_matching_loss(pred.T[None], target.T[None], scales=1, normalize=False)
    assert loss.item() == pytest.approx(12 / 16, rel=1e-6)


def test_gradient_matching_is_affine_invariant_and_zero_at_match():
    t = torch.rand(2, 2, 16, 16) + 0.5
    p = t + 0.1 * torch.randn_like(t)
    base = gradient_matching_loss(p, t)
    assert base > 0
    assert gradient_matching_loss(2.5 * p - 1, t).item() == pytest.approx(base.item(), rel=1e-4)
    assert gradient_matching_loss(4 * t + 3, t).item() < 1e-5


def test_distillation_is_zero_for_fresh_inflation_and_mse_otherwise():
    teacher = VideoTokenizer("tiny").eval()
    student = inflate_to_rgbd(teacher, geometry_channels=2).eval()
    x = torch.rand(1, 4, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        z_s = student.encode(x)
    z_t = teacher.encode(x[:, :3]).detach()
    assert distillation_loss(z_s, z_t).item() < 1e-12
    a, b = torch.randn(2, 18, 2, 3, 3), torch.randn(2, 16, 2, 3, 3)
    want = ((a[:, :16].numpy() - b.numpy()) ** 2).mean()
    assert distillation_loss(a, b).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="does not cover"):
        distillation_loss(b[:, :8], a)


def test_tokenizer_loss_weighted_sum_and_teacher():
    teacher = VideoTokenizer("tiny").eval()
    student = inflate_to_rgbd(teacher)
    x = torch.rand(1, 4, 9, 16, 16) * 2 - 1
    x[:, 3] = torch.rand(1, 9, 16, 16) + 0.2
    out = student(x)
    weights = LossWeights(rgb=0.7, disparity=1.3, gradient=0.4, distill=2.0)
    terms = TokenizerLoss(weights)(out.reconstruction, x, student_latent=out.latent,
                                   teacher=teacher)
    want = (0.7 * rgb_l1(out.reconstruction[:, :3], x[:, :3])
            + 1.3 * disparity_l1(out.reconstruction[:, 3], x[:, 3], normalize=False)
            + 0.4 * gradient_matching_loss(out.reconstruction[:, 3], x[:, 3], normalize=False))
    assert set(terms) == {"rgb", "disparity", "gradient", "distill", "total"}
    assert terms["distill"].item() < 1e-10
    assert terms["total"].item() == pytest.approx(want.item(), rel=1e-5)
    terms["total"].backward()
    assert student.decoder.conv_out[1].weight.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_perceptual_needs_local_network(tmp_path):
    with pytest.raises(ValueError, match="nothing is downloaded"):
        TokenizerLoss(LossWeights(perceptual=0.1))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        TokenizerLoss(LossWeights(perceptual=0.1), perceptual=tmp_path / "missing.pt")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    path = tmp_path / "feat.pt"
    torch.jit.script(net).save(str(path))
    loss = TokenizerLoss(LossWeights(perceptual=0.5), perceptual=path)
    x = torch.rand(1, 3, 2, 8, 8) * 2 - 1
    y = x + 0.3 * torch.randn_like(x)
    t_same = loss(x, x)
    t_diff = loss(y, x)
    assert t_same["perceptual"].item() == 0.0 and t_diff["perceptual"].item() > 0
    frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731
    want = (net(frames(y)) - net(frames(x))).abs().mean()
    assert t_diff["perceptual"].item() == pytest.approx(want.item(), rel=1e-5)


def test_disparity_terms_train_a_freshly_inflated_depth_channel():
    """Right after inflation the disparity output is flat; its loss must still give it gradient."""
    student = inflate_to_rgbd(VideoTokenizer("tiny").eval())
    x = torch.rand(1, 4, 9, 16, 16) * 2 - 1
    out = student(x)
    assert out.reconstruction[:, 3].std() < 1e-6  # flat at initialisation
    terms = TokenizerLoss(LossWeights(rgb=0.0, disparity=1.0, gradient=1.0, distill=0.0))(
        out.reconstruction, x)
    terms["total"].backward()
    grads = [p.grad for p in student.decoder.conv_out.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def _boundary_np(p, t, v, thr):
    """Independent loop version of boundary_loss on one (H, W) frame."""
    h, w = t.shape
    edge = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            for di, dj in ((0, 1), (1, 0)):
                a, b = i + di, j + dj
                if a < h and b < w and v[i, j] and v[a, b] and abs(t[a, b] - t[i, j]) > thr:
                    edge[i, j] = edge[a, b] = True
    band = np.zeros_like(edge)
    for i in range(h):
        for j in range(w):
            band[i, j] = v[i, j] and edge[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].any()
    r = np.where(v, p - t, 0.0)
    g, n = 0.0, 0
    for i in range(h):
        for j in range(w):
            for di, dj in ((0, 1), (1, 0)):
                a, b = i + di, j + dj
                if a < h and b < w and v[i, j] and v[a, b] and (band[i, j] or band[a, b]):
                    g += abs(r[a, b] - r[i, j])
                    n += 1
    if not band.any():
        return 0.0
    return np.abs(r[band]).mean() + g / max(n, 1)


def test_boundary_loss_matches_a_loop_version_and_ignores_flat_regions():
    rng = np.random.default_rng(3)
    t = np.zeros((12, 14))
    t[:, 7:] = 1.0                      # one vertical depth edge
    t[2:5, 2:4] = -0.6                  # and a small near box
    p = t + 0.2 * rng.standard_normal(t.shape)
    v = rng.random(t.shape) > 0.1
    got = boundary_loss(torch.tensor(p), torch.tensor(t), torch.tensor(v))
    assert got.item() == pytest.approx(_boundary_np(p, t, v, 0.1), rel=1e-6)
    # errors far from every edge cost nothing; the same error on an edge does
    far = t.copy()
    far[10, 1] += 3.0
    assert boundary_loss(torch.tensor(far), torch.tensor(t)).item() == 0.0
    near = t.copy()
    near[6, 7] += 3.0
    assert boundary_loss(torch.tensor(near), torch.tensor(t)).item() > 0.1
    assert boundary_loss(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)).item() == 0.0


def test_boundary_loss_gradient_sharpens_a_blurred_edge():
    t = torch.zeros(1, 16, 16)
    t[..., 8:] = 1.0
    blurred = torch.nn.functional.avg_pool2d(t[None], 5, 1, 2, count_include_pad=False)[0]
    p = blurred.clone().requires_grad_()
    before = boundary_loss(p, t)
    before.backward()
    with torch.no_grad():
        after = boundary_loss(p - 0.5 * p.grad / p.grad.abs().max(), t)
    assert after < before
    with pytest.raises(ValueError, match="threshold"):
        boundary_loss(p, t, threshold=0.0)


def test_tokenizer_loss_adds_the_boundary_term_when_weighted():
    teacher = VideoTokenizer("tiny").eval()
    student = inflate_to_rgbd(teacher)
    x = torch.rand(1, 4, 9, 16, 16) * 2 - 1
    out = student(x)
    plain = TokenizerLoss(LossWeights(distill=0.0))(out.reconstruction, x)
    edged = TokenizerLoss(LossWeights(distill=0.0, boundary=2.0))(out.reconstruction, x)
    assert "boundary" not in plain and "boundary" in edged
    want = plain["total"] + 2.0 * boundary_loss(out.reconstruction[:, 3], x[:, 3])
    assert edged["total"].item() == pytest.approx(want.item(), rel=1e-5)
