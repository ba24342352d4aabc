"""Stage-1 losses against hand-computed and independent numpy values."""
import numpy as np
import pytest
import torch

from rgbd_world.tokenizer import VideoTokenizer, inflate_to_rgbd
from rgbd_world.tokenizer.losses import (LossWeights, TokenizerLoss, disparity_l1,
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
