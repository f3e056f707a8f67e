// ctest executable for the CUDA C++ ops (CMakeLists.txt):
//   csrc_test registration   the seven ops are registered with CUDA kernels (runs anywhere)
//   csrc_test gpu            each op vs an ATen reference in fp64 on channel slices; exit 77 (skipped) without a GPU
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cmath>
#include <iostream>
#include <string>

#include "ops.h"

namespace ik = inception_kernels;

static int failures = 0;

static void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "ok    " : "FAIL  ") << what << std::endl;
  if (!ok) ++failures;
}

static void expect_close(const at::Tensor& got, const at::Tensor& want, double rtol, double atol,
                         const std::string& what) {
  const auto g = got.to(at::kCPU, at::kDouble), w = want.to(at::kCPU, at::kDouble);
  const bool same_shape = g.sizes() == w.sizes();
  const double err = same_shape ? (g - w).abs().max().item<double>() : INFINITY;
  const bool ok = same_shape && at::allclose(g, w, rtol, atol);
  std::cout << (ok ? "ok    " : "FAIL  ") << what << " (max abs err " << err << ")" << std::endl;
  if (!ok) ++failures;
}

static int registration() {
  const char* names[] = {"bn_stats",   "bn_act_fwd", "bn_act_bwd",          "pool2d_fwd",
                         "pool2d_bwd", "scaled_residual_fwd", "scaled_residual_bwd"};
  for (const char* name : names) {
    auto op = c10::Dispatcher::singleton().findSchema({std::string("inception_kernels_cuda::") + name, ""});
    expect(op.has_value(), std::string("schema inception_kernels_cuda::") + name);
    if (op) expect(op->hasKernelForDispatchKey(c10::DispatchKey::CUDA), std::string(name) + " has a CUDA kernel");
  }
  return failures == 0 ? 0 : 1;
}

// A channels_last buffer of `total` channels, NaN everywhere, and the view of channels [off, off + C).
static at::Tensor slice_of_poisoned(int64_t N, int64_t C, int64_t H, int64_t W, int64_t off, int64_t total,
                                    at::ScalarType dt, at::Tensor* buffer = nullptr) {
  auto buf = at::full({N, total, H, W}, NAN, at::TensorOptions().device(at::kCUDA).dtype(dt))
                 .contiguous(at::MemoryFormat::ChannelsLast);
  if (buffer) *buffer = buf;
  return buf.narrow(1, off, C);
}

static bool outside_is_nan(const at::Tensor& buf, int64_t off, int64_t C) {
  const auto total = buf.size(1);
  bool ok = true;
  if (off > 0) ok &= buf.narrow(1, 0, off).isnan().all().item<bool>();
  if (off + C < total) ok &= buf.narrow(1, off + C, total - off - C).isnan().all().item<bool>();
  return ok;
}

