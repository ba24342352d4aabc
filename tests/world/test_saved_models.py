"""Every model saves and loads itself (config.json with a format name and version +
safetensors); a directory of another kind or a newer version is refused saying what was
expected and what was found; training runs export such directories."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rgbd_world.dit import DiT, DiTConfig
from rgbd_world.dit.denoiser import RGBDDenoiser
from rgbd_world.dit.text import ByteTextEncoder, load_text_encoder
from rgbd_world.saved_model import SavedModelError
from rgbd_world.tokenizer import TokenizerConfig, VideoTokenizer


def _perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_configs_round_trip_through_dicts_and_json():
    tok = TokenizerConfig.preset("tiny", in_channels=4)
    assert TokenizerConfig.from_dict(json.loads(json.dumps(tok.to_dict()))) == tok
    dit = DiTConfig.preset("2B")
    assert DiTConfig.from_dict(json.loads(json.dumps(dit.to_dict()))) == dit
    with pytest.raises(ValueError, match="unknown TokenizerConfig fields"):
        TokenizerConfig.from_dict({"in_channels": 3, "nope": 1})


def test_tokenizer_saves_and_loads_itself(tmp_path):
    model = _perturbed(VideoTokenizer("tiny", in_channels=4), 1)
    model.save_pretrained(tmp_path / "tok")
    saved = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert (saved["_format"], saved["_format_version"]) == ("rgbd-world-tokenizer", 1)
    again = VideoTokenizer.from_pretrained(tmp_path / "tok")
    assert again.config == model.config and not again.training
    _same_weights(model, again)
    x = torch.rand(1, 4, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again.encode(x), model.encode(x))
    # saving again replaces the directory whole (no leftover temporaries beside it)
    model.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_dit_denoiser_and_text_encoders_save_and_load_themselves(tmp_path):
    dit = _perturbed(DiT("tiny", latent_channels=8, cond_channels=8), 2)
    dit.save_pretrained(tmp_path / "dit")
    _same_weights(dit, DiT.from_pretrained(tmp_path / "dit"))
    text = _perturbed(ByteTextEncoder(64, layers=1), 3)
    text.save_pretrained(tmp_path / "text")
    loaded_text = load_text_encoder(tmp_path / "text")
    assert isinstance(loaded_text, ByteTextEncoder) and loaded_text.layers == 1
    _same_weights(text, loaded_text)
    den = RGBDDenoiser(dit, text)
    den.save_pretrained(tmp_path / "den")
    again = RGBDDenoiser.from_pretrained(tmp_path / "den")
    assert again.text_encoder_name == "byte"
    _same_weights(den, again)
    x, t = torch.randn(1, 8, 2, 4, 4), torch.tensor([0.3])
    cond = torch.randn(1, 8, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(again(x, t, ["a box"], cond=cond), den(x, t, ["a box"], cond=cond))


def test_wrong_kind_or_version_says_expected_and_found(tmp_path):
    VideoTokenizer("tiny").save_pretrained(tmp_path / "tok")
    with pytest.raises(SavedModelError, match=r"expected a saved 'rgbd-world-dit'.*found "
                                              r"'rgbd-world-tokenizer' version 1"):
        DiT.from_pretrained(tmp_path / "tok")
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    (tmp_path / "tok" / "config.json").write_text(json.dumps(dict(cfg, _format_version=7)))
    with pytest.raises(SavedModelError, match=r"format version <= 1, found version 7"):
        VideoTokenizer.from_pretrained(tmp_path / "tok")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLCosmos"}))
    with pytest.raises(SavedModelError, match="found 'a diffusers AutoencoderKLCosmos'"):
        VideoTokenizer.from_pretrained(tmp_path / "vae")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        DiT.from_pretrained(tmp_path / "nothing")


def test_shipped_pipeline_has_one_name(tmp_path, monkeypatch):
    from rgbd_world.package_data import shipped_configs, shipped_pipeline, shipped_pipelines
    from rgbd_world.pipeline import RGBDPipeline

    assert "tiny-rgbd" in shipped_pipelines() and "tiny-cpu" in shipped_configs()
    monkeypatch.chdir(tmp_path)                       # found inside the package, not the cwd
    pipe = RGBDPipeline.from_pretrained("tiny-rgbd")
    assert pipe.text_encoder_name == pipe.denoiser.text_encoder_name
    assert pipe.text_encoder_name == json.loads(
        (shipped_pipeline("tiny-rgbd") / "pipeline.json").read_text())["text_encoder"]


def _tokenizer_run(path, model):
    ckpt = path / "checkpoints" / "step_000000003"
    ckpt.mkdir(parents=True)
    (path / "model_config.json").write_text(json.dumps({"tokenizer": model.config.to_dict()}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({k: torch.zeros_like(v) for k, v in state.items()}, str(ckpt / "model.safetensors"))
    save_file(state, str(ckpt / "ema.safetensors"))
    (ckpt / "COMPLETE").write_text("")
    return path


def test_a_run_exports_a_saved_model_and_models_refuse_run_directories(tmp_path):
    from rgbd_world.cli import main
    from rgbd_world.tokenizer import load_any_tokenizer
    from rgbd_world.train.run_models import export_run, load_tokenizer

    model = _perturbed(VideoTokenizer("tiny"), 4)
    run = _tokenizer_run(tmp_path / "run", model)
    out = export_run(run)
    assert out == run / "exported"
    _same_weights(model, VideoTokenizer.from_pretrained(out))          # the EMA weights
    _same_weights(load_tokenizer(run), VideoTokenizer.from_pretrained(out))
    assert main(["export-run", "--run", str(run), "--out", str(tmp_path / "e"), "--no-ema"]) == 0
    assert all(not v.any() for v in VideoTokenizer.from_pretrained(tmp_path / "e").state_dict().values())
    assert main(["export-run", "--run", str(run), "--step", "5"]) == 2   # no such checkpoint
    # the model layer reads saved models, and points to the trainer for a run directory
    _same_weights(model, load_any_tokenizer(out))
    with pytest.raises(ValueError, match="found a training run directory.*export-run"):
        load_any_tokenizer(run)


def test_pipeline_call_speaks_diffusers_and_old_names_warn():
    from rgbd_world.pipeline import RGBDPipeline
    from rgbd_world.validation import InvalidArgument

    pipe = RGBDPipeline.from_pretrained("tiny-rgbd")
    new = pipe(prompt="a red sphere", num_inference_steps=2, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(5), progress=False)
    with pytest.warns(DeprecationWarning, match="steps= is deprecated.*num_inference_steps"):
        old = pipe(prompt="a red sphere", steps=2, guidance=2.0, seed=5, progress=False)
    assert torch.equal(new.latents, old.latents) and torch.equal(new.rgb, old.rgb)
    # a list of prompts: one output each, drawn one after another from the generator
    both = pipe(prompt=["a red sphere", "a blue box"], num_inference_steps=2,
                generator=torch.Generator().manual_seed(5), progress=False)
    assert len(both) == 2
    g = torch.Generator().manual_seed(5)
    first = pipe(prompt="a red sphere", num_inference_steps=2, generator=g, progress=False)
    second = pipe(prompt="a blue box", num_inference_steps=2, generator=g, progress=False)
    assert torch.equal(both[0].latents, first.latents) and torch.equal(both[1].latents, second.latents)
    # given initial latents replace the noise; a negative prompt changes the guided result
    noise = torch.randn(new.latents.shape, generator=torch.Generator().manual_seed(5))
    from_noise = pipe(prompt="a red sphere", num_inference_steps=2, guidance_scale=2.0,
                      latents=noise, output_type="latent", progress=False)
    assert torch.equal(from_noise.latents, new.latents) and from_noise.rgb is None
    negative = pipe(prompt="a red sphere", negative_prompt="a green floor", num_inference_steps=2,
                    guidance_scale=2.0, generator=torch.Generator().manual_seed(5), progress=False)
    assert not torch.equal(negative.latents, new.latents)
    as_np = pipe(prompt="a red sphere", num_inference_steps=2, guidance_scale=2.0,
                 generator=torch.Generator().manual_seed(5), output_type="np", progress=False)
    assert isinstance(as_np.rgb, np.ndarray) and np.array_equal(as_np.rgb, new.rgb.numpy())
    for kwargs, name in (({"num_inference_steps": 0}, "num_inference_steps"),
                         ({"guidance_scale": float("nan")}, "guidance_scale"),
                         ({"generator": 3}, "generator"), ({"output_type": "pil"}, "output_type"),
                         ({"steps": 2, "num_inference_steps": 2}, "steps"),
                         ({"prompt": ["a", 3]}, "prompt"),
                         ({"prompt": ["a", "b"], "negative_prompt": ["c"]}, "negative_prompt")):
        with pytest.raises(InvalidArgument) as exc, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pipe(progress=False, **kwargs)
        assert exc.value.argument == name


def test_pipelines_saved_before_formats_were_recorded_still_load(tmp_path):
    import shutil

    from rgbd_world.package_data import shipped_pipeline
    from rgbd_world.pipeline import RGBDPipeline

    old = Path(shutil.copytree(shipped_pipeline("tiny-rgbd"), tmp_path / "old"))
    for name in ("tokenizer", "rgb_tokenizer", "dit"):   # the layout written before this release
        cfg = json.loads((old / name / "config.json").read_text())
        legacy = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "text_encoder"}
        (old / name / "config.json").write_text(json.dumps(legacy))
    kwargs = dict(prompt="a red sphere", num_inference_steps=2, progress=False)
    a = RGBDPipeline.from_pretrained(old)(**kwargs)
    b = RGBDPipeline.from_pretrained("tiny-rgbd")(**kwargs)
    assert torch.equal(a.latents, b.latents)
