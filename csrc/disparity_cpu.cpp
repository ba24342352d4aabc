// C++ CPU kernels for depth -> disparity and affine-invariant disparity normalization.
// Median by selection, float32 math and double accumulators for every input dtype. Many groups:
// one thread per group, std::nth_element (O(N)). Fewer large groups than threads (one clip with
// per="clip", as a data loader calls it): every thread works on each group, the median by a
// two-pass radix select (16-bit histograms per thread over order-preserving float keys).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops.h"

namespace rgbd {
namespace {

constexpr int kStats = 5;  // shift, scale, lo, hi, count

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline float sign_of(float x) { return static_cast<float>((x > 0.f) - (x < 0.f)); }

// Write a group's stats row [shift, scale, lo, hi, count]; a degenerate group (no valid value,
// or zero deviation) gets shift 0, scale 1, count 0. Returns false for a degenerate group
// (whose output is all zeros).
inline bool write_stats(float* st, int64_t count, float lo, float hi, float shift, float scale) {
  const bool ok = count > 0 && scale > 0.f;
  st[0] = ok ? shift : 0.f;
  st[1] = ok ? scale : 1.f;
  st[2] = lo;
  st[3] = hi;
  st[4] = ok ? static_cast<float>(count) : 0.f;
  return ok;
}

// Order-preserving float <-> uint32 keys (negatives flipped, positives offset by the sign bit).
inline uint32_t float_key(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float key_float(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

constexpr int64_t kThreadedGroupMin = int64_t{1} << 17;  // below this, one thread per group
constexpr int kBins = 1 << 16;

// The bin holding 0-based rank r of a histogram, and r's rank inside that bin.
inline void find_rank(const std::vector<int64_t>& hist, int64_t r, int64_t& bin, int64_t& inside) {
  int64_t before = 0;
  for (int64_t b = 0; b < kBins; ++b) {
    if (r < before + hist[b]) {
      bin = b;
      inside = r - before;
      return;
    }
    before += hist[b];
  }
  TORCH_CHECK(false, "normalize_disparity_cpu: rank ", r, " past the histogram (internal error)");
}

// Normalize one group (row of n values) using every thread; writes y and st like the
// per-group loop below.
template <typename scalar_t>
void normalize_group_threaded(const scalar_t* xg, const bool* vg, scalar_t* yg, float* st,
                              int64_t n) {
  const int threads = at::get_num_threads();
  const int64_t grain = std::max<int64_t>(n / threads, 1 << 12);
  auto value_at = [&](int64_t i, float& v) {
    v = static_cast<float>(xg[i]);
    return vg[i] && std::isfinite(v);
  };
  // pass 1: histogram of the top 16 key bits, per thread, then summed
  std::vector<uint32_t> local(static_cast<size_t>(threads) * kBins, 0);
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
    uint32_t* h = local.data() + static_cast<size_t>(at::get_thread_num()) * kBins;
    float v;
    for (int64_t i = b; i < e; ++i)
      if (value_at(i, v)) ++h[float_key(v) >> 16];
  });
  std::vector<int64_t> top(kBins, 0);
  int64_t count = 0;
  for (int t = 0; t < threads; ++t)
    for (int b = 0; b < kBins; ++b) top[b] += local[static_cast<size_t>(t) * kBins + b];
  for (int b = 0; b < kBins; ++b) count += top[b];
  float lo = 0.f, hi = 0.f, shift = 0.f, scale = 0.f;
  if (count > 0) {
    // ranks of the two middle order statistics (equal for odd counts)
    const int64_t r_hi = count / 2, r_lo = (count % 2 == 1) ? r_hi : r_hi - 1;
    int64_t bin_hi, in_hi, bin_lo, in_lo;
    find_rank(top, r_hi, bin_hi, in_hi);
    find_rank(top, r_lo, bin_lo, in_lo);
    // pass 2: histograms of the low 16 bits inside those one or two top bins
    std::fill(local.begin(), local.end(), 0u);
    std::vector<uint32_t> local_lo(bin_lo != bin_hi ? local.size() : 0, 0);
    at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
      const size_t off = static_cast<size_t>(at::get_thread_num()) * kBins;
      float v;
      for (int64_t i = b; i < e; ++i) {
        if (!value_at(i, v)) continue;
        const uint32_t k = float_key(v);
        const int64_t t = k >> 16;
        if (t == bin_hi) ++local[off + (k & 0xffffu)];
        else if (t == bin_lo) ++local_lo[off + (k & 0xffffu)];
      }
    });
    auto select = [&](const std::vector<uint32_t>& parts, int64_t bin, int64_t inside) {
      std::vector<int64_t> low(kBins, 0);
      for (int t = 0; t < threads; ++t)
        for (int b = 0; b < kBins; ++b) low[b] += parts[static_cast<size_t>(t) * kBins + b];
      int64_t low_bin, unused;
      find_rank(low, inside, low_bin, unused);
      return key_float(static_cast<uint32_t>((bin << 16) | low_bin));
    };
    hi = select(local, bin_hi, in_hi);
    lo = bin_lo == bin_hi ? select(local, bin_lo, in_lo) : select(local_lo, bin_lo, in_lo);
    shift = 0.5f * (lo + hi);
    std::vector<double> acc(threads, 0.0);
    at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
      double a = 0.0;
      float v;
      for (int64_t i = b; i < e; ++i)
        if (value_at(i, v)) a += std::fabs(static_cast<double>(v - shift));
      acc[at::get_thread_num()] += a;
    });
    double total = 0.0;
    for (const double a : acc) total += a;
    scale = static_cast<float>(total / static_cast<double>(count));
  }
  const bool ok = write_stats(st, count, lo, hi, shift, scale);
  const float half_inv_scale = ok ? 0.5f / scale : 0.f;
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
    float v;
    for (int64_t i = b; i < e; ++i) {
      const bool use = ok && value_at(i, v);
      yg[i] = static_cast<scalar_t>(use ? (v - shift) * half_inv_scale : 0.f);
    }
  });
}

}  // namespace

