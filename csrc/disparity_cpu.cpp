// C++ CPU kernels for depth -> disparity and affine-invariant disparity normalization.
// Float32 values, double accumulators, for every input dtype. The valid mask is optional: without
// one, a value is valid when finite and > 0, tested here in the same pass that reads it.
// Median by radix selection over order-preserving uint32 keys of the float values:
// * many groups (per-frame): one thread per group; one pass compacts the valid values into a
//   buffer while building an 11-bit histogram of their top key bits, then two passes over the
//   shrinking candidate set (11 and 10 bits) pin the exact key;
// * fewer large groups than threads (one clip with per="clip", as a data loader calls it): every
//   thread works on each group, two passes of 16-bit histograms over the whole group.
// Edge values: the midpoint of the two middle values and the deviations are computed in double
// (no overflow near FLT_MAX); a group whose scale is subnormal, or whose deviations could reach
// FLT_MAX, is written through double arithmetic, so the output is finite for every finite input.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
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

// A value is used when the mask says so (or, without a mask, when it is > 0) and it is finite.
// Plain comparisons (NaN compares false) joined with `&`, and the mask read as bytes, so the
// loops using it have no branches and vectorize.
inline bool usable(float v, const uint8_t* vg, int64_t i) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  return vg ? ((vg[i] != 0) & (std::fabs(v) < inf)) : ((v > 0.f) & (v < inf));
}

// r where keep, else +0 (a bit mask rather than a branch, so the loop vectorizes).
inline float keep_if(bool keep, float r) {
  uint32_t b;
  std::memcpy(&b, &r, sizeof(b));
  b &= 0u - static_cast<uint32_t>(keep);
  std::memcpy(&r, &b, sizeof(r));
  return r;
}

// Per-group statistics and how to write the output.
struct GroupStats {
  int64_t count = 0;
  float lo = 0.f, hi = 0.f, shift = 0.f, scale = 1.f;
  bool ok = false;    // count > 0 and scale > 0
  bool wide = false;  // write through double: subnormal scale, or deviations near FLT_MAX
};

// The midpoint of the two middle values, rounded once (lo + hi in double cannot overflow).
inline float midpoint(float lo, float hi) {
  return static_cast<float>(0.5 * (static_cast<double>(lo) + static_cast<double>(hi)));
}

// Fill scale/ok/wide from the sum of |v - shift| (double) over the count valid values.
inline void finish_stats(GroupStats& s, double deviation_sum) {
  if (s.count == 0) return;
  s.scale = static_cast<float>(deviation_sum / static_cast<double>(s.count));
  s.ok = s.scale > 0.f;
  // Every |v - shift| <= count * scale: below 2^126 the float difference cannot overflow, and a
  // normal scale keeps 0.5 / scale finite.
  s.wide = s.ok && (!(s.scale >= FLT_MIN) ||
                    static_cast<double>(s.count) * s.scale > std::ldexp(1.0, 126));
}

// Write a group's stats row [shift, scale, lo, hi, count]; a degenerate group (no valid value,
// or zero deviation) gets shift 0, scale 1, count 0.
inline void write_stats(float* st, const GroupStats& s) {
  st[0] = s.ok ? s.shift : 0.f;
  st[1] = s.ok ? s.scale : 1.f;
  st[2] = s.lo;
  st[3] = s.hi;
  st[4] = s.ok ? static_cast<float>(s.count) : 0.f;
}

// normalized = 0.5 (v - shift) / scale on used values of [b, e), 0 elsewhere.
template <typename scalar_t>
void write_normalized(const scalar_t* xg, const uint8_t* vg, scalar_t* yg, int64_t b, int64_t e,
                      const GroupStats& s) {
  if (!s.ok) {
    for (int64_t i = b; i < e; ++i) yg[i] = static_cast<scalar_t>(0.f);
  } else if (!s.wide) {
    const float shift = s.shift;
    const float h = static_cast<float>(0.5 / static_cast<double>(s.scale));
    if (vg) {
      for (int64_t i = b; i < e; ++i) {
        const float v = static_cast<float>(xg[i]);
        yg[i] = static_cast<scalar_t>(keep_if(usable(v, vg, i), (v - shift) * h));
      }
    } else {  // the same loop with the mask test known at compile time
      for (int64_t i = b; i < e; ++i) {
        const float v = static_cast<float>(xg[i]);
        yg[i] = static_cast<scalar_t>(keep_if(usable(v, nullptr, i), (v - shift) * h));
      }
    }
  } else {
    const double shift = s.shift, h = 0.5 / static_cast<double>(s.scale);
    for (int64_t i = b; i < e; ++i) {
      const float v = static_cast<float>(xg[i]);
      yg[i] = static_cast<scalar_t>(
          usable(v, vg, i) ? static_cast<float>((static_cast<double>(v) - shift) * h) : 0.f);
    }
  }
}

