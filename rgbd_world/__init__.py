"""rgbd_world: joint RGB + depth video generation (tokenizer, diffusion transformer, data, training).

Built on :mod:`rgbd_kernels`. The models and pipeline land issue by issue; see README.md.
"""
__version__ = "0.1.0"
