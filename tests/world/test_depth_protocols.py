"""video_depth_metrics: the DepthCrafter and Marigold protocols against hand-computed values and
an independent numpy implementation of their definitions, on synthetic and real (Middlebury)
ground truth; batches never pool clips; argument checks."""
import math

import numpy as np
import pytest
import torch

from rgbd_world.eval import PROTOCOLS, disparity_metrics, video_depth_metrics


# ---- independent numpy implementations, written from the protocols' definitions ----

def _frame_metrics(depth, gt, valid):
    """Per-frame AbsRel / delta1 averaged over frames with valid pixels ((T, H, W) arrays)."""
    rels, hits = [], []
    for f in range(gt.shape[0]):
        v = valid[f]
        if not v.any():
            continue
        p, g = depth[f][v], gt[f][v]
        rels.append(np.mean(np.abs(p - g) / g))
        hits.append(np.mean(np.maximum(p / g, g / p) < 1.25))
    return float(np.mean(rels)), float(np.mean(hits))


def np_depthcrafter(pred, gt, min_depth=1e-3, max_depth=np.inf, valid=None):
    """One video (T, H, W): clip pred, one lstsq to 1/(gt+1e-8), clip, invert, clip, per frame."""
    v = (gt > min_depth) & (gt < max_depth)
    if valid is not None:
        v &= valid
    p = np.clip(pred.astype(np.float64), 1e-3, None)
    a = np.stack([p[v], np.ones(v.sum())], 1)
    s, t = np.linalg.lstsq(a, 1.0 / (gt[v].astype(np.float64) + 1e-8), rcond=None)[0]
    depth = np.clip(1.0 / np.clip(s * p + t, 1e-3, None), min_depth, max_depth)
    return (*_frame_metrics(depth, gt.astype(np.float64), v), s, t)


def np_marigold(pred, gt, min_depth=1e-3, max_depth=np.inf, valid=None):
    """Every frame an image: lstsq to 1/gt where gt, pred > 0; clip, invert, clip; mean."""
    pred = pred.astype(np.float64)
    gt = gt.astype(np.float64)
    v = (gt > min_depth) & (gt < max_depth)
    if valid is not None:
        v &= valid
    depth = np.zeros_like(pred)
    scales, shifts = [], []
    for f in range(pred.shape[0]):
        fit = v[f] & (gt[f] > 0) & (pred[f] > 0)
        a = np.stack([pred[f][fit], np.ones(fit.sum())], 1)
        s, t = np.linalg.lstsq(a, 1.0 / gt[f][fit], rcond=None)[0]
        d = 1.0 / np.clip(s * pred[f] + t, 1e-3, None)
        depth[f] = np.clip(np.clip(d, min_depth, max_depth), 1e-6, None)
        scales.append(s)
        shifts.append(t)
    return (*_frame_metrics(depth, gt, v), np.array(scales), np.array(shifts))


NP_REFERENCE = {"depthcrafter": np_depthcrafter, "marigold": np_marigold}


# ---- hand-computed cases ----

def _hand_clip():
    """One clip, 2 frames of 1x2: gt depth 1, 1/2 | 1/3, invalid; pred disparity 1, 2 | 4, 100."""
    gt = torch.tensor([[[[1.0, 0.5]], [[1 / 3, 0.0]]]], dtype=torch.float64)
    pred = torch.tensor([[[[1.0, 2.0]], [[4.0, 100.0]]]], dtype=torch.float64)
    return pred, gt


def test_depthcrafter_hand_case_one_fit_per_video_metrics_per_frame():
    pred, gt = _hand_clip()
    r = video_depth_metrics(pred, gt, protocol="depthcrafter")
    # lstsq of p = (1, 2, 4) to 1/gt = (1, 2, 3): s = cov/var = 3 / (14/3) = 9/14,
    # t = 2 - s * 7/3 = 1/2
    assert r["scale"].item() == pytest.approx(9 / 14, rel=1e-7)
    assert r["shift"].item() == pytest.approx(0.5, rel=1e-7)
    # aligned 16/14, 25/14, 43/14 -> depth 14/16, 14/25, 14/43; relative errors 1/8, 3/25, 1/43
    frame0, frame1 = (1 / 8 + 3 / 25) / 2, 1 / 43
    assert r["abs_rel"].item() == pytest.approx((frame0 + frame1) / 2, rel=1e-6)  # per frame
    assert r["abs_rel"].item() != pytest.approx((1 / 8 + 3 / 25 + 1 / 43) / 3, rel=1e-3)
    assert r["delta1"].item() == 1.0
    assert r["valid"].tolist() == [[[[True, True]], [[True, False]]]]
    want = torch.tensor([14 / 16, 14 / 25, 14 / 43], dtype=torch.float64)
    torch.testing.assert_close(r["pred_depth"][r["valid"]], want, rtol=1e-6, atol=0)


