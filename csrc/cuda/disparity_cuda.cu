// CUDA implementation of depth_to_disparity (elementwise; see ops.h for the contract).
// One thread per element in a grid-stride loop; the element arithmetic is
// rgbd::depth_to_disparity_element (ops.h), the same function the C++ CPU op runs, so the CPU
// tests cover it (float32 math for every dtype; an overflowing fp16 disparity is invalid).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "ops.h"

namespace rgbd {
namespace {

template <typename scalar_t>
__global__ void depth_to_disparity_kernel(const scalar_t* __restrict__ depth,
                                          scalar_t* __restrict__ disparity,
                                          bool* __restrict__ valid, int64_t n, float lo,
                                          float hi) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    // shared with the CPU op (ops.h): a disparity that overflows the dtype is not valid
    valid[i] = depth_to_disparity_element(static_cast<float>(depth[i]), lo, hi, disparity[i]);
  }
}

void check_cuda_flat(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

}  // namespace

void depth_to_disparity_cuda(const at::Tensor& depth, double min_depth, double max_depth,
                             at::Tensor& disparity, at::Tensor& valid) {
  check_cuda_flat(depth, "depth");
  check_cuda_flat(disparity, "disparity");
  check_cuda_flat(valid, "valid");
  TORCH_CHECK(valid.scalar_type() == at::kBool, "valid must be bool");
  TORCH_CHECK(disparity.scalar_type() == depth.scalar_type(),
              "disparity must have depth's dtype");
  TORCH_CHECK(disparity.numel() == depth.numel() && valid.numel() == depth.numel(),
              "output sizes must match depth");
  TORCH_CHECK(disparity.device() == depth.device() && valid.device() == depth.device(),
              "outputs must be on depth's device");
  const int64_t n = depth.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(depth.device());
  const int threads = 256;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, depth.get_device()));
  const int64_t wanted = (n + threads - 1) / threads;
  const int blocks = static_cast<int>(std::min<int64_t>(wanted, static_cast<int64_t>(std::max(sms, 1)) * 32));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(depth.get_device()).stream();
  const float lo = static_cast<float>(min_depth);
  const float hi = static_cast<float>(max_depth);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, depth.scalar_type(),
                                  "depth_to_disparity_cuda", [&] {
    depth_to_disparity_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        depth.data_ptr<scalar_t>(), disparity.data_ptr<scalar_t>(), valid.data_ptr<bool>(), n,
        lo, hi);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace rgbd