static int gpu() {
  if (c10::cuda::device_count() == 0) {
    std::cout << "SKIP: no CUDA GPU here; csrc_ops_gpu needs one (run ctest on a GPU machine)" << std::endl;
    return 77;
  }
  at::manual_seed(0);
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (auto dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const std::string tag = std::string(" [") + c10::toString(dt) + "]";
    const double rtol = dt == at::kFloat ? 1e-5 : 2e-2, atol = dt == at::kFloat ? 1e-5 : 2e-2;
    const int64_t N = 2, C = 13, H = 9, W = 7;
    // x: channels [3, 16) of a 24-channel buffer.
    auto x = slice_of_poisoned(N, C, H, W, 3, 24, dt);
    x.copy_(at::randn({N, C, H, W}, f32) * 2 + 0.5);
    const auto xd = x.to(at::kDouble);

    auto [mean, var] = ik::bn_stats(x);
    expect_close(mean, xd.mean({0, 2, 3}), 1e-5, 1e-5, "bn_stats mean" + tag);
    expect_close(var, xd.var({0, 2, 3}, /*unbiased=*/false), 1e-4, 1e-5, "bn_stats var" + tag);

    const auto invstd = (var + 1e-5).rsqrt();
    const auto w = at::randn({C}, f32), b = at::randn({C}, f32);
    auto v = [](const at::Tensor& t) { return t.to(at::kDouble).view({1, -1, 1, 1}); };
    at::Tensor obuf;
    auto out = slice_of_poisoned(N, C, H, W, 5, 20, dt, &obuf);
    ik::bn_act_fwd(x, mean, invstd, w, b, true, out);
    const auto z = (xd - v(mean)) * v(invstd) * v(w) + v(b);
    expect_close(out, z.relu(), rtol, atol, "bn_act_fwd" + tag);
    expect(outside_is_nan(obuf, 5, C), "bn_act_fwd writes only its slice" + tag);

    auto g = at::randn({N, C, H, W}, f32).to(dt).contiguous(at::MemoryFormat::ChannelsLast);
    auto [gx, gw, gb] = ik::bn_act_bwd(g, x, mean, invstd, w, b, true);
    const double M = N * H * W;
    const auto xhat = (xd - v(mean)) * v(invstd);
    const auto gm = g.to(at::kDouble) * (z > 0);
    const auto gb_ref = gm.sum({0, 2, 3}), gw_ref = (gm * xhat).sum({0, 2, 3});
    const auto gx_ref = v(w) * v(invstd) * (gm - v(gb_ref) / M - xhat * v(gw_ref) / M);
    expect_close(gb, gb_ref, 1e-4, 1e-3, "bn_act_bwd grad_bias" + tag);
    expect_close(gw, gw_ref, 1e-4, 1e-3, "bn_act_bwd grad_weight" + tag);
    expect_close(gx, gx_ref, rtol, atol, "bn_act_bwd grad_x" + tag);

    // Pooling: max 3x3/s2 (ceil mode) and avg 3x3/s1/p1 both ways of count_include_pad.
    {
      const int64_t P = ik::pool_out_size(H, 3, 0, 2, true), Q = ik::pool_out_size(W, 3, 0, 2, true);
      auto pout = slice_of_poisoned(N, C, P, Q, 1, 16, dt, &obuf);
      auto idx = ik::pool2d_fwd(x, 0, {3, 3}, {2, 2}, {0, 0}, true, true, pout);
      auto [ref, ref_idx] = at::max_pool2d_with_indices(xd, {3, 3}, {2, 2}, {0, 0}, {1, 1}, true);
      expect_close(pout, ref, 0, 0, "max_pool fwd" + tag);
      expect(outside_is_nan(obuf, 1, C), "max_pool fwd writes only its slice" + tag);
      auto gp = at::randn({N, C, P, Q}, f32).to(dt).contiguous(at::MemoryFormat::ChannelsLast);
      auto gx_pool = ik::pool2d_bwd(gp, idx, 0, {3, 3}, {2, 2}, {0, 0}, true, true, {N, C, H, W});
      auto gref = at::max_pool2d_with_indices_backward(gp.to(at::kDouble), xd, {3, 3}, {2, 2}, {0, 0}, {1, 1}, true,
                                                       ref_idx);
      expect_close(gx_pool, gref, rtol, atol, "max_pool bwd" + tag);
    }
    for (bool cip : {true, false}) {
      const std::string t2 = tag + (cip ? " count_include_pad" : " exclude_pad");
      auto pout = slice_of_poisoned(N, C, H, W, 2, 18, dt, &obuf);
      auto none = ik::pool2d_fwd(x, 1, {3, 3}, {1, 1}, {1, 1}, false, cip, pout);
      expect(none.numel() == 0, "avg_pool returns an empty tensor" + t2);
      expect_close(pout, at::avg_pool2d(xd, {3, 3}, {1, 1}, {1, 1}, false, cip), rtol, atol, "avg_pool fwd" + t2);
      expect(outside_is_nan(obuf, 2, C), "avg_pool fwd writes only its slice" + t2);
      auto gp = at::randn({N, C, H, W}, f32).to(dt).contiguous(at::MemoryFormat::ChannelsLast);
      auto gx_pool = ik::pool2d_bwd(gp, at::Tensor(), 1, {3, 3}, {1, 1}, {1, 1}, false, cip, {H, W});
      auto gref = at::avg_pool2d_backward(gp.to(at::kDouble), xd, {3, 3}, {1, 1}, {1, 1}, false, cip, std::nullopt);
      expect_close(gx_pool, gref, rtol, atol, "avg_pool bwd" + t2);
    }

    // Scaled residual.
    {
      auto y = at::randn({N, C, H, W}, f32).to(dt).contiguous(at::MemoryFormat::ChannelsLast);
      auto rout = slice_of_poisoned(N, C, H, W, 4, 17, dt, &obuf);
      ik::scaled_residual_fwd(x, y, 0.17, true, rout);
      const auto rref = (xd + 0.17 * y.to(at::kDouble)).relu();
      expect_close(rout, rref, rtol, atol, "scaled_residual fwd" + tag);
      expect(outside_is_nan(obuf, 4, C), "scaled_residual fwd writes only its slice" + tag);
      auto [rgx, rgy] = ik::scaled_residual_bwd(g, rout, 0.17, true);
      const auto mask = (rout.to(at::kDouble) > 0);
      expect_close(rgx, g.to(at::kDouble) * mask, rtol, atol, "scaled_residual bwd grad_x" + tag);
      expect_close(rgy, 0.17 * g.to(at::kDouble) * mask, rtol, atol, "scaled_residual bwd grad_y" + tag);
    }
  }
  std::cout << (failures == 0 ? "all GPU checks passed" : "GPU checks FAILED") << std::endl;
  return failures == 0 ? 0 : 1;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "registration";
  try {
    if (mode == "registration") return registration();
    if (mode == "gpu") return gpu();
  } catch (const std::exception& e) {
    std::cerr << "FAIL  exception: " << e.what() << std::endl;
    return 1;
  }
  std::cerr << "usage: csrc_test registration|gpu" << std::endl;
  return 2;
}