def test_marigold_hand_case_one_fit_per_frame_minimum_norm():
    pred, gt = _hand_clip()
    r = video_depth_metrics(pred, gt, protocol="marigold")
    # frame 0: two points, exact fit 1/gt = p; frame 1: one point p = 4 -> 3, minimum-norm
    # solution (s, t) = 3 (4, 1) / 17 as numpy's lstsq gives
    torch.testing.assert_close(r["scale"], torch.tensor([[1.0, 12 / 17]], dtype=torch.float64))
    torch.testing.assert_close(r["shift"], torch.tensor([[0.0, 3 / 17]], dtype=torch.float64),
                               atol=1e-12, rtol=0)
    s, t = np.linalg.lstsq(np.array([[4.0, 1.0]]), np.array([3.0]), rcond=None)[0]
    assert (r["scale"][0, 1].item(), r["shift"][0, 1].item()) == pytest.approx((s, t), rel=1e-12)
    assert r["abs_rel"].item() == pytest.approx(0.0, abs=1e-12) and r["delta1"].item() == 1.0


def test_delta1_and_abs_rel_average_frames_not_pixels():
    # gt depth 1 everywhere; frame 0 has 1 valid pixel off by 2x, frame 1 has 3 exact pixels.
    # With an exact fit on the exact pixels (scale 1, shift 0 is forced by two distinct values)
    gt = torch.ones(1, 2, 2, 2, dtype=torch.float64)
    valid = torch.tensor([[[[True, False], [False, False]], [[True, True], [True, False]]]])
    pred = torch.ones_like(gt)
    out = video_depth_metrics(pred, gt, valid, protocol="marigold")
    assert out["abs_rel"].item() == pytest.approx(0.0, abs=1e-12)
    gt2 = gt.clone()
    gt2[0, 0, 0, 0] = 2.0  # frame 0's only pixel; its own (minimum-norm) fit cannot be exact
    out = video_depth_metrics(pred, gt2, valid, protocol="marigold")
    # frame 0: c = 1, mean target 1/2 -> s = t = 1/4, aligned 1/2, depth 2: exact again
    assert out["abs_rel"].item() == pytest.approx(0.0, abs=1e-12)
    out = video_depth_metrics(pred, gt2, valid, protocol="depthcrafter")
    # one fit over 4 pixels with a single distinct prediction 1: minimum norm, mean target
    # (1/2 + 3) / 4 = 7/8 -> s = t = 7/16, aligned 7/8, depth 8/7 everywhere
    d = 8 / 7
    frame0 = abs(d - 2) / 2
    frame1 = abs(d - 1)
    assert out["abs_rel"].item() == pytest.approx((frame0 + frame1) / 2, rel=1e-6)
    # delta1: frame 0 misses (ratio 1.75), frame 1 hits (8/7 < 1.25): per-frame mean 0.5, not 3/4
    assert out["delta1"].item() == pytest.approx(0.5)


# ---- clipping ----

