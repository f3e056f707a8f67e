// Batch-norm ops: batch statistics (Welford/Chan, deterministic), BN-apply + ReLU into a (slice of a) buffer, and
// the training-mode backward through the batch statistics.
//
// Reductions over N*H*W are two-level and deterministic: kernel 1 gives each block a fixed contiguous range of
// pixels and a tile of channels, reduces per thread then across the block in a fixed tree, and writes one partial
// per (block, channel); kernel 2 combines the partials of each channel in a fixed order. No float atomics.
#include <ATen/ops/empty.h>

#include "common.cuh"
#include "ops.h"

namespace inception_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kFinalX = 32;  // finalize block: 32 channels (coalesced) x 8 rows of partials
constexpr int kFinalY = 8;

// Chan's parallel combine of (count, mean, M2): a <- a (+) b.
template <typename CountT>
__device__ __forceinline__ void chan_combine(CountT& na, float& ma, float& qa, CountT nb, float mb, float qb) {
  if (nb == 0) return;
  if (na == 0) {
    na = nb;
    ma = mb;
    qa = qb;
    return;
  }
  const CountT n = na + nb;
  const float fb = static_cast<float>(static_cast<double>(nb) / static_cast<double>(n));
  const float d = mb - ma;
  ma = ma + d * fb;
  qa = qa + qb + d * d * static_cast<float>(na) * fb;
  na = n;
}

// Number of pixels row `ty` of a block handles: p = start + ty, start + ty + step, ... < end.
__device__ __forceinline__ int64_t rows_count(int64_t len, int ty, int step) {
  return len > ty ? (len - ty + step - 1) / step : 0;
}

// ---- stats ----------------------------------------------------------------------------------------------------
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    bn_stats_partial_kernel(const T* __restrict__ x, Pix px, int64_t M, int64_t C, int64_t chunk,
                            float* __restrict__ pmean, float* __restrict__ pm2) {
  extern __shared__ float smem[];  // [ty][tx*VEC] means, then [ty][tx*VEC] M2s, then [ty] counts
  const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x, by = blockDim.y;
  const int width = bx * VEC;
  float* s_mean = smem;
  float* s_m2 = smem + by * width;
  float* s_cnt = smem + 2 * by * width;

  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * bx + tx) * VEC;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = min(M, start + chunk);

  float mean[VEC], m2[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) mean[i] = m2[i] = 0.f;
  float cnt = 0.f;
  if (c0 < C) {
    for (int64_t p = start + ty; p < end; p += by) {
      float v[VEC];
      load_f<T, VEC>(x + px.offset(p) + c0, v);
      cnt += 1.f;
      const float r = 1.f / cnt;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float d = v[i] - mean[i];
        mean[i] += d * r;
        m2[i] += d * (v[i] - mean[i]);
      }
    }
  } else {
    cnt = static_cast<float>(rows_count(end - start, ty, by));  // keep counts consistent; values unused
  }
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    s_mean[ty * width + tx * VEC + i] = mean[i];
    s_m2[ty * width + tx * VEC + i] = m2[i];
  }
  if (tx == 0) s_cnt[ty] = cnt;
  __syncthreads();
  // Fixed tree over the rows: row ty absorbs row ty + s.
  for (int s = by / 2; s > 0; s >>= 1) {
    float nb = 0.f, mb[VEC], qb[VEC];
    if (ty < s) {
      nb = s_cnt[ty + s];
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        mb[i] = s_mean[(ty + s) * width + tx * VEC + i];
        qb[i] = s_m2[(ty + s) * width + tx * VEC + i];
      }
    }
    __syncthreads();
    if (ty < s) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        float na = cnt;
        chan_combine<float>(na, mean[i], m2[i], nb, mb[i], qb[i]);
        s_mean[ty * width + tx * VEC + i] = mean[i];
        s_m2[ty * width + tx * VEC + i] = m2[i];
      }
      cnt += nb;
      if (tx == 0) s_cnt[ty] = cnt;
    }
    __syncthreads();
  }
  if (ty == 0 && c0 < C) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      pmean[blockIdx.x * C + c0 + i] = mean[i];
      pm2[blockIdx.x * C + c0 + i] = m2[i];
    }
  }
}

