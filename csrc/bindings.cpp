// The one bindings file: schemas and CPU/CUDA registrations of every compiled op.
#include <torch/extension.h>
#include <torch/library.h>

#include "ops.h"

namespace {
bool built_with_cuda() {
#ifdef RGBD_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rgbd_kernels compiled ops (registered as torch.ops.rgbd_C.*)";
  m.def("built_with_cuda", &built_with_cuda, "True when the CUDA sources were compiled in");
}

TORCH_LIBRARY(rgbd_C, m) {
  m.def("depth_to_disparity(Tensor depth, float min_depth, float max_depth, Tensor(a!) disparity, "
        "Tensor(b!) valid) -> ()");
  m.def("normalize_disparity(Tensor values, Tensor? valid, Tensor(a!) out, Tensor(b!) stats) -> ()");
  m.def("normalize_disparity_backward(Tensor grad_out, Tensor grad_stats, Tensor values, "
        "Tensor? valid, Tensor stats, Tensor(a!) grad_values) -> ()");
}

TORCH_LIBRARY_IMPL(rgbd_C, CPU, m) {
  m.impl("depth_to_disparity", &rgbd::depth_to_disparity_cpu);
  m.impl("normalize_disparity", &rgbd::normalize_disparity_cpu);
  m.impl("normalize_disparity_backward", &rgbd::normalize_disparity_backward_cpu);
}

#ifdef RGBD_WITH_CUDA
TORCH_LIBRARY_IMPL(rgbd_C, CUDA, m) {
  m.impl("depth_to_disparity", &rgbd::depth_to_disparity_cuda);
}
#endif