void depth_to_disparity_cpu(const at::Tensor& depth, double min_depth, double max_depth,
                            at::Tensor& disparity, at::Tensor& valid) {
  check_rows(depth, "depth");
  check_rows(disparity, "disparity");
  check_rows(valid, "valid");
  TORCH_CHECK(valid.scalar_type() == at::kBool, "valid must be bool");
  TORCH_CHECK(disparity.numel() == depth.numel() && valid.numel() == depth.numel(),
              "output sizes must match depth");
  const int64_t n = depth.numel();
  const float lo = static_cast<float>(min_depth);
  const float hi = static_cast<float>(max_depth);
  bool* vptr = valid.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, depth.scalar_type(), "depth_to_disparity_cpu", [&] {
    const scalar_t* d = depth.data_ptr<scalar_t>();
    scalar_t* out = disparity.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float z = static_cast<float>(d[i]);
        const bool ok = std::isfinite(z) && z > 0.f && z >= lo && z <= hi;
        vptr[i] = ok;
        out[i] = static_cast<scalar_t>(ok ? 1.f / z : 0.f);
      }
    });
  });
}

void normalize_disparity_cpu(const at::Tensor& values, const at::Tensor& valid, at::Tensor& out,
                             at::Tensor& stats) {
  check_rows(values, "values");
  check_rows(valid, "valid");
  check_rows(out, "out");
  check_rows(stats, "stats");
  TORCH_CHECK(values.dim() == 2, "values must be (G, N)");
  TORCH_CHECK(valid.sizes() == values.sizes() && out.sizes() == values.sizes(), "shape mismatch");
  TORCH_CHECK(valid.scalar_type() == at::kBool, "valid must be bool");
  TORCH_CHECK(stats.scalar_type() == at::kFloat && stats.size(0) == values.size(0) &&
                  stats.size(1) == kStats,
              "stats must be float32 (G, 5)");
  const int64_t groups = values.size(0);
  const int64_t n = values.size(1);
  const bool* vptr = valid.data_ptr<bool>();
  float* sptr = stats.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "normalize_disparity_cpu", [&] {
    const scalar_t* x = values.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    if (groups < at::get_num_threads() && n >= kThreadedGroupMin) {
      for (int64_t g = 0; g < groups; ++g)
        normalize_group_threaded<scalar_t>(x + g * n, vptr + g * n, y + g * n, sptr + g * kStats,
                                           n);
      return;
    }
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      std::vector<float> buf;
      buf.reserve(n);
      for (int64_t g = g0; g < g1; ++g) {
        const scalar_t* xg = x + g * n;
        const bool* vg = vptr + g * n;
        scalar_t* yg = y + g * n;
        float* st = sptr + g * kStats;
        buf.clear();
        for (int64_t i = 0; i < n; ++i) {
          const float v = static_cast<float>(xg[i]);
          if (vg[i] && std::isfinite(v)) buf.push_back(v);
        }
        const int64_t count = static_cast<int64_t>(buf.size());
        float lo = 0.f, hi = 0.f, shift = 0.f, scale = 0.f;
        if (count > 0) {
          const int64_t k = count / 2;
          std::nth_element(buf.begin(), buf.begin() + k, buf.end());
          hi = buf[k];
          lo = (count % 2 == 1) ? hi : *std::max_element(buf.begin(), buf.begin() + k);
          shift = 0.5f * (lo + hi);
          double acc = 0.0;
          for (const float v : buf) acc += std::fabs(static_cast<double>(v - shift));
          scale = static_cast<float>(acc / static_cast<double>(count));
        }
        const bool ok = write_stats(st, count, lo, hi, shift, scale);
        const float half_inv_scale = ok ? 0.5f / scale : 0.f;
        for (int64_t i = 0; i < n; ++i) {
          const float v = static_cast<float>(xg[i]);
          const bool use = ok && vg[i] && std::isfinite(v);
          yg[i] = static_cast<scalar_t>(use ? (v - shift) * half_inv_scale : 0.f);
        }
      }
    });
  });
}

