// Scaled residual add: out = act(x + scale * y), and its backward (ReLU mask from the saved output).
#include <ATen/ops/empty.h>

#include "common.cuh"
#include "ops.h"

namespace inception_kernels {
namespace {

constexpr int kThreads = 256;

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    residual_fwd_kernel(const T* __restrict__ x, Pix px, const T* __restrict__ y, Pix py, T* __restrict__ out,
                        Pix po, int64_t M, int64_t C, float scale, bool relu) {
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  if (c0 >= C) return;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; p < M; p += step) {
    float a[VEC], b[VEC];
    load_f<T, VEC>(x + px.offset(p) + c0, a);
    load_f<T, VEC>(y + py.offset(p) + c0, b);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float z = fmaf(scale, b[i], a[i]);
      a[i] = relu ? (z > 0.f ? z : 0.f) : z;
    }
    store_f<T, VEC>(out + po.offset(p) + c0, a);
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    residual_bwd_kernel(const T* __restrict__ g, Pix pg, const T* __restrict__ out, Pix po, T* __restrict__ gx,
                        T* __restrict__ gy, Pix pd, int64_t M, int64_t C, float scale, bool relu) {
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  if (c0 >= C) return;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; p < M; p += step) {
    float a[VEC], b[VEC];
    load_f<T, VEC>(g + pg.offset(p) + c0, a);
    if (relu) {
      float o[VEC];
      load_f<T, VEC>(out + po.offset(p) + c0, o);
#pragma unroll
      for (int i = 0; i < VEC; ++i) a[i] = o[i] > 0.f ? a[i] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) b[i] = scale * a[i];
    const int64_t d = pd.offset(p) + c0;
    store_f<T, VEC>(gx + d, a);
    store_f<T, VEC>(gy + d, b);
  }
}

}  // namespace

void scaled_residual_fwd(const at::Tensor& x_, const at::Tensor& y_, double scale, bool relu,
                         const at::Tensor& out) {
  constexpr const char* op = "scaled_residual_fwd";
  const at::Tensor x = input_act(x_, op, "x");
  const at::Tensor y = input_act(y_, op, "y");
  check_act(out, op, "out");
  check_same(x, y, op, "x", "y");
  check_same(x, out, op, "x", "out");
  check_nonoverlap(out, op, "out");
  const int64_t C = x.size(1), M = x.size(0) * x.size(2) * x.size(3);
  if (M == 0 || C == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const Pix px = Pix::of(x), py = Pix::of(y), po = Pix::of(out);
  IK_DISPATCH(x.scalar_type(), op, [&] {
    auto run = [&](auto vec_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      const int64_t cvecs = ceil_div(C, VEC);
      const Tile t = tile_for(cvecs);
      residual_fwd_kernel<scalar_t, VEC><<<elementwise_grid(M, cvecs, t), dim3(t.tx, t.ty), 0, stream>>>(
          x.const_data_ptr<scalar_t>(), px, y.const_data_ptr<scalar_t>(), py, out.data_ptr<scalar_t>(), po, M, C,
          static_cast<float>(scale), relu);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    constexpr int V = kVec<scalar_t>;
    with_vec<scalar_t>(vec_ok_all({&x, &y, &out}, V), run);
  });
}

std::tuple<at::Tensor, at::Tensor> scaled_residual_bwd(const at::Tensor& grad_out_, const at::Tensor& out_,
                                                       double scale, bool relu) {
  constexpr const char* op = "scaled_residual_bwd";
  const at::Tensor grad_out = input_act(grad_out_, op, "grad_out");
  const at::Tensor out = input_act(out_, op, "out");
  check_same(grad_out, out, op, "grad_out", "out");
  const int64_t N = grad_out.size(0), C = grad_out.size(1), H = grad_out.size(2), W = grad_out.size(3);
  const int64_t M = N * H * W;
  const c10::cuda::CUDAGuard guard(grad_out.device());
  at::Tensor gx = empty_cl({N, C, H, W}, grad_out.options()), gy = empty_cl({N, C, H, W}, grad_out.options());
  if (M == 0 || C == 0) return {gx, gy};
  auto stream = c10::cuda::getCurrentCUDAStream();
  const Pix pg = Pix::of(grad_out), po = Pix::of(out), pd = Pix::of(gx);
  IK_DISPATCH(grad_out.scalar_type(), op, [&] {
    auto run = [&](auto vec_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      const int64_t cvecs = ceil_div(C, VEC);
      const Tile t = tile_for(cvecs);
      residual_bwd_kernel<scalar_t, VEC><<<elementwise_grid(M, cvecs, t), dim3(t.tx, t.ty), 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), pg, out.const_data_ptr<scalar_t>(), po, gx.data_ptr<scalar_t>(),
          gy.data_ptr<scalar_t>(), pd, M, C, static_cast<float>(scale), relu);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    constexpr int V = kVec<scalar_t>;
    with_vec<scalar_t>(vec_ok_all({&grad_out, &gx, &gy}, V) && (!relu || vec_ok(out, V)), run);
  });
  return {gx, gy};
}

}  // namespace inception_kernels
