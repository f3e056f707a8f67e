// 2-D max / avg pooling over channels-innermost tensors, forward into (a slice of) a buffer and backward by
// gathering (each input pixel sums over the windows that contain it: no atomics, deterministic).
//
// Max pooling records, per output element, the position of the maximum inside its window as int8 r * KW + s
// (first maximum in row-major window order; NaN counts as the maximum, the last NaN wins, as in PyTorch; a
// window's first in-bounds element is the initial candidate). Output sizes and avg divisors follow PyTorch exactly.
#include <ATen/ops/empty.h>

#include "common.cuh"
#include "ops.h"

namespace inception_kernels {

int64_t pool_out_size(int64_t in, int64_t k, int64_t pad, int64_t stride, bool ceil_mode) {
  // PyTorch's pooling_output_shape with dilation 1: floor (or ceil) of (in + 2 pad - k) / stride, plus one; in ceil
  // mode the last window must start inside the input or the left padding.
  const int64_t num = in + 2 * pad - k + (ceil_mode ? stride - 1 : 0);
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

namespace {

constexpr int kThreads = 256;

struct PoolGeom {
  int64_t N, C, H, W, P, Q;
  int KH, KW, SH, SW, PH, PW;
  bool count_include_pad;
};

// PyTorch's avg-pool divisor of output window (p, q).
__device__ __forceinline__ float avg_divisor(const PoolGeom& g, int64_t p, int64_t q) {
  int64_t hs = p * g.SH - g.PH, ws = q * g.SW - g.PW;
  int64_t he = min(hs + g.KH, g.H + g.PH), we = min(ws + g.KW, g.W + g.PW);
  if (g.count_include_pad) return static_cast<float>((he - hs) * (we - ws));
  hs = max(hs, int64_t{0});
  ws = max(ws, int64_t{0});
  he = min(he, g.H);
  we = min(we, g.W);
  return static_cast<float>((he - hs) * (we - ws));
}

// VEC int8 values packed into one integer store (a byte-wise struct store goes through local memory).
template <int VEC>
__device__ __forceinline__ void store_i8(int8_t* p, const int (&b)[VEC]) {
  using U = std::conditional_t<VEC == 8, uint64_t, std::conditional_t<VEC == 4, uint32_t,
                               std::conditional_t<VEC == 2, uint16_t, uint8_t>>>;
  static_assert(sizeof(U) == VEC, "VEC must be 1, 2, 4 or 8");
  U u = 0;
#pragma unroll
  for (int i = 0; i < VEC; ++i) u |= static_cast<U>(static_cast<uint8_t>(b[i])) << (8 * i);
  *reinterpret_cast<U*>(p) = u;
}

// One thread: VEC channels of one output pixel. MAX: the window maximum and its int8 position; else the average.
template <typename T, int VEC, bool MAX>
__global__ void __launch_bounds__(kThreads)
    pool_fwd_kernel(const T* __restrict__ x, Pix px, T* __restrict__ out, Pix po, int8_t* __restrict__ idx,
                    PoolGeom g) {
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  if (c0 >= g.C) return;
  const int64_t total = g.N * g.P * g.Q;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; o < total; o += step) {
    int64_t t, q, n, p;
    divmod(o, g.Q, t, q);
    divmod(t, g.P, n, p);
    const int64_t hs = p * g.SH - g.PH, ws = q * g.SW - g.PW;
    const int64_t h0 = max(hs, int64_t{0}), h1 = min(hs + g.KH, g.H);
    const int64_t w0 = max(ws, int64_t{0}), w1 = min(ws + g.KW, g.W);
    float acc[VEC];  // MAX: the best value so far; else the sum
    int bi[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      acc[i] = MAX ? -INFINITY : 0.f;
      bi[i] = -1;
    }
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t w = w0; w < w1; ++w) {
        float v[VEC];
        load_f<T, VEC>(x + px.at(n, h, w) + c0, v);
        const int pos = static_cast<int>((h - hs) * g.KW + (w - ws));
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          if (MAX) {  // branch-free select: a data-dependent branch here put acc/bi in local memory
            const bool take = (bi[i] < 0) | (v[i] > acc[i]) | isnan(v[i]);
            acc[i] = take ? v[i] : acc[i];
            bi[i] = take ? pos : bi[i];
          } else {
            acc[i] += v[i];
          }
        }
      }
    }
    if (MAX) {
      store_i8<VEC>(idx + o * g.C + c0, bi);
    } else {
      const float div = avg_divisor(g, p, q);
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = acc[i] / div;
    }
    store_f<T, VEC>(out + po.at(n, p, q) + c0, acc);
  }
}

// Output rows p whose window [p*S - pad, p*S - pad + K) contains input row h: [lo, hi).
__device__ __forceinline__ void windows_of(int64_t h, int K, int S, int pad, int64_t P, int64_t& lo, int64_t& hi) {
  lo = (h + pad < K) ? 0 : div_nonneg(h + pad - K, S) + 1;
  hi = min(div_nonneg(h + pad, S) + 1, P);
}