// Order-preserving float <-> uint32 keys (negatives flipped, positives offset by the sign bit).
inline uint32_t float_key(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  // negative: flip every bit; positive: set the sign bit (branch-free)
  return u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);
}
inline float key_float(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

// ------------------------------------------------------------------ one thread per group

constexpr int kTopBits = 11, kMidBits = 11, kLowBits = 10;  // 32 key bits, top to bottom

// Index of the bin holding 0-based rank r of hist[0..bins), and r's rank inside it.
inline int pick_bin(const int64_t* hist, int bins, int64_t r, int64_t& inside) {
  int64_t before = 0;
  for (int b = 0; b < bins; ++b) {
    if (r < before + hist[b]) {
      inside = r - before;
      return b;
    }
    before += hist[b];
  }
  TORCH_CHECK(false, "normalize_disparity_cpu: rank ", r, " past the histogram (internal error)");
  return -1;
}

// Scratch of one thread: the group's valid values and the candidates of the second level.
struct SelectScratch {
  std::vector<float> values, candidates;
  std::vector<int64_t> hist;    // level 1 (summed), 2 and 3
  std::vector<uint32_t> parts;  // level 1: kParts interleaved histograms (no store-forward chains)
};
constexpr int kParts = 4;

// Median statistics of one group (values vals[0..count), histogram of their top key bits in
// top): lo and hi (the two middle order statistics), shift, then the deviation sum.
GroupStats group_median_stats(SelectScratch& sc, int64_t count) {
  GroupStats s;
  s.count = count;
  if (count == 0) return s;
  const float* vals = sc.values.data();
  const int64_t r = count / 2;  // rank of hi; lo has rank r - 1 for even counts
  int64_t inside = 0;
  const uint32_t b1 = static_cast<uint32_t>(pick_bin(sc.hist.data(), 1 << kTopBits, r, inside));
  // level 2: compact the candidates in bin b1, histogram their next 11 bits
  float* cand = sc.candidates.data();
  int64_t m = 0;
  for (int64_t i = 0; i < count; ++i) {
    cand[m] = vals[i];
    m += (float_key(vals[i]) >> (32 - kTopBits)) == b1;
  }
  int64_t* h2 = sc.hist.data() + (1 << kTopBits);
  std::fill(h2, h2 + (1 << kMidBits), 0);
  for (int64_t i = 0; i < m; ++i) ++h2[(float_key(cand[i]) >> kLowBits) & ((1u << kMidBits) - 1)];
  const uint32_t b2 = static_cast<uint32_t>(pick_bin(h2, 1 << kMidBits, inside, inside));
  const uint32_t prefix = (b1 << kMidBits) | b2;
  // level 3: the last 10 bits among the candidates sharing the 22-bit prefix
  int64_t m3 = 0;
  for (int64_t i = 0; i < m; ++i) {
    cand[m3] = cand[i];
    m3 += (float_key(cand[i]) >> kLowBits) == prefix;
  }
  int64_t* h3 = h2 + (1 << kMidBits);
  std::fill(h3, h3 + (1 << kLowBits), 0);
  for (int64_t i = 0; i < m3; ++i) ++h3[float_key(cand[i]) & ((1u << kLowBits) - 1)];
  const uint32_t b3 = static_cast<uint32_t>(pick_bin(h3, 1 << kLowBits, inside, inside));
  s.hi = key_float((prefix << kLowBits) | b3);
  if (count % 2 == 1 || inside > 0) {
    s.lo = s.hi;  // odd count, or rank r - 1 holds a value tied with hi
  } else {  // rank r - 1 is the largest value below hi
    const float hi = s.hi;
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    float lo[4] = {ninf, ninf, ninf, ninf};
    int64_t i = 0;
    for (; i + 4 <= count; i += 4)
      for (int j = 0; j < 4; ++j) {
        const float c = vals[i + j] < hi ? vals[i + j] : ninf;
        lo[j] = lo[j] > c ? lo[j] : c;
      }
    for (; i < count; ++i) lo[0] = std::max(lo[0], vals[i] < hi ? vals[i] : ninf);
    s.lo = std::max(std::max(lo[0], lo[1]), std::max(lo[2], lo[3]));
  }
  s.shift = midpoint(s.lo, s.hi);
  const double shift = s.shift;
  double acc[4] = {0.0, 0.0, 0.0, 0.0};  // four chains: the adds overlap
  int64_t i = 0;
  for (; i + 4 <= count; i += 4)
    for (int j = 0; j < 4; ++j) acc[j] += std::fabs(static_cast<double>(vals[i + j]) - shift);
  for (; i < count; ++i) acc[0] += std::fabs(static_cast<double>(vals[i]) - shift);
  finish_stats(s, (acc[0] + acc[1]) + (acc[2] + acc[3]));
  return s;
}

// One pass over a group: compact the valid values into vals, histogram their top key bits into
// kParts interleaved histograms (consecutive values often share a bin). Returns the count.
template <typename scalar_t>
int64_t compact_and_histogram(const scalar_t* xg, const uint8_t* vg, int64_t n, float* vals,
                              uint32_t* parts) {
  std::fill(parts, parts + kParts * (1 << kTopBits), 0u);
  int64_t count = 0, i = 0;
  for (; i + kParts <= n; i += kParts)
    for (int j = 0; j < kParts; ++j) {
      const float v = static_cast<float>(xg[i + j]);
      const bool use = usable(v, vg, i + j);
      vals[count] = v;
      count += use;
      parts[j * (1 << kTopBits) + (float_key(v) >> (32 - kTopBits))] += use;
    }
  for (; i < n; ++i) {
    const float v = static_cast<float>(xg[i]);
    const bool use = usable(v, vg, i);
    vals[count] = v;
    count += use;
    parts[float_key(v) >> (32 - kTopBits)] += use;
  }
  return count;
}

template <typename scalar_t>
void normalize_group(const scalar_t* xg, const uint8_t* vg, scalar_t* yg, float* st, int64_t n,
                     SelectScratch& sc) {
  const int64_t count = vg ? compact_and_histogram(xg, vg, n, sc.values.data(), sc.parts.data())
                           : compact_and_histogram(xg, static_cast<const uint8_t*>(nullptr), n,
                                                   sc.values.data(), sc.parts.data());
  int64_t* h1 = sc.hist.data();
  for (int b = 0; b < (1 << kTopBits); ++b) {
    int64_t c = 0;
    for (int j = 0; j < kParts; ++j) c += sc.parts[j * (1 << kTopBits) + b];
    h1[b] = c;
  }
  const GroupStats s = group_median_stats(sc, count);
  write_stats(st, s);
  write_normalized(xg, vg, yg, 0, n, s);
}

// ------------------------------------------------------------------ every thread on one group

constexpr int64_t kThreadedGroupMin = int64_t{1} << 17;  // below this, one thread per group
constexpr int kBins = 1 << 16;

// The bin holding 0-based rank r of a histogram, and r's rank inside that bin.
inline void find_rank(const std::vector<int64_t>& hist, int64_t r, int64_t& bin, int64_t& inside) {
  bin = pick_bin(hist.data(), kBins, r, inside);
}

// Normalize one group (row of n values) using every thread; writes y and st like
// normalize_group.
template <typename scalar_t>
void normalize_group_threaded(const scalar_t* xg, const uint8_t* vg, scalar_t* yg, float* st,
                              int64_t n) {
  const int threads = at::get_num_threads();
  const int64_t grain = std::max<int64_t>(n / threads, 1 << 12);
  auto value_at = [&](int64_t i, float& v) {
    v = static_cast<float>(xg[i]);
    return usable(v, vg, i);
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
  GroupStats s;
  for (int t = 0; t < threads; ++t)
    for (int b = 0; b < kBins; ++b) top[b] += local[static_cast<size_t>(t) * kBins + b];
  for (int b = 0; b < kBins; ++b) s.count += top[b];
  if (s.count > 0) {
    // ranks of the two middle order statistics (equal for odd counts)
    const int64_t r_hi = s.count / 2, r_lo = (s.count % 2 == 1) ? r_hi : r_hi - 1;
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
    s.hi = select(local, bin_hi, in_hi);
    s.lo = bin_lo == bin_hi ? select(local, bin_lo, in_lo) : select(local_lo, bin_lo, in_lo);
    s.shift = midpoint(s.lo, s.hi);
    const double shift = s.shift;
    std::vector<double> acc(threads, 0.0);
    at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
      double a = 0.0;
      float v;
      for (int64_t i = b; i < e; ++i)
        if (value_at(i, v)) a += std::fabs(static_cast<double>(v) - shift);
      acc[at::get_thread_num()] += a;
    });
    double total = 0.0;
    for (const double a : acc) total += a;
    finish_stats(s, total);
  }
  write_stats(st, s);
  at::parallel_for(0, n, grain,
                   [&](int64_t b, int64_t e) { write_normalized(xg, vg, yg, b, e, s); });
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
      for (int64_t i = begin; i < end; ++i)
        vptr[i] = depth_to_disparity_element(static_cast<float>(d[i]), lo, hi, out[i]);
    });
  });
}

