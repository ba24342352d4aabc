// Declarations of the compiled rgbd_kernels ops. Registered in bindings.cpp under the
// `rgbd_C` namespace (torch.ops.rgbd_C.*); the public Python API wraps them as `rgbd::` custom ops.
// Every op writes into outputs allocated by Python, so tests can NaN-poison them.
#pragma once
#include <ATen/ATen.h>

#include <cfloat>

#if defined(__CUDACC__)
#define RGBD_HOST_DEVICE __host__ __device__
#else
#define RGBD_HOST_DEVICE
#endif

namespace rgbd {

// One element of depth_to_disparity, shared by the CPU op and the CUDA kernel (so the CPU tests
// run the CUDA kernel's arithmetic): valid when depth z is finite, > 0, in [lo, hi] and 1/z is
// finite in scalar_t (fp16: z >= ~1.5e-5); writes 1/z or 0. Comparisons are false for NaN.
template <typename scalar_t>
RGBD_HOST_DEVICE inline bool depth_to_disparity_element(float z, float lo, float hi,
                                                        scalar_t& disparity) {
  const bool in_range = z > 0.f && z <= FLT_MAX && z >= lo && z <= hi;
  const scalar_t inv = static_cast<scalar_t>(in_range ? 1.f / z : 0.f);
  const float back = static_cast<float>(inv);
  const bool ok = in_range && back <= FLT_MAX && back >= -FLT_MAX;
  disparity = ok ? inv : static_cast<scalar_t>(0.f);
  return ok;
}

// depth (N) float/half/bf16 contiguous -> disparity (N) same dtype, valid (N) bool.
// valid = finite && depth > 0 && min_depth <= depth <= max_depth && 1/depth finite in the dtype;
// disparity = valid ? 1/depth : 0.
void depth_to_disparity_cpu(const at::Tensor& depth, double min_depth, double max_depth,
                            at::Tensor& disparity, at::Tensor& valid);

// values: (G, N) contiguous; valid: (G, N) contiguous bool, or none (then a value is valid when
// finite and > 0). Per group (row): median of the valid finite values (mean of the two middle
// order statistics for even counts), scale = mean |d - median|; finite for every finite input.
// out: (G, N) same dtype as values; stats: (G, 5) float32 = [shift, scale, lo, hi, count]
// (lo/hi: the two middle order statistics; count: number of valid values, 0 for a degenerate
// group, which gets shift 0, scale 1 and zeros).
void normalize_disparity_cpu(const at::Tensor& values, const std::optional<at::Tensor>& valid,
                             at::Tensor& out, at::Tensor& stats);

// Gradient of normalize_disparity w.r.t. values given grad_out (G, N) and grad_stats (G, 5)
// (only the shift and scale columns are used; valid optional as above). grad_values: (G, N)
// same dtype as values.
void normalize_disparity_backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_stats,
                                      const at::Tensor& values,
                                      const std::optional<at::Tensor>& valid,
                                      const at::Tensor& stats, at::Tensor& grad_values);

#ifdef RGBD_WITH_CUDA
// CUDA version of depth_to_disparity_cpu (csrc/cuda/disparity_cuda.cu), same contract; runs on
// the current stream of depth's device.
void depth_to_disparity_cuda(const at::Tensor& depth, double min_depth, double max_depth,
                             at::Tensor& disparity, at::Tensor& valid);
#endif

}  // namespace rgbd