// One thread: VEC channels of one input pixel, summing the gradients of the windows that contain it (MAX: of
// those whose recorded argmax is this pixel; else each scaled by its window's 1 / divisor).
template <typename T, int VEC, bool MAX>
__global__ void __launch_bounds__(kThreads)
    pool_bwd_kernel(const T* __restrict__ gout, Pix pg, const int8_t* __restrict__ idx, Pix pi,
                    T* __restrict__ gx, Pix pdx, PoolGeom g) {
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  if (c0 >= g.C) return;
  const int64_t total = g.N * g.H * g.W;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; e < total; e += step) {
    int64_t t, w, n, h;
    divmod(e, g.W, t, w);
    divmod(t, g.H, n, h);
    int64_t p0, p1, q0, q1;
    windows_of(h, g.KH, g.SH, g.PH, g.P, p0, p1);
    windows_of(w, g.KW, g.SW, g.PW, g.Q, q0, q1);
    float acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t q = q0; q < q1; ++q) {
        float v[VEC];
        if (MAX) {
          const int want = static_cast<int>((h - (p * g.SH - g.PH)) * g.KW + (w - (q * g.SW - g.PW)));
          const Vec<int8_t, VEC> iv = *reinterpret_cast<const Vec<int8_t, VEC>*>(idx + pi.at(n, p, q) + c0);
          bool any = false;
#pragma unroll
          for (int i = 0; i < VEC; ++i) any |= (iv.v[i] == want);
          if (!any) continue;  // skip the gradient load: no channel of this window picked this pixel
          load_f<T, VEC>(gout + pg.at(n, p, q) + c0, v);
#pragma unroll
          for (int i = 0; i < VEC; ++i)
            if (iv.v[i] == want) acc[i] += v[i];
        } else {
          const float rcp = __frcp_rn(avg_divisor(g, p, q));  // one reciprocal per window (within 1 ulp of g / div)
          load_f<T, VEC>(gout + pg.at(n, p, q) + c0, v);
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[i] = fmaf(v[i], rcp, acc[i]);
        }
      }
    }
    store_f<T, VEC>(gx + pdx.at(n, h, w) + c0, acc);
  }
}

PoolGeom make_geom(const char* op, int64_t N, int64_t C, int64_t H, int64_t W, at::IntArrayRef kernel,
                   at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad) {
  TORCH_CHECK(kernel.size() == 2, op, ": kernel must have 2 elements, got ", kernel.size());
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 elements, got ", stride.size());
  TORCH_CHECK(padding.size() == 2, op, ": padding must have 2 elements, got ", padding.size());
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(kernel[d] > 0, op, ": kernel must be positive, got ", kernel);
    TORCH_CHECK(stride[d] > 0, op, ": stride must be positive, got ", stride);
    TORCH_CHECK(padding[d] >= 0 && padding[d] <= kernel[d] / 2, op,
                ": padding should be non-negative and at most half of the kernel size, got padding ", padding,
                " for kernel ", kernel);
  }
  PoolGeom g;
  g.N = N;
  g.C = C;
  g.H = H;
  g.W = W;
  g.KH = static_cast<int>(kernel[0]);
  g.KW = static_cast<int>(kernel[1]);
  g.SH = static_cast<int>(stride[0]);
  g.SW = static_cast<int>(stride[1]);
  g.PH = static_cast<int>(padding[0]);
  g.PW = static_cast<int>(padding[1]);
  g.count_include_pad = count_include_pad;
  g.P = pool_out_size(H, g.KH, g.PH, g.SH, ceil_mode);
  g.Q = pool_out_size(W, g.KW, g.PW, g.SW, ceil_mode);
  TORCH_CHECK(g.P > 0 && g.Q > 0, op, ": output size is too small: input ", H, "x", W, ", kernel ", kernel,
              ", stride ", stride, ", padding ", padding, " give ", g.P, "x", g.Q);
  return g;
}

}  // namespace