def test_depthcrafter_clips_prediction_before_the_fit():
    torch.manual_seed(0)
    gt = torch.rand(1, 3, 6, 7, dtype=torch.float64) * 4 + 1
    pred = 1 / gt + 0.05 * torch.randn_like(gt)
    pred[0, 0, :2] = -3.0  # non-positive predictions
    a = video_depth_metrics(pred, gt, protocol="depthcrafter")
    b = video_depth_metrics(pred.clamp_min(1e-3), gt, protocol="depthcrafter")
    for k in ("abs_rel", "delta1", "scale", "shift", "pred_depth"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # Marigold instead leaves them out of its fit
    m = video_depth_metrics(pred, gt, protocol="marigold")
    keep = pred[0, 0] > 0
    a0 = np.stack([pred[0, 0][keep].numpy(), np.ones(int(keep.sum()))], 1)
    s, t = np.linalg.lstsq(a0, 1 / gt[0, 0][keep].numpy(), rcond=None)[0]
    assert (m["scale"][0, 0].item(), m["shift"][0, 0].item()) == pytest.approx((s, t), rel=1e-9)


@pytest.mark.parametrize("protocol", ["depthcrafter", "marigold"])
def test_aligned_disparity_floor_then_depth_range(protocol):
    # the known pixels fit exactly (1/gt = pred - 0.3); the unknown 4th (gt 0) has pred 0.1:
    # aligned -0.2, clipped to 1e-3, depth 1000
    gt = torch.tensor([[[[1.0, 2.0, 4.0, 0.0]]]], dtype=torch.float64)
    pred = torch.tensor([[[[1.3, 0.8, 0.55, 0.1]]]], dtype=torch.float64)
    r = video_depth_metrics(pred, gt, protocol=protocol)
    assert r["pred_depth"].flatten().tolist() == pytest.approx([1, 2, 4, 1000], rel=1e-7)
    assert r["valid"].flatten().tolist() == [True, True, True, False]
    # gt < max_depth strictly; predicted depth clipped to max_depth
    r = video_depth_metrics(pred, gt, protocol=protocol, max_depth=4.0)
    assert r["valid"].flatten().tolist() == [True, True, False, False]
    assert r["pred_depth"].flatten().tolist() == pytest.approx([1, 2, 4, 4], rel=1e-7)
    r = video_depth_metrics(pred, gt, protocol=protocol, max_depth=3.0)
    assert r["pred_depth"].flatten().tolist() == pytest.approx([1, 2, 3, 3], rel=1e-7)
    # gt > min_depth strictly; predicted depth clipped to min_depth
    r = video_depth_metrics(pred, gt, protocol=protocol, min_depth=1.0)
    assert r["valid"].flatten().tolist() == [False, True, True, False]
    r = video_depth_metrics(pred, gt, protocol=protocol, min_depth=1.5)
    assert r["pred_depth"].flatten().tolist() == pytest.approx([1.5, 2, 4, 1000], rel=1e-7)
    assert r["abs_rel"].item() == pytest.approx(0.0, abs=1e-7)


# ---- the fit ----

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fit_recovers_known_scale_and_shift(protocol):
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(2, 4, 9, 11, generator=g, dtype=torch.float64) * 9 + 1
    scale, shift = torch.tensor([2.5, 0.04], dtype=torch.float64), torch.tensor([-0.3, -0.05],
                                                                               dtype=torch.float64)
    # 1/gt = scale * pred + shift exactly, with pred positive
    pred = (1 / gt - shift.view(2, 1, 1, 1)) / scale.view(2, 1, 1, 1)
    assert (pred > 0).all()
    r = video_depth_metrics(pred.float() if protocol == "rgbd" else pred, gt, protocol=protocol)
    tol = 1e-4 if protocol == "rgbd" else 1e-6  # ours fits in float32
    s, t = r["scale"], r["shift"]
    if protocol == "marigold":  # one fit per frame: every frame of a clip has the same one here
        s, t = s[:, 0], t[:, 0]
    torch.testing.assert_close(s, scale, rtol=tol, atol=0)
    torch.testing.assert_close(t, shift, rtol=tol, atol=tol)
    assert r["abs_rel"].item() < tol and r["delta1"].item() == 1.0


def test_fit_is_exact_far_from_the_origin():
    # predictions 1e6 + small values, 1/gt = 100 pred - 1e8 exactly: the centred float64 fit
    # recovers it (numpy's lstsq with its default rank cutoff sees [pred, 1] as rank 1 here and
    # returns the minimum-norm answer instead)
    gt = torch.linspace(1, 4, 40, dtype=torch.float64).view(1, 2, 4, 5)
    pred = 1e6 + (1 / gt) * 1e-2
    for protocol in ("marigold", "depthcrafter"):
        r = video_depth_metrics(pred, gt, protocol=protocol)
        assert r["abs_rel"].item() < 1e-6
        assert r["scale"].flatten()[0].item() == pytest.approx(100.0, rel=1e-6)


# ---- batches ----

def _two_different_clips():
    g = torch.Generator().manual_seed(2)
    gt = torch.rand(2, 3, 10, 12, generator=g, dtype=torch.float64)
    gt[0] = gt[0] * 3 + 1        # near clip
    gt[1] = gt[1] * 40 + 5       # far clip with a different depth range
    valid = torch.rand(2, 3, 10, 12, generator=g) > 0.2
    valid[1, :, :5] = False      # and fewer valid pixels
    pred = (1 / gt) * (1 + 0.3 * torch.randn(gt.shape, generator=g, dtype=torch.float64))
    pred[1] = pred[1] * 7 - 0.01
    return pred, gt, valid


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_batch_of_two_clips_equals_the_clips_evaluated_apart(protocol):
    pred, gt, valid = _two_different_clips()
    both = video_depth_metrics(pred, gt, valid, protocol=protocol)
    apart = [video_depth_metrics(pred[i:i + 1], gt[i:i + 1], valid[i:i + 1], protocol=protocol)
             for i in range(2)]
    for key in ("abs_rel", "delta1"):
        per_clip = torch.stack([a[key] for a in apart])
        torch.testing.assert_close(both[key + "_per_clip"], per_clip, rtol=1e-12, atol=0)
        torch.testing.assert_close(both[key], per_clip.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(both["pred_depth"], torch.cat([a["pred_depth"] for a in apart]),
                               rtol=1e-12, atol=0)


def test_disparity_metrics_batch_equals_clips_apart():
    # fails on the old disparity_metrics, which pooled pixels and the depth range over the batch
    pred, gt, valid = _two_different_clips()
    both = disparity_metrics(pred, 1 / gt, valid)
    apart = [disparity_metrics(pred[i:i + 1], 1 / gt[i:i + 1], valid[i:i + 1]) for i in range(2)]
    for key in ("abs_rel", "delta1"):
        want = (apart[0][key] + apart[1][key]) / 2
        assert both[key].item() == pytest.approx(want.item(), rel=1e-6)


def test_rgbd_protocol_is_disparity_metrics_per_clip():
    pred, gt, valid = _two_different_clips()
    ours = video_depth_metrics(pred, gt, valid, protocol="rgbd")
    dm = disparity_metrics(pred, 1 / gt, valid)
    assert ours["abs_rel"].item() == pytest.approx(dm["abs_rel"].item(), rel=1e-6)
    assert ours["delta1"].item() == pytest.approx(dm["delta1"].item(), rel=1e-6)
    # ours differs from the published protocols on the same inputs
    dc = video_depth_metrics(pred, gt, valid, protocol="depthcrafter")
    assert abs(dc["abs_rel"].item() - ours["abs_rel"].item()) > 1e-4


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_clip_without_valid_pixels_is_nan_and_left_out_of_the_mean(protocol):
    pred, gt, valid = _two_different_clips()
    valid[1] = False
    r = video_depth_metrics(pred, gt, valid, protocol=protocol)
    assert math.isnan(r["abs_rel_per_clip"][1].item())
    assert math.isnan(r["delta1_per_clip"][1].item())
    assert r["abs_rel"].item() == pytest.approx(r["abs_rel_per_clip"][0].item(), rel=1e-12)
    none = video_depth_metrics(pred, gt, torch.zeros_like(valid), protocol=protocol)
    assert math.isnan(none["abs_rel"].item()) and math.isnan(none["delta1"].item())


@pytest.mark.parametrize("protocol", ["depthcrafter", "marigold"])
def test_non_finite_prediction_on_a_valid_pixel_gives_nan_not_a_number(protocol):
    pred, gt, valid = _two_different_clips()
    pred[0, 1, 3, 3] = math.nan
    valid[0, 1, 3, 3] = True
    r = video_depth_metrics(pred, gt, valid, protocol=protocol)
    assert math.isnan(r["abs_rel"].item()) and math.isnan(r["abs_rel_per_clip"][0].item())
    assert not math.isnan(r["abs_rel_per_clip"][1].item())


# ---- against the numpy implementations of the definitions ----

@pytest.mark.parametrize("protocol", ["depthcrafter", "marigold"])
def test_random_clips_match_numpy_definition(protocol):
    pred, gt, valid = _two_different_clips()
    gt[0, 0, 0, :4] = torch.tensor([0.0, math.inf, math.nan, 60.0])  # invalid / out of range
    r = video_depth_metrics(pred, gt, valid, protocol=protocol, max_depth=40.0)
    for i in range(2):
        rel, d1, s, t = NP_REFERENCE[protocol](pred[i].numpy(), gt[i].numpy(), 1e-3, 40.0,
                                               valid[i].numpy())
        assert r["abs_rel_per_clip"][i].item() == pytest.approx(rel, rel=1e-9)
        assert r["delta1_per_clip"][i].item() == pytest.approx(d1, rel=1e-12)
        np.testing.assert_allclose(r["scale"][i].numpy(), s, rtol=1e-9)
        np.testing.assert_allclose(r["shift"][i].numpy(), t, rtol=1e-9, atol=1e-12)


def _middlebury_clip(frames=4, seed=0):
    """Real ground truth: scikit-image's Middlebury motorcycle disparity (inf = unknown), every
    4th pixel, shifted and rescaled a little per frame -> depth 100 / disparity (0 = unknown)."""
    data = pytest.importorskip("skimage.data")
    disp = data.stereo_motorcycle()[2][::4, ::4].astype(np.float64)
    rng = np.random.default_rng(seed)
    gt, pred = [], []
    for f in range(frames):
        d = np.roll(disp, 3 * f, axis=1) * (1 + 0.05 * f)
        depth = np.where(np.isfinite(d), 100.0 / d, 0.0)
        p = 0.02 * np.where(np.isfinite(d), d, 30.0) * (1 + 0.15 * rng.standard_normal(d.shape))
        p = p + 0.05 + 0.02 * f                             # a drifting shift
        p[rng.random(d.shape) < 0.02] = -0.5                # some non-positive predictions
        gt.append(depth)
        pred.append(p)
    return np.stack(pred), np.stack(gt)


@pytest.mark.parametrize("protocol", ["depthcrafter", "marigold"])
def test_middlebury_clip_matches_numpy_definition(protocol):
    p0, g0 = _middlebury_clip(seed=0)
    p1, g1 = _middlebury_clip(seed=1)
    assert (g0 == 0).mean() > 0.05 and (g0 > 10).mean() > 0.01  # unknown and far pixels exist
    crop = np.zeros(g0.shape, bool)
    crop[:, 5:-5, 8:-8] = True
    pred = torch.from_numpy(np.stack([p0, p1]))
    gt = torch.from_numpy(np.stack([g0, g1])).float()  # depth maps usually come as float32
    valid = torch.from_numpy(np.stack([crop, crop]))
    r = video_depth_metrics(pred, gt, valid, protocol=protocol, max_depth=10.0)
    refs = [NP_REFERENCE[protocol](p, g.astype(np.float32), 1e-3, 10.0, crop)
            for p, g in ((p0, g0), (p1, g1))]
    for i, (rel, d1, s, t) in enumerate(refs):
        assert r["abs_rel_per_clip"][i].item() == pytest.approx(rel, rel=1e-9)
        assert r["delta1_per_clip"][i].item() == pytest.approx(d1, rel=1e-12)
        np.testing.assert_allclose(r["scale"][i].numpy(), s, rtol=1e-9)
        np.testing.assert_allclose(r["shift"][i].numpy(), t, rtol=1e-9)
    assert r["abs_rel"].item() == pytest.approx((refs[0][0] + refs[1][0]) / 2, rel=1e-9)
    assert 0.01 < r["abs_rel"].item() < 1 and 0 < r["delta1"].item() < 1  # a real, imperfect fit


# ---- argument checks ----

@pytest.mark.parametrize("kwargs, exc, words", [
    ({"protocol": "midas"}, ValueError, ["protocol", "'midas'"]),
    ({"protocol": None}, ValueError, ["protocol", "None"]),
    ({"min_depth": "a"}, TypeError, ["min_depth", "'a'"]),
    ({"min_depth": math.nan}, ValueError, ["min_depth", "nan"]),
    ({"min_depth": -1.0}, ValueError, ["min_depth", "-1.0"]),
    ({"min_depth": True}, TypeError, ["min_depth", "True"]),
    ({"max_depth": 1e-3}, ValueError, ["max_depth", "0.001"]),
    ({"max_depth": "10"}, TypeError, ["max_depth", "'10'"]),
    ({"valid": torch.ones(1, 2, 3, 4)}, TypeError, ["valid", "float32"]),
    ({"valid": torch.ones(1, 2, 3, 5, dtype=torch.bool)}, ValueError, ["valid", "(1, 2, 3, 5)"]),
])
def test_bad_arguments_name_argument_and_value(kwargs, exc, words):
    pred, gt = torch.rand(1, 2, 3, 4) + 0.1, torch.rand(1, 2, 3, 4) + 1
    with pytest.raises(exc) as info:
        video_depth_metrics(pred, gt, **kwargs)
    for w in words:
        assert w in str(info.value)


def test_bad_inputs_name_argument_and_shape():
    with pytest.raises(ValueError, match=r"pred_disparity must be \(B, T, H, W\).*\(2, 3, 4\)"):
        video_depth_metrics(torch.rand(2, 3, 4), torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match=r"pred_disparity must not be empty.*\(1, 2, 0, 4\)"):
        video_depth_metrics(torch.rand(1, 2, 0, 4), torch.rand(1, 2, 0, 4))
    with pytest.raises(ValueError, match=r"same shape.*\(1, 2, 3, 4\) and \(1, 2, 3, 5\)"):
        video_depth_metrics(torch.rand(1, 2, 3, 4), torch.rand(1, 2, 3, 5))
    with pytest.raises(TypeError, match="gt_depth must be a floating-point tensor.*int64"):
        video_depth_metrics(torch.rand(1, 2, 3, 4), torch.ones(1, 2, 3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="pred_disparity must be a torch.Tensor, got ndarray"):
        video_depth_metrics(np.ones((1, 2, 3, 4)), torch.rand(1, 2, 3, 4))
