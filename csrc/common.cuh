// Shared helpers of the CUDA C++ ops: strided NHWC indexing, 16-byte vector loads/stores, dtype dispatch,
// argument checks and launch shapes.
//
// Activation tensors are logical NCHW with the channels innermost (stride(1) == 1, "channels_last"), possibly a
// channel slice of a larger buffer: arbitrary N/H/W strides and a channel offset folded into the data pointer.
// A "pixel" is one (n, h, w) position; its C channels are contiguous.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <limits>

namespace inception_kernels {

// ---------------------------------------------------------------------------------------------------------------
// Index math (int64; 32-bit division whenever both operands fit, which is a uniform branch and much cheaper).
// ---------------------------------------------------------------------------------------------------------------
__device__ __forceinline__ void divmod(int64_t a, int64_t d, int64_t& q, int64_t& r) {
  if (((static_cast<uint64_t>(a) | static_cast<uint64_t>(d)) >> 32) == 0) {
    const uint32_t qa = static_cast<uint32_t>(a) / static_cast<uint32_t>(d);
    q = qa;
    r = static_cast<uint32_t>(a) - qa * static_cast<uint32_t>(d);
  } else {
    q = a / d;
    r = a - q * d;
  }
}

// a / d for 0 <= a, 0 < d (32-bit division whenever both fit).
__device__ __forceinline__ int64_t div_nonneg(int64_t a, int64_t d) {
  if (((static_cast<uint64_t>(a) | static_cast<uint64_t>(d)) >> 32) == 0)
    return static_cast<uint32_t>(a) / static_cast<uint32_t>(d);
  return a / d;
}

// Strided pixel indexer of one 4-D channels-innermost tensor.
struct Pix {
  int64_t H, W;       // spatial sizes
  int64_t sN, sH, sW; // element strides
  bool flat;          // pixel p lives at p * sW (true for full channels_last tensors and their channel slices)

  static Pix of(const at::Tensor& t) {
    Pix p;
    p.H = t.size(2);
    p.W = t.size(3);
    p.sN = t.stride(0);
    p.sH = t.stride(2);
    p.sW = t.stride(3);
    p.flat = (p.H == 1 || p.sH == p.W * p.sW) && (t.size(0) == 1 || p.sN == p.H * p.W * p.sW);
    return p;
  }
  __device__ __forceinline__ int64_t at(int64_t n, int64_t h, int64_t w) const { return n * sN + h * sH + w * sW; }
  // Offset of flat pixel index p = (n * H + h) * W + w.
  __device__ __forceinline__ int64_t offset(int64_t p) const {
    if (flat) return p * sW;
    int64_t t, w, n, h;
    divmod(p, W, t, w);
    divmod(t, H, n, h);
    return at(n, h, w);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Vectors: VEC consecutive channels; 16 bytes for the widest instantiation, one element for the scalar fallback.
// ---------------------------------------------------------------------------------------------------------------
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_f(const T* p, float (&f)[N]) {
  const Vec<T, N> v = *reinterpret_cast<const Vec<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) f[i] = static_cast<float>(v.v[i]);
}

template <typename T, int N>
__device__ __forceinline__ void store_f(T* p, const float (&f)[N]) {
  Vec<T, N> v;
#pragma unroll
  for (int i = 0; i < N; ++i) v.v[i] = static_cast<T>(f[i]);
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// Per-channel fp32 parameter, or a default when the optional tensor is absent (nullptr).
__device__ __forceinline__ float chan_param(const float* p, int64_t c, float dflt) {
  return p == nullptr ? dflt : __ldg(p + c);
}

// Widest vector (elements) of 16 bytes for an element type.
inline int max_vec(const at::Tensor& t) { return static_cast<int>(16 / t.element_size()); }

// Whether `t` can be read/written VEC channels at a time: pointer aligned to the vector's bytes, C a multiple of
// VEC, and every N/H/W stride of a non-trivial dimension a multiple of VEC.
inline bool vec_ok(const at::Tensor& t, int vec) {
  if (vec == 1) return true;
  const auto bytes = static_cast<uint64_t>(vec) * t.element_size();
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes != 0) return false;
  if (t.size(1) % vec != 0) return false;
  for (int d : {0, 2, 3})
    if (t.size(d) > 1 && t.stride(d) % vec != 0) return false;
  return true;
}

// Whether every tensor of `ts` can be accessed `vec` channels at a time.
inline bool vec_ok_all(std::initializer_list<const at::Tensor*> ts, int vec) {
  for (auto* t : ts)
    if (!vec_ok(*t, vec)) return false;
  return true;
}

// Elements of T in one 16-byte vector.
template <typename T>
constexpr int kVec = static_cast<int>(16 / sizeof(T));

// run(std::integral_constant<int, VEC>{}) with the 16-byte width kVec<T> where `wide` holds (every tensor the
// launch touches passed vec_ok), else the scalar fallback VEC = 1: one instantiation of each.
template <typename T, typename F>
inline void with_vec(bool wide, F&& run) {
  if (wide)
    run(std::integral_constant<int, kVec<T>>{});
  else
    run(std::integral_constant<int, 1>{});
}

// ---------------------------------------------------------------------------------------------------------------
// Dtype dispatch: fp32, bf16, fp16 activations (one kernel instantiation per dtype).
// ---------------------------------------------------------------------------------------------------------------
#define IK_DISPATCH(DTYPE, NAME, ...)                                                                           \
  switch (DTYPE) {                                                                                              \
    case at::kFloat: {                                                                                          \
      using scalar_t = float;                                                                                   \
      __VA_ARGS__();                                                                                            \
    } break;                                                                                                    \
    case at::kBFloat16: {                                                                                       \
      using scalar_t = c10::BFloat16;                                                                           \
      __VA_ARGS__();                                                                                            \
    } break;                                                                                                    \
    case at::kHalf: {                                                                                           \
      using scalar_t = c10::Half;                                                                               \
      __VA_ARGS__();                                                                                            \
    } break;                                                                                                    \
    default:                                                                                                    \
      TORCH_CHECK(false, NAME, ": unsupported dtype ", DTYPE, " (expected float32, bfloat16 or float16)");   \
  }

// ---------------------------------------------------------------------------------------------------------------
// Argument checks (TORCH_CHECK raises RuntimeError in Python with the message).
// ---------------------------------------------------------------------------------------------------------------
inline void check_act(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got ", t.dim(), " dims");
  TORCH_CHECK(t.stride(1) == 1 || t.size(1) == 1, op, ": ", name,
              " must have channels innermost (channels_last memory, stride(1) == 1), got strides ", t.strides());
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op, ": ", name,
              " must be float32, bfloat16 or float16, got ", dt);
}

// A read-only activation: checked like check_act, but its channels need not be innermost -- then a channels_last
// copy is made (a correctness fallback for e.g. an NCHW gradient from autograd; not the fast path).
inline at::Tensor input_act(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got ", t.dim(), " dims");
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op, ": ", name,
              " must be float32, bfloat16 or float16, got ", dt);
  if (t.stride(1) == 1 || t.size(1) == 1) return t;
  return t.contiguous(at::MemoryFormat::ChannelsLast);
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* op, const char* na, const char* nb,
                       bool same_dtype = true) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": ", nb, " must have the shape of ", na, " ", a.sizes(), ", got ",
              b.sizes());
  TORCH_CHECK(a.device() == b.device(), op, ": ", nb, " must be on ", na, "'s device ", a.device(), ", got ",
              b.device());
  if (same_dtype)
    TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", nb, " must have ", na, "'s dtype ", a.scalar_type(),
                ", got ", b.scalar_type());
}

