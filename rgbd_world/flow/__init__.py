"""Flow matching for generation: ODE solvers over shifted schedules (rectified flow).

Training-side pieces (fused interpolation and loss, timestep samplers) live in
:mod:`rgbd_kernels.flow_matching` and :mod:`rgbd_kernels.timesteps`.
"""
from .solvers import (SOLVERS, classifier_free_guidance, sample, sample_euler, sample_heun,
                      timestep_schedule)

__all__ = ["SOLVERS", "classifier_free_guidance", "sample", "sample_euler", "sample_heun",
           "timestep_schedule"]