void normalize_disparity_cpu(const at::Tensor& values, const std::optional<at::Tensor>& valid,
                             at::Tensor& out, at::Tensor& stats) {
  check_rows(values, "values");
  check_rows(out, "out");
  check_rows(stats, "stats");
  TORCH_CHECK(values.dim() == 2, "values must be (G, N)");
  TORCH_CHECK(out.sizes() == values.sizes(), "shape mismatch");
  const uint8_t* vptr = nullptr;  // bool mask read as bytes (0 or 1)
  if (valid.has_value() && valid->defined()) {
    check_rows(*valid, "valid");
    TORCH_CHECK(valid->sizes() == values.sizes(), "shape mismatch");
    TORCH_CHECK(valid->scalar_type() == at::kBool, "valid must be bool");
    vptr = reinterpret_cast<const uint8_t*>(valid->data_ptr<bool>());
  }
  TORCH_CHECK(stats.scalar_type() == at::kFloat && stats.size(0) == values.size(0) &&
                  stats.size(1) == kStats,
              "stats must be float32 (G, 5)");
  const int64_t groups = values.size(0);
  const int64_t n = values.size(1);
  float* sptr = stats.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "normalize_disparity_cpu", [&] {
    const scalar_t* x = values.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    // (the per-group path counts in uint32: groups of 2^31 values or more go threaded too)
    if ((groups < at::get_num_threads() && n >= kThreadedGroupMin) || n >= (int64_t{1} << 31)) {
      for (int64_t g = 0; g < groups; ++g)
        normalize_group_threaded<scalar_t>(x + g * n, vptr ? vptr + g * n : nullptr, y + g * n,
                                           sptr + g * kStats, n);
      return;
    }
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      SelectScratch sc;
      sc.values.resize(n);
      sc.candidates.resize(n);
      sc.hist.resize((1 << kTopBits) + (1 << kMidBits) + (1 << kLowBits));
      sc.parts.resize(kParts * (1 << kTopBits));
      for (int64_t g = g0; g < g1; ++g)
        normalize_group<scalar_t>(x + g * n, vptr ? vptr + g * n : nullptr, y + g * n,
                                  sptr + g * kStats, n, sc);
    });
  });
}

