"""Evaluation: reconstruction and depth metrics (this project's "rgbd" protocol and the published
DepthCrafter / Marigold protocols), prompt adherence of generations to procedural captions,
and tokenizer evaluation on held-out clips (of a training run: ``rgbd_world.train.evaluate_run``)."""
from .depth_protocols import PROTOCOLS, video_depth_metrics
from .geometry import reprojection_errors
from .metrics import boundary_f1, depth_edges, disparity_metrics, psnr, ssim
from .prompt_adherence import adherence_scores, prompt_adherence
from .tokenizer_eval import evaluate_tokenizer

__all__ = ["psnr", "ssim", "disparity_metrics", "video_depth_metrics", "PROTOCOLS", "depth_edges",
           "boundary_f1", "evaluate_tokenizer", "reprojection_errors", "adherence_scores",
           "prompt_adherence"]