__global__ void __launch_bounds__(kFinalX* kFinalY)
    bn_stats_finalize_kernel(const float* __restrict__ pmean, const float* __restrict__ pm2, int64_t P, int64_t M,
                             int64_t chunk, int64_t C, float* __restrict__ mean, float* __restrict__ var) {
  __shared__ double s_n[kFinalY][kFinalX];
  __shared__ float s_m[kFinalY][kFinalX], s_q[kFinalY][kFinalX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalX + tx;
  double n = 0;
  float m = 0.f, q = 0.f;
  if (c < C) {
    for (int64_t b = ty; b < P; b += kFinalY) {
      const double nb = static_cast<double>(min(chunk, M - b * chunk));
      chan_combine<double>(n, m, q, nb, pmean[b * C + c], pm2[b * C + c]);
    }
  }
  s_n[ty][tx] = n;
  s_m[ty][tx] = m;
  s_q[ty][tx] = q;
  __syncthreads();
  if (ty == 0 && c < C) {
    for (int r = 1; r < kFinalY; ++r) chan_combine<double>(n, m, q, s_n[r][tx], s_m[r][tx], s_q[r][tx]);
    mean[c] = m;
    var[c] = static_cast<float>(static_cast<double>(q) / static_cast<double>(M));
  }
}

// Number of pixel blocks of a two-level reduction: enough blocks to fill the GPU, each block at least one pixel
// per row, and at most 2^24 pixels per block (so per-block fp32 counts stay exact).
int64_t reduction_blocks(int64_t M, int64_t ctiles, int ty) {
  int64_t P = std::max<int64_t>(1, 4 * static_cast<int64_t>(num_sms()) / ctiles);
  P = std::min<int64_t>(P, ceil_div(M, ty));
  P = std::max<int64_t>(P, ceil_div(M, int64_t{1} << 24));
  return std::max<int64_t>(P, 1);
}

// Launch shape of a two-level per-channel reduction over M pixels of C channels, VEC channels per thread:
// P pixel blocks of `chunk` pixels (the last may be shorter) x `ctiles` channel tiles of t.tx threads.
struct ReductionGrid {
  Tile t;
  int64_t cvecs, ctiles, chunk, P;
  dim3 grid() const { return dim3(static_cast<unsigned>(P), static_cast<unsigned>(ctiles)); }
  dim3 block() const { return dim3(t.tx, t.ty); }
};

ReductionGrid reduction_grid(int64_t M, int64_t C, int vec, const char* op) {
  ReductionGrid r;
  r.cvecs = ceil_div(C, vec);
  r.t = tile_for(r.cvecs);
  r.ctiles = ceil_div(r.cvecs, r.t.tx);
  TORCH_CHECK(r.ctiles <= 65535, op, ": too many channels (", C, ")");
  r.chunk = ceil_div(M, reduction_blocks(M, r.ctiles, r.t.ty));
  r.P = ceil_div(M, r.chunk);
  return r;
}

// ---- apply (+ReLU) ----------------------------------------------------------------------------------------------
__device__ __forceinline__ float bn_affine(float x, float mean, float invstd, float w, float b) {
  // Same expression in forward and backward, so the recomputed ReLU mask matches the forward's.
  return __fmaf_rn(__fmul_rn(__fsub_rn(x, mean), invstd), w, b);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    bn_act_fwd_kernel(const T* __restrict__ x, Pix px, T* __restrict__ out, Pix po, int64_t M, int64_t C,
                      const float* __restrict__ mean, const float* __restrict__ invstd, const float* weight,
                      const float* bias, bool relu) {
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  if (c0 >= C) return;
  float mu[VEC], is[VEC], w[VEC], b[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    mu[i] = __ldg(mean + c0 + i);
    is[i] = __ldg(invstd + c0 + i);
    w[i] = chan_param(weight, c0 + i, 1.f);
    b[i] = chan_param(bias, c0 + i, 0.f);
  }
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; p < M; p += step) {
    float v[VEC];
    load_f<T, VEC>(x + px.offset(p) + c0, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float z = bn_affine(v[i], mu[i], is[i], w[i], b[i]);
      v[i] = relu ? (z > 0.f ? z : 0.f) : z;
    }
    store_f<T, VEC>(out + po.offset(p) + c0, v);
  }
}

// ---- backward ---------------------------------------------------------------------------------------------------
// Partial sums per (pixel block, channel) of g' = grad_out * mask and g' * xhat.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    bn_bwd_partial_kernel(const T* __restrict__ g, Pix pg, const T* __restrict__ x, Pix px, int64_t M, int64_t C,
                          int64_t chunk, const float* __restrict__ mean, const float* __restrict__ invstd,
                          const float* weight, const float* bias, bool relu, float* __restrict__ psum_g,
                          float* __restrict__ psum_gx) {
  extern __shared__ float smem[];  // [ty][tx*VEC] sums of g', then of g'*xhat
  const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x, by = blockDim.y;
  const int width = bx * VEC;
  float* s_g = smem;
  float* s_gx = smem + by * width;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * bx + tx) * VEC;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = min(M, start + chunk);

  float sg[VEC], sgx[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) sg[i] = sgx[i] = 0.f;
  if (c0 < C) {
    float mu[VEC], is[VEC], w[VEC], b[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      mu[i] = __ldg(mean + c0 + i);
      is[i] = __ldg(invstd + c0 + i);
      w[i] = chan_param(weight, c0 + i, 1.f);
      b[i] = chan_param(bias, c0 + i, 0.f);
    }
    for (int64_t p = start + ty; p < end; p += by) {
      float gv[VEC], xv[VEC];
      load_f<T, VEC>(g + pg.offset(p) + c0, gv);
      load_f<T, VEC>(x + px.offset(p) + c0, xv);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float xhat = __fmul_rn(__fsub_rn(xv[i], mu[i]), is[i]);
        const float gm = (!relu || bn_affine(xv[i], mu[i], is[i], w[i], b[i]) > 0.f) ? gv[i] : 0.f;
        sg[i] += gm;
        sgx[i] = fmaf(gm, xhat, sgx[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    s_g[ty * width + tx * VEC + i] = sg[i];
    s_gx[ty * width + tx * VEC + i] = sgx[i];
  }
  __syncthreads();
  for (int s = by / 2; s > 0; s >>= 1) {
    if (ty < s) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        s_g[ty * width + tx * VEC + i] += s_g[(ty + s) * width + tx * VEC + i];
        s_gx[ty * width + tx * VEC + i] += s_gx[(ty + s) * width + tx * VEC + i];
      }
    }
    __syncthreads();
  }
  if (ty == 0 && c0 < C) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      psum_g[blockIdx.x * C + c0 + i] = s_g[tx * VEC + i];
      psum_gx[blockIdx.x * C + c0 + i] = s_gx[tx * VEC + i];
    }
  }
}