void normalize_disparity_backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_stats,
                                      const at::Tensor& values,
                                      const std::optional<at::Tensor>& valid,
                                      const at::Tensor& stats, at::Tensor& grad_values) {
  check_rows(grad_out, "grad_out");
  check_rows(grad_stats, "grad_stats");
  check_rows(values, "values");
  check_rows(stats, "stats");
  check_rows(grad_values, "grad_values");
  const uint8_t* vptr = nullptr;
  if (valid.has_value() && valid->defined()) {
    check_rows(*valid, "valid");
    TORCH_CHECK(valid->sizes() == values.sizes() && valid->scalar_type() == at::kBool,
                "valid must be bool and shaped like values");
    vptr = reinterpret_cast<const uint8_t*>(valid->data_ptr<bool>());
  }
  TORCH_CHECK(grad_out.scalar_type() == values.scalar_type() &&
                  grad_values.scalar_type() == values.scalar_type(),
              "grad dtypes must match values");
  TORCH_CHECK(grad_stats.scalar_type() == at::kFloat && stats.scalar_type() == at::kFloat,
              "stats and grad_stats must be float32");
  const int64_t groups = values.size(0);
  const int64_t n = values.size(1);
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
        const uint8_t* vg = vptr ? vptr + g * n : nullptr;
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
          if (!usable(v, vg, i)) continue;
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
          if (usable(v, vg, i)) {
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