// Per-channel fp32 (C,) tensor; returns its data pointer (nullptr when absent and allowed).
inline const float* check_chan(const c10::optional<at::Tensor>& t, int64_t C, const at::Tensor& like, const char* op,
                               const char* name) {
  if (!t.has_value() || !t->defined()) return nullptr;
  TORCH_CHECK(t->device() == like.device(), op, ": ", name, " must be on device ", like.device(), ", got ",
              t->device());
  TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t->scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == C, op, ": ", name, " must have shape (", C, ",), got ", t->sizes());
  TORCH_CHECK(t->stride(0) == 1 || C == 1, op, ": ", name, " must be contiguous");
  return t->data_ptr<float>();
}

inline void check_nonoverlap(const at::Tensor& t, const char* op, const char* name) {
  // An output whose elements alias each other (e.g. an expanded tensor) would be written racily.
  for (int d = 0; d < 4; ++d)
    TORCH_CHECK(t.size(d) <= 1 || t.stride(d) != 0, op, ": ", name, " must not have zero strides (expanded)");
}

inline at::Tensor empty_cl(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::empty(sizes, opts.memory_format(at::MemoryFormat::ChannelsLast));
}

// ---------------------------------------------------------------------------------------------------------------
// Launch shapes: blockDim.x over channel vectors (up to a warp), blockDim.y over pixels; 256 threads.
// ---------------------------------------------------------------------------------------------------------------
struct Tile {
  int tx, ty;
};
inline Tile tile_for(int64_t cvecs, int threads = 256) {
  int tx = 1;
  while (tx < cvecs && tx < 32) tx <<= 1;
  return {tx, threads / tx};
}

inline int num_sms() {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid over (pixel blocks, channel tiles) for a grid-stride elementwise kernel.
inline dim3 elementwise_grid(int64_t pixels, int64_t cvecs, Tile t) {
  const int64_t gy = ceil_div(cvecs, t.tx);
  TORCH_CHECK(gy <= 65535, "too many channels for one launch: ", cvecs, " channel vectors");
  const int64_t gx = std::min<int64_t>(ceil_div(pixels, t.ty), int64_t{1} << 20);
  return dim3(static_cast<unsigned>(std::max<int64_t>(gx, 1)), static_cast<unsigned>(gy));
}

}  // namespace inception_kernels