void normalize_disparity_backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_stats,
                                      const at::Tensor& values, const at::Tensor& valid,
                                      const at::Tensor& stats, at::Tensor& grad_values) {
  check_rows(grad_out, "grad_out");
  check_rows(grad_stats, "grad_stats");
  check_rows(values, "values");
  check_rows(valid, "valid");
  check_rows(stats, "stats");
  check_rows(grad_values, "grad_values");
  TORCH_CHECK(grad_out.scalar_type() == values.scalar_type() &&
                  grad_values.scalar_type() == values.scalar_type(),
              "grad dtypes must match values");
  TORCH_CHECK(grad_stats.scalar_type() == at::kFloat && stats.scalar_type() == at::kFloat,
              "stats and grad_stats must be float32");
  const int64_t groups = values.size(0);
  const int64_t n = values.size(1);
  const bool* vptr = valid.data_ptr<bool>();
  const float* sptr = stats.data_ptr<float>();
  const float* gsptr = grad_stats.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "normalize_disparity_backward_cpu", [&] {
    const scalar_t* x = values.data_ptr<scalar_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    scalar_t* gx = grad_values.data_ptr<scalar_t>();
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const scalar_t* xg = x + g * n;
        const scalar_t* gog = go + g * n;
        const bool* vg = vptr + g * n;
        scalar_t* gxg = gx + g * n;
        const float* st = sptr + g * kStats;
        const float count = st[4];
        if (!(count > 0.f)) {  // degenerate group: constant output, zero gradient
          for (int64_t i = 0; i < n; ++i) gxg[i] = static_cast<scalar_t>(0.f);
          continue;
        }
        const float shift = st[0], scale = st[1], lo = st[2], hi = st[3];
        // Per-group sums: G = sum g, Gy = sum g*y, S = sum sign(d - m), ties of lo and hi.
        double sum_g = 0.0, sum_gy = 0.0, sum_sign = 0.0;
        int64_t n_lo = 0, n_hi = 0;
        for (int64_t i = 0; i < n; ++i) {
          const float v = static_cast<float>(xg[i]);
          if (!(vg[i] && std::isfinite(v))) continue;
          const float gi = static_cast<float>(gog[i]);
          const float yi = 0.5f * (v - shift) / scale;
          sum_g += gi;
          sum_gy += static_cast<double>(gi) * yi;
          sum_sign += sign_of(v - shift);
          n_lo += (v == lo);
          n_hi += (v == hi);
        }
        const double s = scale;
        const double grad_scale = static_cast<double>(gsptr[g * kStats + 1]) - sum_gy / s;
        const double grad_shift =
            static_cast<double>(gsptr[g * kStats + 0]) - 0.5 * sum_g / s - grad_scale * sum_sign / count;
        const float w_lo = static_cast<float>(0.5 * grad_shift / std::max<int64_t>(n_lo, 1));
        const float w_hi = static_cast<float>(0.5 * grad_shift / std::max<int64_t>(n_hi, 1));
        const float half_inv_scale = static_cast<float>(0.5 / s);
        const float sign_coef = static_cast<float>(grad_scale / count);
        for (int64_t i = 0; i < n; ++i) {
          const float v = static_cast<float>(xg[i]);
          float r = 0.f;
          if (vg[i] && std::isfinite(v)) {
            r = static_cast<float>(gog[i]) * half_inv_scale + sign_coef * sign_of(v - shift);
            if (v == lo) r += w_lo;
            if (v == hi) r += w_hi;
          }
          gxg[i] = static_cast<scalar_t>(r);
        }
      }
    });
  });
}

}  // namespace rgbd
