"""Evaluation: reconstruction and depth metrics, and tokenizer evaluation on held-out clips."""
from .metrics import boundary_f1, depth_edges, disparity_metrics, psnr, ssim
from .tokenizer_eval import evaluate_run, evaluate_tokenizer

__all__ = ["psnr", "ssim", "disparity_metrics", "depth_edges", "boundary_f1",
           "evaluate_tokenizer", "evaluate_run"]
