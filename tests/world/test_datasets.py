"""RGB-D datasets: shards, readers for every format, transforms, bad data, workers, real data."""
import argparse
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from rgbd_kernels import align_scale_shift
from rgbd_world.data import readers
from rgbd_world.data_commands import add_make_data_parser
from rgbd_world.data.dataset import BadSampleWarning, RGBDVideoDataset
from rgbd_world.eval.geometry import reprojection_errors
from rgbd_world.data.readers import find_clips, write_dpt, write_png16, write_sintel_cam
from rgbd_world.data.shards import generate_dataset
from rgbd_world.data.synthetic import render, sample_scene


def dead_pid() -> int:
    """The pid of a process that has exited (a killed writer's temporary carries one)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    torch.set_num_threads(1)
    generate_dataset(out, num_clips=4, frames=11, height=32, width=48, seed=3,
                     clips_per_shard=2, progress=False)
    return out


def _valid_stats(sample):
    d = sample["disparity"][sample["valid"]].double()
    med = d.median().item()  # lower middle; fine for a tolerance check
    return med, (d - d.median()).abs().mean().item()


def test_dataset_keys_shapes_ranges(shards):
    ds = RGBDVideoDataset(shards, frames=9, size=(24, 40))
    assert len(ds) == 4 and ds.num_skipped == 0
    s = ds[1]
    assert s["rgb"].shape == (3, 9, 24, 40) and s["rgb"].dtype == torch.float32
    for key in ("disparity", "valid", "depth"):
        assert s[key].shape == (1, 9, 24, 40), key
    assert s["valid"].dtype == torch.bool
    assert s["K"].shape == (9, 3, 3) and s["poses"].shape == (9, 4, 4)
    assert -1 <= s["rgb"].min() < -0.3 and 0.3 < s["rgb"].max() <= 1
    med, mad = _valid_stats(s)
    assert abs(med) < 0.02 and mad == pytest.approx(0.5, abs=0.01)
    assert torch.equal(s["valid"], s["depth"] > 0) and s["valid"].float().mean() > 0.5
    assert (s["disparity"][~s["valid"]] == 0).all()
    # disparity is 1/depth, normalized: undo it
    back = s["disparity"] * 2 * s["disparity_scale"] + s["disparity_shift"]
    torch.testing.assert_close(back[s["valid"]], 1 / s["depth"][s["valid"]], rtol=1e-4, atol=1e-6)
    meta = json.loads(str(np.load(s["source"].split("[")[0])["meta"]))
    assert s["caption"] in [c["caption"] for c in meta["clips"]] and len(s["caption"]) > 20
    assert s["has_poses"] and s["frame_indices"].tolist() == list(
        range(s["frame_indices"][0], s["frame_indices"][0] + 9))


def test_frames_must_be_one_plus_8k(shards):
    with pytest.raises(ValueError, match="1 \\+ 8"):
        RGBDVideoDataset(shards, frames=8, size=(24, 40))


def test_temporal_crops_random_or_first(shards):
    ds = RGBDVideoDataset(shards, frames=9, size=(24, 40))
    starts = {int(ds[0]["frame_indices"][0]) for _ in range(12)}
    assert starts <= {0, 1, 2} and len(starts) >= 2
    fixed = RGBDVideoDataset(shards, frames=9, size=(24, 40), augment=False)
    assert {int(fixed[0]["frame_indices"][0]) for _ in range(3)} == {0}


def test_flip_and_crop_keep_geometry(tmp_path):
    """Resize, random crop and flip adjust K and poses so depth still reprojects exactly."""
    scene = sample_scene(21, 9, num_objects=4)
    for obj in scene["objects"]:
        obj["motion"] = {"type": "static"}
    scene["camera"]["motion"] = {"type": "orbit", "direction": "left", "rate": 0.04}
    clip = render(scene, 9, 36, 52)
    _write_folder_clip(tmp_path / "c", clip.rgb.numpy(), clip.depth.numpy(), npy=True,
                       K=clip.K.numpy(), poses=clip.poses.numpy())
    ds = RGBDVideoDataset(tmp_path, frames=9, size=(40, 56), flip_prob=1.0, format="folder")
    s = ds[0]
    assert s["flipped"] and s["K"][0, 0, 0] > clip.K[0, 0]   # upscaled to cover 40x56
    assert torch.allclose(torch.linalg.det(s["poses"][:, :3, :3]), torch.ones(9), atol=1e-5)
    for i, j in ((0, 1), (3, 5)):
        rel, shift = reprojection_errors(s["depth"][0], s["K"], s["poses"], i, j)
        assert shift > 0.5 and (rel < 2e-2).float().mean() > 0.85, (i, j)
    # wrong poses break the geometry (the check can fail)
    rel, _ = reprojection_errors(s["depth"][0], s["K"], s["poses"].flip(0), 0, 8)
    assert (rel < 2e-2).float().mean() < 0.5
    # same random draws: the flipped sample mirrors the unflipped one
    torch.manual_seed(5)
    a = RGBDVideoDataset(tmp_path, frames=9, size=(40, 56), flip_prob=1.0)[0]
    torch.manual_seed(5)
    b = RGBDVideoDataset(tmp_path, frames=9, size=(40, 56), flip_prob=0.0)[0]
    assert torch.equal(a["rgb"], b["rgb"].flip(-1)) and torch.equal(a["depth"], b["depth"].flip(-1))
    torch.testing.assert_close(a["K"][:, 0, 2], 56 - b["K"][:, 0, 2])


# ----------------------------------------------------------------------------- writers

def _write_rgb(path, frame):
    Image.fromarray((np.asarray(frame) * 255 + 0.5).astype(np.uint8)
                    if np.asarray(frame).dtype != np.uint8 else np.asarray(frame)).save(path)


def _write_folder_clip(d, rgb, depth, npy=False, scale=0.001, K=None, poses=None, caption=None):
    (d / "frames").mkdir(parents=True)
    (d / "depth").mkdir()
    for t in range(len(rgb)):
        _write_rgb(d / "frames" / f"{t:04d}.png", rgb[t])
        if npy:
            np.save(d / "depth" / f"{t:04d}.npy", np.asarray(depth[t], np.float32))
        else:
            z = np.nan_to_num(np.asarray(depth[t], np.float64) / scale, nan=0, posinf=0)
            write_png16(d / "depth" / f"{t:04d}.png", np.round(z).clip(0, 65535).astype(np.uint16))
    if K is not None:
        np.savetxt(d / "intrinsics.txt", np.asarray(K).reshape(3, 3))
    if poses is not None:
        np.save(d / "poses.npy", np.asarray(poses, np.float32))
    if caption:
        (d / "caption.txt").write_text(caption)


def _frames(T=3, H=10, W=14, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 40.0, (T, H, W)).astype(np.float32)
    return rgb, depth


def _random_poses(T, seed=0):
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (T, 1, 1))
    for t in range(T):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        poses[t, :3, :3] = q * np.sign(np.linalg.det(q))
        poses[t, :3, 3] = rng.normal(size=3)
    return poses


def test_folder_reader_round_trip_png16_and_npy(tmp_path):
    rgb, depth = _frames()
    depth[0, 0, 0] = 0  # a hole
    _write_folder_clip(tmp_path / "png", rgb, depth, caption="a test clip",
                       K=np.array([[20, 0, 7], [0, 21, 5], [0, 0, 1.0]]))
    _write_folder_clip(tmp_path / "npy", rgb, depth, npy=True, poses=_random_poses(3))
    clips, problems = find_clips(tmp_path, "auto")
    assert not problems and len(clips) == 2
    by_name = {os.path.basename(c.source): c for c in clips}
    a, b = by_name["npy"].read([0, 1, 2]), by_name["png"].read([2, 0])
    assert np.array_equal(a.rgb, rgb) and np.array_equal(b.rgb, rgb[[2, 0]])
    np.testing.assert_array_equal(np.nan_to_num(a.depth), np.where(depth == 0, 0, depth))
    np.testing.assert_allclose(np.nan_to_num(b.depth), np.round(depth[[2, 0]] * 1000) / 1000,
                               atol=1e-6)
    assert np.isnan(a.depth[0, 0, 0]) and np.isnan(b.depth[1, 0, 0])
    assert b.caption == "a test clip" and b.K[0, 0, 0] == 20 and b.poses is None
    np.testing.assert_allclose(a.poses, _random_poses(3), atol=1e-6)
    assert a.K[0, 0, 0] == 14  # default focal max(H, W)


def test_vkitti2_reader_round_trip(tmp_path):
    rgb, depth = _frames(T=3, H=8, W=12, seed=1)
    base = tmp_path / "Scene02" / "fog"
    rgb_dir, depth_dir = base / "frames/rgb/Camera_0", base / "frames/depth/Camera_0"
    rgb_dir.mkdir(parents=True)
    depth_dir.mkdir(parents=True)
    cm = np.round(depth * 100).astype(np.uint16)
    cm[1, 2, 3] = 65535  # sky
    poses = _random_poses(3, seed=2)
    w2c = np.linalg.inv(poses)
    intr, extr = ["frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"], ["frame cameraID r..."]
    for t in range(3):
        _write_rgb(rgb_dir / f"rgb_{t:05d}.png", rgb[t])
        write_png16(depth_dir / f"depth_{t:05d}.png", cm[t])
        for cam in (0, 1):
            intr.append(f"{t} {cam} {700 + t} {701 + t} 6.5 4.0")
            extr.append(f"{t} {cam} " + " ".join(f"{v:.9f}" for v in w2c[t].reshape(16)))
    (base / "intrinsic.txt").write_text("\n".join(intr))
    (base / "extrinsic.txt").write_text("\n".join(extr))
    assert readers.detect_format(tmp_path) == "vkitti2"
    (clip,), problems = find_clips(tmp_path)
    raw = clip.read([0, 1, 2])
    assert not problems and np.array_equal(raw.rgb, rgb)
    np.testing.assert_allclose(np.nan_to_num(raw.depth), np.where(cm == 65535, 0, cm / 100),
                               rtol=1e-6)
    assert np.isnan(raw.depth[1, 2, 3])
    assert raw.K[2, 0, 0] == 702 and raw.K[2, 1, 1] == 703 and raw.K[0, 0, 2] == 6.5
    np.testing.assert_allclose(raw.poses, poses, atol=1e-5)
    assert "fog" in raw.caption


def test_tartanair_reader_round_trip(tmp_path):
    rgb, depth = _frames(T=2, H=8, W=12, seed=3)
    base = tmp_path / "abandonedfactory" / "Easy" / "P001"
    (base / "image_left").mkdir(parents=True)
    (base / "depth_left").mkdir()
    for t in range(2):
        _write_rgb(base / "image_left" / f"{t:06d}_left.png", rgb[t])
        np.save(base / "depth_left" / f"{t:06d}_left_depth.npy", depth[t])
    # frame 0: identity (camera looks north = world x); frame 1: yaw 90 deg about NED z (down)
    s = np.sqrt(0.5)
    np.savetxt(base / "pose_left.txt", [[1, 2, 3, 0, 0, 0, 1], [0, 0, 0, 0, 0, s, s]])
    (clip,), problems = find_clips(tmp_path)
    raw = clip.read([0, 1])
    assert not problems and np.array_equal(raw.rgb, rgb)
    np.testing.assert_array_equal(raw.depth, depth)
    np.testing.assert_allclose(raw.poses[0, :3, 3], [1, 2, 3])
    # OpenCV axes: forward (z) = north, right (x) = east, down (y) = down
    np.testing.assert_allclose(raw.poses[0, :3, :3], [[0, 0, 1], [1, 0, 0], [0, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(raw.poses[1, :3, 2], [0, 1, 0], atol=1e-6)  # now facing east
    assert raw.K[0, 0, 0] == 320


def test_sintel_reader_round_trip_and_truncation(tmp_path):
    rgb, depth = _frames(T=2, H=8, W=12, seed=4)
    split = tmp_path / "training"
    for sub in ("depth/alley_1", "final/alley_1", "camdata_left/alley_1"):
        (split / sub).mkdir(parents=True)
    poses = _random_poses(2, seed=5)
    for t in range(2):
        _write_rgb(split / "final/alley_1" / f"frame_{t + 1:04d}.png", rgb[t])
        write_dpt(split / "depth/alley_1" / f"frame_{t + 1:04d}.dpt", depth[t])
        write_sintel_cam(split / "camdata_left/alley_1" / f"frame_{t + 1:04d}.cam",
                         np.array([[30.0 + t, 0, 6], [0, 30, 4], [0, 0, 1]]),
                         np.linalg.inv(poses[t])[:3])
    (clip,), problems = find_clips(tmp_path)
    raw = clip.read([0, 1])
    assert not problems and np.array_equal(raw.rgb, rgb)
    np.testing.assert_array_equal(raw.depth, depth)
    np.testing.assert_allclose(raw.poses, poses, atol=1e-5)
    assert raw.K[1, 0, 0] == 31
    path = split / "depth/alley_1/frame_0002.dpt"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="frame_0002.dpt.*truncated"):
        readers.read_dpt(path)


# ----------------------------------------------------------------------------- bad data

def _bad_data_tree(root):
    rgb, depth = _frames(T=9, H=12, W=16, seed=6)
    for name in ("good1", "good2", "missing", "truncated", "mismatch", "invalid"):
        _write_folder_clip(root / name, rgb, depth if name != "invalid" else 0 * depth)
    os.remove(root / "mismatch" / "depth" / "0008.png")          # 9 RGB vs 8 depth
    png = root / "truncated" / "frames" / "0004.png"
    png.write_bytes(png.read_bytes()[:40])


def test_bad_samples_are_skipped_warned_and_counted(tmp_path):
    _bad_data_tree(tmp_path)
    with pytest.warns(BadSampleWarning, match="mismatch.*frame-count mismatch"):
        ds = RGBDVideoDataset(tmp_path, frames=9, size=(8, 8))
    assert len(ds) == 5 and ds.num_skipped == 1
    os.remove(tmp_path / "missing" / "depth" / "0003.png")         # vanishes after indexing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sources = [ds[i]["source"] for i in range(len(ds))]        # one epoch, no crash
    assert all(os.path.basename(s) in ("good1", "good2") for s in sources)
    messages = " ".join(str(w.message) for w in caught if w.category is BadSampleWarning)
    for name, why in (("missing", "0003.png"), ("truncated", "0004.png"),
                      ("invalid", "0 of")):
        assert name in messages and why in messages, (name, messages)
    assert ds.num_skipped == 4 and len(ds.skipped) == 3


def test_wrong_root_and_empty_dataset_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RGBDVideoDataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="no RGB-D data recognized"):
        RGBDVideoDataset(tmp_path)
    rgb, depth = _frames(T=3)
    _write_folder_clip(tmp_path / "short", rgb, depth)
    with pytest.raises(ValueError, match="no usable clips.*shorter than 9"):
        RGBDVideoDataset(tmp_path, frames=9)


def test_dataloader_with_two_workers_and_shared_skip_count(shards, tmp_path):
    bad = tmp_path / "bad"
    rgb, depth = _frames(T=11, H=12, W=16, seed=7)
    _write_folder_clip(bad / "allinvalid", rgb, 0 * depth)
    ds = RGBDVideoDataset([shards, bad], frames=9, size=(16, 24))
    assert len(ds) == 5
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSampleWarning)
        batches = list(loader)
    assert sum(len(b["caption"]) for b in batches) == 5
    assert batches[0]["rgb"].shape == (2, 3, 9, 16, 24)
    assert batches[0]["disparity"].shape == (2, 1, 9, 16, 24)
    assert ds.num_skipped == 1  # found in a worker, visible here


# ----------------------------------------------------------------------------- shards

def test_shard_writes_are_atomic_and_resume(tmp_path):
    parser = argparse.ArgumentParser()
    add_make_data_parser(parser.add_subparsers())
    argv = ["make-data", "--out", str(tmp_path), "--num-clips", "3", "--frames", "2",
            "--height", "12", "--width", "16", "--seed", "9", "--clips-per-shard", "1",
            "--no-progress"]
    args = parser.parse_args(argv)

    class Interrupted(Exception):
        pass

    def stop(shard):
        raise Interrupted

    with pytest.raises(Interrupted):
        generate_dataset(tmp_path, 3, 2, 12, 16, seed=9, clips_per_shard=1, progress=False,
                         on_shard=stop)
    # the interrupted run left shard 0 and (as if killed mid-write) a temporary for shard 1
    assert sorted(p.name for p in tmp_path.glob("shard-*.npz")) == ["shard-000000.npz"]
    leftover = tmp_path / f".shard-000001.npz.tmp-{dead_pid()}"
    leftover.write_bytes(b"PK\x03\x04 half a zip")
    clips, problems = find_clips(tmp_path, "shards")
    assert len(clips) == 1 and not problems        # the leftover is never read
    first = (tmp_path / "shard-000000.npz").stat().st_mtime_ns
    assert args.func(args) == 0                    # resume through the CLI
    assert sorted(p.name for p in tmp_path.glob("shard-*.npz")) == [
        "shard-000000.npz", "shard-000001.npz", "shard-000002.npz"]
    assert (tmp_path / "shard-000000.npz").stat().st_mtime_ns == first  # skipped
    assert not leftover.exists()
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"]
    with pytest.raises(ValueError, match="different settings"):
        generate_dataset(tmp_path, 3, 2, 12, 20, seed=9, clips_per_shard=1, progress=False)
    # resumed data equal what one uninterrupted run writes
    other = tmp_path / "again"
    generate_dataset(other, 3, 2, 12, 16, seed=9, clips_per_shard=1, progress=False)
    for k in range(3):
        a, b = np.load(tmp_path / f"shard-{k:06d}.npz"), np.load(other / f"shard-{k:06d}.npz")
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[f], b[f]) for f in a.files)


def test_generate_with_workers_matches_inline(tmp_path):
    generate_dataset(tmp_path / "a", 2, 2, 10, 12, seed=4, workers=2, clips_per_shard=1,
                     progress=False)
    generate_dataset(tmp_path / "b", 2, 2, 10, 12, seed=4, workers=0, clips_per_shard=1,
                     progress=False)
    for k in range(2):
        a, b = np.load(tmp_path / f"a/shard-{k:06d}.npz"), np.load(tmp_path / f"b/shard-{k:06d}.npz")
        assert all(np.array_equal(a[f], b[f]) for f in a.files)


# ----------------------------------------------------------------------------- real data

def test_real_middlebury_pair_as_a_panning_clip(tmp_path):
    skdata = pytest.importorskip("skimage.data")
    left, _, disparity = skdata.stereo_motorcycle()
    # Middlebury 2014 Motorcycle calibration at this (quarter) resolution
    f, baseline, doffs = 3979.911 / 4, 0.193001, 124.343 / 4
    depth = np.where(np.isfinite(disparity), f * baseline / (disparity + doffs), 0.0)
    T, H, W, step = 9, 96, 128, 16
    y0 = 200
    frames = [left[y0:y0 + H, 100 + t * step:100 + t * step + W] for t in range(T)]
    depths = [depth[y0:y0 + H, 100 + t * step:100 + t * step + W] for t in range(T)]
    K = np.array([[f, 0, 1244.772 / 4 - 100], [0, f, 1019.507 / 4 - y0], [0, 0, 1]])
    _write_folder_clip(tmp_path / "motorcycle", np.stack(frames), np.stack(depths), K=K)
    s = RGBDVideoDataset(tmp_path, frames=9, size=None, augment=False)[0]
    gt = np.stack([disparity[y0:y0 + H, 100 + t * step:100 + t * step + W] for t in range(T)])
    valid = torch.from_numpy(np.isfinite(gt))
    assert 0.5 < valid.float().mean() < 1 and torch.equal(s["valid"][0], valid)
    # panning: frame t+1 is frame t moved by `step` pixels
    assert torch.equal(s["rgb"][:, 1, :, :-step], s["rgb"][:, 0, :, step:])
    med, mad = _valid_stats(s)
    assert abs(med) < 0.02 and mad == pytest.approx(0.5, abs=0.01)
    # 1/depth is affine in the ground-truth disparity, so the normalized disparity is too
    target = torch.from_numpy(np.nan_to_num(gt, posinf=0)).float()
    aligned, scale, _ = align_scale_shift(s["disparity"][0], target, valid, per="all")
    err = (aligned - target)[valid].abs()
    assert scale > 0 and err.max() < 0.05 and err.mean() < 0.01  # mm quantization of depth
    assert s["depth"][0][valid].min() > 1 and s["depth"][0][valid].max() < 10


# ----------------------------------------------------------------------------- odd clips

def _write_shard(path, clips):
    """A shard holding ``clips``: name -> (rgb, depth, K, poses) as given (any dtype/shape)."""
    from rgbd_world.data.shards import write_npz_atomic

    arrays, meta = {}, []
    for name, (rgb, depth, K, poses) in clips.items():
        arrays.update({f"{name}/rgb": rgb, f"{name}/depth": depth, f"{name}/K": K,
                       f"{name}/poses": poses})
        meta.append({"name": name, "frames": len(rgb), "caption": name})
    arrays["meta"] = np.array(json.dumps({"format": "rgbd-world-shard", "version": 1,
                                          "clips": meta}))
    write_npz_atomic(path, arrays)


def _clip(T=9, H=12, W=16, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    depth = rng.uniform(1, 5, (T, H, W)).astype(np.float32)
    K = np.array([[10, 0, W / 2], [0, 10, H / 2], [0, 0, 1]], np.float32)
    poses = np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))
    poses[:, 0, 3] = np.arange(T) * 0.1
    return rgb, depth, K, poses


def test_poses_3x4_are_completed_and_flip(tmp_path):
    rgb, depth, K, poses = _clip()
    _write_shard(tmp_path / "shard-000000.npz", {"c34": (rgb, depth, K, poses[:, :3])})
    s = RGBDVideoDataset(tmp_path, frames=9, size=(12, 16), augment=False)[0]
    assert s["poses"].shape == (9, 4, 4) and torch.equal(s["poses"], torch.from_numpy(poses))
    flipped = RGBDVideoDataset(tmp_path, frames=9, size=(12, 16), flip_prob=1.0)[0]
    assert flipped["flipped"] and flipped["poses"].shape == (9, 4, 4)
    # a folder clip with poses.npy of shape (T, 3, 4)
    _write_folder_clip(tmp_path / "folder" / "c", rgb, depth, npy=True, poses=None)
    np.save(tmp_path / "folder" / "c" / "poses.npy", poses[:, :3])
    f = RGBDVideoDataset(tmp_path / "folder", frames=9, size=(12, 16), augment=False)
    assert f.num_skipped == 0 and torch.equal(f[0]["poses"], torch.from_numpy(poses))


def test_empty_frames_are_skipped_not_a_crash(tmp_path):
    rgb, depth, K, poses = _clip()
    _write_shard(tmp_path / "shard-000000.npz", {
        "a_empty": (np.zeros((9, 0, 0, 3), np.uint8), np.zeros((9, 0, 0), np.float32), K, poses),
        "b_good": (rgb, depth, K, poses)})
    ds = RGBDVideoDataset(tmp_path, frames=9, size=(12, 16), augment=False)
    with pytest.warns(BadSampleWarning, match="a_empty.*0x0"):
        s = ds[0]
    assert s["caption"] == "b_good" and ds.num_skipped == 1


def test_float_rgb_in_0_1_is_not_divided_again(tmp_path):
    rgb, depth, K, poses = _clip()
    _write_shard(tmp_path / "shard-000000.npz", {
        "u8": (rgb, depth, K, poses), "f32": (rgb.astype(np.float32) / 255, depth, K, poses),
        "f32_255": (rgb.astype(np.float32), depth, K, poses)})
    ds = RGBDVideoDataset(tmp_path, frames=9, size=(12, 16), augment=False)
    by_name = {ds[i]["caption"]: ds[i] for i in range(2)}
    torch.testing.assert_close(by_name["f32"]["rgb"], by_name["u8"]["rgb"], rtol=0, atol=1e-6)
    with pytest.warns(BadSampleWarning, match="float RGB must be finite and in \\[0, 1\\]"):
        assert ds[2]["caption"] == "u8"           # the 0..255 float clip is skipped