__global__ void __launch_bounds__(kFinalX* kFinalY)
    bn_bwd_finalize_kernel(const float* __restrict__ psum_g, const float* __restrict__ psum_gx, int64_t P,
                           int64_t C, float* __restrict__ grad_bias, float* __restrict__ grad_weight) {
  __shared__ float s_g[kFinalY][kFinalX], s_gx[kFinalY][kFinalX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalX + tx;
  float a = 0.f, b = 0.f;
  if (c < C) {
    for (int64_t p = ty; p < P; p += kFinalY) {
      a += psum_g[p * C + c];
      b += psum_gx[p * C + c];
    }
  }
  s_g[ty][tx] = a;
  s_gx[ty][tx] = b;
  __syncthreads();
  if (ty == 0 && c < C) {
    for (int r = 1; r < kFinalY; ++r) {
      a += s_g[r][tx];
      b += s_gx[r][tx];
    }
    grad_bias[c] = a;
    grad_weight[c] = b;
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    bn_bwd_dx_kernel(const T* __restrict__ g, Pix pg, const T* __restrict__ x, Pix px, T* __restrict__ dx, Pix pdx,
                     int64_t M, int64_t C, const float* __restrict__ mean, const float* __restrict__ invstd,
                     const float* weight, const float* bias, bool relu, const float* __restrict__ grad_bias,
                     const float* __restrict__ grad_weight) {
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  if (c0 >= C) return;
  const float inv_m = static_cast<float>(1.0 / static_cast<double>(M));
  float mu[VEC], is[VEC], w[VEC], b[VEC], k[VEC], mb[VEC], mw[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    mu[i] = __ldg(mean + c0 + i);
    is[i] = __ldg(invstd + c0 + i);
    w[i] = chan_param(weight, c0 + i, 1.f);
    b[i] = chan_param(bias, c0 + i, 0.f);
    k[i] = w[i] * is[i];
    mb[i] = grad_bias[c0 + i] * inv_m;
    mw[i] = grad_weight[c0 + i] * inv_m;
  }
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; p < M; p += step) {
    float gv[VEC], xv[VEC];
    load_f<T, VEC>(g + pg.offset(p) + c0, gv);
    load_f<T, VEC>(x + px.offset(p) + c0, xv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float xhat = __fmul_rn(__fsub_rn(xv[i], mu[i]), is[i]);
      const float gm = (!relu || bn_affine(xv[i], mu[i], is[i], w[i], b[i]) > 0.f) ? gv[i] : 0.f;
      gv[i] = k[i] * (gm - mb[i] - xhat * mw[i]);
    }
    store_f<T, VEC>(dx + pdx.offset(p) + c0, gv);
  }
}

}  // namespace

// ---- host ------------------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> bn_stats(const at::Tensor& x_) {
  constexpr const char* op = "bn_stats";
  const at::Tensor x = input_act(x_, op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), M = N * x.size(2) * x.size(3);
  TORCH_CHECK(M > 0, op, ": x has no pixels (N*H*W == 0), statistics are undefined");
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor mean = at::empty({C}, fopts), var = at::empty({C}, fopts);
  if (C == 0) return {mean, var};
  auto stream = c10::cuda::getCurrentCUDAStream();
  const Pix px = Pix::of(x);

  IK_DISPATCH(x.scalar_type(), op, [&] {
    auto run = [&](auto vec_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      const ReductionGrid r = reduction_grid(M, C, VEC, op);
      const Tile t = r.t;
      const int64_t P = r.P, chunk = r.chunk, cvecs = r.cvecs;
      at::Tensor part = at::empty({2, P, C}, fopts);
      float* pmean = part.data_ptr<float>();
      float* pm2 = pmean + P * C;
      const size_t shmem = (2 * static_cast<size_t>(t.ty) * t.tx * VEC + t.ty) * sizeof(float);
      bn_stats_partial_kernel<scalar_t, VEC>
          <<<r.grid(), r.block(), shmem, stream>>>(
              x.const_data_ptr<scalar_t>(), px, M, C, chunk, pmean, pm2);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bn_stats_finalize_kernel<<<static_cast<unsigned>(ceil_div(C, kFinalX)), dim3(kFinalX, kFinalY), 0,
                                 stream>>>(pmean, pm2, P, M, chunk, C, mean.data_ptr<float>(),
                                           var.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    constexpr int V = kVec<scalar_t>;
    with_vec<scalar_t>(vec_ok(x, V), run);
  });
  return {mean, var};
}

void bn_act_fwd(const at::Tensor& x_, const at::Tensor& mean, const at::Tensor& invstd,
                const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, bool relu,
                const at::Tensor& out) {
  constexpr const char* op = "bn_act_fwd";
  const at::Tensor x = input_act(x_, op, "x");
  check_act(out, op, "out");
  check_same(x, out, op, "x", "out");
  check_nonoverlap(out, op, "out");
  const int64_t C = x.size(1), M = x.size(0) * x.size(2) * x.size(3);
  const float* mp = check_chan(mean, C, x, op, "mean");
  const float* ip = check_chan(invstd, C, x, op, "invstd");
  const float* wp = check_chan(weight, C, x, op, "weight");
  const float* bp = check_chan(bias, C, x, op, "bias");
  if (M == 0 || C == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const Pix px = Pix::of(x), po = Pix::of(out);

  IK_DISPATCH(x.scalar_type(), op, [&] {
    auto run = [&](auto vec_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      const int64_t cvecs = ceil_div(C, VEC);
      const Tile t = tile_for(cvecs);
      bn_act_fwd_kernel<scalar_t, VEC><<<elementwise_grid(M, cvecs, t), dim3(t.tx, t.ty), 0, stream>>>(
          x.const_data_ptr<scalar_t>(), px, out.data_ptr<scalar_t>(), po, M, C, mp, ip, wp, bp, relu);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    constexpr int V = kVec<scalar_t>;
    with_vec<scalar_t>(vec_ok_all({&x, &out}, V), run);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_bwd(const at::Tensor& grad_out_, const at::Tensor& x_,
                                                          const at::Tensor& mean, const at::Tensor& invstd,
                                                          const c10::optional<at::Tensor>& weight,
                                                          const c10::optional<at::Tensor>& bias, bool relu) {
  constexpr const char* op = "bn_act_bwd";
  const at::Tensor x = input_act(x_, op, "x");
  const at::Tensor grad_out = input_act(grad_out_, op, "grad_out");
  check_same(x, grad_out, op, "x", "grad_out");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), M = N * H * W;
  const float* mp = check_chan(mean, C, x, op, "mean");
  const float* ip = check_chan(invstd, C, x, op, "invstd");
  const float* wp = check_chan(weight, C, x, op, "weight");
  const float* bp = check_chan(bias, C, x, op, "bias");
  TORCH_CHECK(M > 0, op, ": x has no pixels (N*H*W == 0)");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor grad_x = empty_cl({N, C, H, W}, x.options());
  at::Tensor grad_weight = at::empty({C}, fopts), grad_bias = at::empty({C}, fopts);
  if (C == 0) return {grad_x, grad_weight, grad_bias};
  auto stream = c10::cuda::getCurrentCUDAStream();
  const Pix pg = Pix::of(grad_out), px = Pix::of(x), pdx = Pix::of(grad_x);

  IK_DISPATCH(x.scalar_type(), op, [&] {
    auto run = [&](auto vec_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      const ReductionGrid r = reduction_grid(M, C, VEC, op);
      const Tile t = r.t;
      const int64_t P = r.P, chunk = r.chunk, cvecs = r.cvecs;
      at::Tensor part = at::empty({2, P, C}, fopts);
      float* psg = part.data_ptr<float>();
      float* psgx = psg + P * C;
      const size_t shmem = 2 * static_cast<size_t>(t.ty) * t.tx * VEC * sizeof(float);
      const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      bn_bwd_partial_kernel<scalar_t, VEC>
          <<<r.grid(), r.block(), shmem, stream>>>(
              gp, pg, xp, px, M, C, chunk, mp, ip, wp, bp, relu, psg, psgx);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bn_bwd_finalize_kernel<<<static_cast<unsigned>(ceil_div(C, kFinalX)), dim3(kFinalX, kFinalY), 0, stream>>>(
          psg, psgx, P, C, grad_bias.data_ptr<float>(), grad_weight.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bn_bwd_dx_kernel<scalar_t, VEC><<<elementwise_grid(M, cvecs, t), dim3(t.tx, t.ty), 0, stream>>>(
          gp, pg, xp, px, grad_x.data_ptr<scalar_t>(), pdx, M, C, mp, ip, wp, bp, relu,
          grad_bias.const_data_ptr<float>(), grad_weight.const_data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    constexpr int V = kVec<scalar_t>;
    with_vec<scalar_t>(vec_ok_all({&x, &grad_out, &grad_x}, V), run);
  });
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace inception_kernels
