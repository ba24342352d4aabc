"""Stage 2 started from a pretrained DiT: the three kinds model.init accepts (a diffusers
CosmosTransformer3DModel directory, an official Cosmos-Predict2 checkpoint, our DiT), clear
errors for the wrong kind / size / layout, and a 20-step train.py run from a tiny random
diffusers model saved with save_pretrained."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import CosmosTransformer3DModel
from safetensors.torch import save_file

from rgbd_world.dit import DiT
from rgbd_world.dit.diffusers_compat import DiTLoadError
from rgbd_world.dit.pretrained import load_predict2_checkpoint
from rgbd_world.train.run_models import load_pretrained_dit  # runs too; the rest: rgbd_world.dit
from rgbd_world.tokenizer import VideoTokenizer
from rgbd_world.tokenizer.checkpoint import config_to_dict

ROOT = Path(__file__).resolve().parents[2]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _transformer(out_channels=16, text_dim=64, seed=0, **kw):
    torch.manual_seed(seed)
    model = CosmosTransformer3DModel(
        in_channels=out_channels + 1, out_channels=out_channels, num_attention_heads=2,
        attention_head_dim=16, num_layers=2, mlp_ratio=2.0, text_embed_dim=text_dim,
        adaln_lora_dim=8, rope_scale=(1.0, 3.0, 3.0), extra_pos_embed_type=None, **kw).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 + (p.dim() == 1))
    return model


def _call(model, seed=0, c=16, text_dim=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c, 2, 4, 4, generator=g)
    t = torch.rand(1, 2, generator=g)
    text = torch.randn(1, 3, text_dim, generator=g)
    with torch.no_grad():
        return model(x, t, text)


# official Predict2 names of the diffusers keys (the inverse of what the loader maps)
_TO_PREDICT2 = [("transformer_blocks.", "blocks."), ("attn1.", "self_attn."),
                ("attn2.", "cross_attn."), ("norm1.linear_", "adaln_modulation_self_attn."),
                ("norm2.linear_", "adaln_modulation_cross_attn."),
                ("norm3.linear_", "adaln_modulation_mlp."), ("to_out.0.", "output_proj."),
                ("norm_q.", "q_norm."), ("norm_k.", "k_norm."), ("to_q.", "q_proj."),
                ("to_k.", "k_proj."), ("to_v.", "v_proj."), ("ff.net.0.proj.", "mlp.layer1."),
                ("ff.net.2.", "mlp.layer2."), ("patch_embed.proj.", "x_embedder.proj.1."),
                ("time_embed.t_embedder.linear_", "t_embedder.1.linear_"),
                ("time_embed.norm.", "t_embedding_norm."),
                ("norm_out.linear_", "final_layer.adaln_modulation."),
                ("proj_out.", "final_layer.linear.")]


def _predict2_state(model):
    out = {}
    for key, value in model.state_dict().items():
        for a, b in _TO_PREDICT2:
            key = key.replace(a, b)
        out["net." + key] = value.clone()
    out["net.pos_embedder.dim_spatial_range"] = torch.arange(5.0)   # bookkeeping, dropped
    out["net.accum_iteration"] = torch.tensor(7)
    return out


def test_pretrained_kinds_load_to_the_same_model(tmp_path):
    tr = _transformer()
    ref = DiT.from_diffusers(tr)
    tr.save_pretrained(tmp_path / "diffusers")
    from_dir = load_pretrained_dit(tmp_path / "diffusers")
    pt = tmp_path / "model.pt"
    torch.save({"model": _predict2_state(tr)}, pt)
    from_pt = load_pretrained_dit(pt)
    assert from_pt.config.qk_norm_eps == 1e-6 and from_dir.config.qk_norm_eps == 1e-5
    assert (from_pt.config.hidden, from_pt.config.depth, from_pt.config.heads,
            from_pt.config.text_dim, from_pt.config.adaln_rank) == (32, 2, 2, 64, 8)
    # a saved RGBDPipeline's dit/ (denoiser weights, "dit." keys, and its config)
    import dataclasses
    pipe = tmp_path / "pipeline"
    (pipe / "dit").mkdir(parents=True)
    (pipe / "pipeline.json").write_text("{}")
    (pipe / "dit" / "config.json").write_text(json.dumps(dataclasses.asdict(ref.config)))
    save_file({f"dit.{k}": v.contiguous() for k, v in ref.state_dict().items()},
              str(pipe / "dit" / "model.safetensors"))
    from_pipe = load_pretrained_dit(pipe)
    assert from_pipe.config == ref.config
    for model in (from_dir, from_pt, from_pipe):
        for k, v in ref.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
    assert rel(_call(from_dir), _call(ref)) == 0.0
    assert rel(_call(from_pt), _call(ref)) < 1e-3   # only the QK norm eps differs


def test_wrong_kind_size_or_layout_says_what_was_expected_and_found(tmp_path):
    with pytest.raises(DiTLoadError, match="does not exist"):
        load_pretrained_dit(tmp_path / "nothing")
    vae_dir = tmp_path / "vae"
    vae_dir.mkdir()
    (vae_dir / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLCosmos"}))
    with pytest.raises(DiTLoadError, match="expected a CosmosTransformer3DModel, found "
                                           "_class_name 'AutoencoderKLCosmos'"):
        load_pretrained_dit(vae_dir)
    # a checkpoint whose weights do not fit its config (another depth): shapes, not a traceback
    tr = _transformer()
    tr.save_pretrained(tmp_path / "d")
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    (tmp_path / "d" / "config.json").write_text(json.dumps(dict(config, num_layers=3)))
    with pytest.raises(DiTLoadError, match=r"missing \(\d+\): transformer_blocks\.2\."):
        load_pretrained_dit(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text(json.dumps(dict(config, attention_head_dim=8,
                                                                num_attention_heads=4)))
    with pytest.raises(DiTLoadError, match=r"attn1.norm_q.weight: found \(16,\), expected \(8,\)"):
        load_pretrained_dit(tmp_path / "d")
    # not a DiT checkpoint at all / a Cosmos-1.0 one
    save_file({"encoder.conv_in.0.conv3d.weight": torch.zeros(1)}, str(tmp_path / "tok.safetensors"))
    with pytest.raises(DiTLoadError, match="not a Cosmos-Predict2 DiT checkpoint: unknown keys"):
        load_predict2_checkpoint(tmp_path / "tok.safetensors")
    torch.save({"net.extra_pos_embedder.pos_emb_h": torch.zeros(1)}, tmp_path / "v1.pt")
    with pytest.raises(DiTLoadError, match="found a Cosmos-1.0 one"):
        load_pretrained_dit(tmp_path / "v1.pt")
    # a tokenizer run given as the DiT
    run = tmp_path / "tok_run"
    run.mkdir()
    (run / "model_config.json").write_text(json.dumps({"tokenizer": {}}))
    with pytest.raises(DiTLoadError, match="expected a 'train.py --stage dit' run, found a run "
                                           "without a DiT"):
        load_pretrained_dit(run)


def _fake_tokenizer_run(path: Path, model: VideoTokenizer) -> Path:
    """A tokenizer run directory as train.py writes it (config + one complete checkpoint)."""
    ckpt = path / "checkpoints" / "step_000000001"
    ckpt.mkdir(parents=True)
    (path / "model_config.json").write_text(json.dumps({"tokenizer": config_to_dict(model.config)}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(ckpt / "model.safetensors"))
    save_file(state, str(ckpt / "ema.safetensors"))
    (ckpt / "COMPLETE").write_text("")
    return path


def test_train_dit_20_steps_from_a_diffusers_transformer(tmp_path):
    from rgbd_world.data import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, 4, frames=9, height=32, width=32, seed=0, progress=False)
    torch.manual_seed(0)
    rgb = _fake_tokenizer_run(tmp_path / "rgb_tok", VideoTokenizer("tiny"))
    rgbd = _fake_tokenizer_run(tmp_path / "rgbd_tok", VideoTokenizer("tiny", in_channels=4,
                                                                     geometry_channels=2))
    tr = _transformer(out_channels=16, text_dim=64)   # the byte text encoder's width
    tr.save_pretrained(tmp_path / "predict2-diffusers")
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--stage", "dit", "--config", "tiny-cpu",
           f"run.out_dir={out}", "run.steps=20", "run.ckpt_every=20", "run.sample_every=0",
           "run.log_every=5", f"data.root={data}", "data.num_clips=4", "data.batch_size=2",
           "data.height=32", "data.width=32", "data.frames=9", f"model.tokenizer={rgbd}",
           f"model.rgb_tokenizer={rgb}", f"model.init={tmp_path / 'predict2-diffusers'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "initialised from" in r.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 20 and all(torch.isfinite(torch.tensor(x["flow_mse"]))
                                             for x in records)
    saved = json.loads((out / "model_config.json").read_text())["dit"]
    assert (saved["latent_channels"], saved["cond_channels"], saved["hidden"]) == (18, 16, 32)
    assert saved["modulation"] == "sublayer" and saved["rope_scale"] == [1.0, 3.0, 3.0]
    # the run is itself a valid model.init (our DiT kind), and generates through the pipeline
    again = load_pretrained_dit(out)
    assert again.config.latent_channels == 18 and again.config.is_predict2
    from rgbd_world.train.run_models import pipeline_from_training_runs
    video = pipeline_from_training_runs(rgbd, out)(prompt="a box", num_inference_steps=2,
                                                   progress=False)
    assert video.rgb.shape == (9, 32, 32, 3) and torch.isfinite(video.disparity).all()
    # a pretrained DiT reading another text width is refused, both widths named (exit 2)
    _transformer(text_dim=32).save_pretrained(tmp_path / "t32")
    bad = subprocess.run(cmd[:-1] + [f"model.init={tmp_path / 't32'}",
                                     f"run.out_dir={tmp_path / 'bad'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "reads 32-d text embeddings" in bad.stderr and "gives 64-d" in bad.stderr