at::Tensor pool2d_fwd(const at::Tensor& x_, int64_t kind, at::IntArrayRef kernel, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad, const at::Tensor& out) {
  constexpr const char* op = "pool2d_fwd";
  TORCH_CHECK(kind == 0 || kind == 1, op, ": kind must be 0 (max) or 1 (avg), got ", kind);
  const at::Tensor x = input_act(x_, op, "x");
  check_act(out, op, "out");
  const int64_t N = x.size(0), C = x.size(1);
  const PoolGeom g = make_geom(op, N, C, x.size(2), x.size(3), kernel, stride, padding, ceil_mode, count_include_pad);
  if (kind == 0)
    TORCH_CHECK(g.KH * g.KW <= 127, op, ": max pooling window of ", g.KH * g.KW,
                " elements does not fit the int8 indices (at most 127)");
  const std::vector<int64_t> osz{N, C, g.P, g.Q};
  TORCH_CHECK(out.sizes() == at::IntArrayRef(osz), op, ": out must have shape ", osz, ", got ", out.sizes());
  TORCH_CHECK(out.device() == x.device(), op, ": out must be on x's device ", x.device(), ", got ", out.device());
  TORCH_CHECK(out.scalar_type() == x.scalar_type(), op, ": out must have x's dtype ", x.scalar_type(), ", got ",
              out.scalar_type());
  check_nonoverlap(out, op, "out");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor idx = kind == 0 ? empty_cl(osz, x.options().dtype(at::kChar)) : at::empty({0}, x.options().dtype(at::kChar));
  const int64_t total = N * g.P * g.Q;
  if (total == 0 || C == 0) return idx;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const Pix px = Pix::of(x), po = Pix::of(out);

  IK_DISPATCH(x.scalar_type(), op, [&] {
    auto run = [&](auto vec_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      const int64_t cvecs = ceil_div(C, VEC);
      const Tile t = tile_for(cvecs);
      const dim3 grid = elementwise_grid(total, cvecs, t), block(t.tx, t.ty);
      auto* kernel = kind == 0 ? pool_fwd_kernel<scalar_t, VEC, true> : pool_fwd_kernel<scalar_t, VEC, false>;
      kernel<<<grid, block, 0, stream>>>(x.const_data_ptr<scalar_t>(), px, out.data_ptr<scalar_t>(), po,
                                         kind == 0 ? idx.data_ptr<int8_t>() : nullptr, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    constexpr int V = kVec<scalar_t>;
    with_vec<scalar_t>(vec_ok_all({&x, &out}, V) && (kind == 1 || vec_ok(idx, V)), run);
  });
  return idx;
}

at::Tensor pool2d_bwd(const at::Tensor& grad_out_, const at::Tensor& indices_, int64_t kind,
                      at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                      bool count_include_pad, at::IntArrayRef input_size) {
  constexpr const char* op = "pool2d_bwd";
  TORCH_CHECK(kind == 0 || kind == 1, op, ": kind must be 0 (max) or 1 (avg), got ", kind);
  const at::Tensor grad_out = input_act(grad_out_, op, "grad_out");
  TORCH_CHECK(input_size.size() == 4 || input_size.size() == 2, op,
              ": input_size must be (N, C, H, W) or (H, W), got ", input_size);
  const int64_t N = grad_out.size(0), C = grad_out.size(1);
  const int64_t H = input_size[input_size.size() - 2], W = input_size[input_size.size() - 1];
  if (input_size.size() == 4)
    TORCH_CHECK(input_size[0] == N && input_size[1] == C, op, ": input_size ", input_size,
                " does not match grad_out's batch and channels ", grad_out.sizes());
  TORCH_CHECK(H > 0 && W > 0, op, ": input_size must be positive, got ", input_size);
  const PoolGeom g = make_geom(op, N, C, H, W, kernel, stride, padding, ceil_mode, count_include_pad);
  TORCH_CHECK(grad_out.size(2) == g.P && grad_out.size(3) == g.Q, op, ": grad_out's spatial size ",
              grad_out.sizes().slice(2), " does not match the pooled size (", g.P, ", ", g.Q, ") of input_size ",
              input_size);
  at::Tensor indices = indices_;
  if (kind == 0) {
    TORCH_CHECK(indices.defined() && indices.scalar_type() == at::kChar, op,
                ": indices must be the int8 tensor returned by pool2d_fwd");
    TORCH_CHECK(indices.sizes() == grad_out.sizes(), op, ": indices must have grad_out's shape ", grad_out.sizes(),
                ", got ", indices.sizes());
    TORCH_CHECK(indices.device() == grad_out.device(), op, ": indices must be on ", grad_out.device());
    if (indices.stride(1) != 1 && C != 1) indices = indices.contiguous(at::MemoryFormat::ChannelsLast);
  }
  const c10::cuda::CUDAGuard guard(grad_out.device());
  at::Tensor grad_x = empty_cl({N, C, H, W}, grad_out.options());
  const int64_t total = N * H * W;
  if (total == 0 || C == 0) return grad_x;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const Pix pg = Pix::of(grad_out), pdx = Pix::of(grad_x);

  IK_DISPATCH(grad_out.scalar_type(), op, [&] {
    auto run = [&](auto vec_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      const int64_t cvecs = ceil_div(C, VEC);
      const Tile t = tile_for(cvecs);
      const dim3 grid = elementwise_grid(total, cvecs, t), block(t.tx, t.ty);
      auto* kernel = kind == 0 ? pool_bwd_kernel<scalar_t, VEC, true> : pool_bwd_kernel<scalar_t, VEC, false>;
      kernel<<<grid, block, 0, stream>>>(grad_out.const_data_ptr<scalar_t>(), pg,
                                         kind == 0 ? indices.const_data_ptr<int8_t>() : nullptr,
                                         kind == 0 ? Pix::of(indices) : Pix{}, grad_x.data_ptr<scalar_t>(), pdx, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    constexpr int V = kVec<scalar_t>;
    with_vec<scalar_t>(vec_ok_all({&grad_out, &grad_x}, V) && (kind == 1 || vec_ok(indices, V)), run);
  });
  return grad_x;
}

}  // namespace inception_kernels
