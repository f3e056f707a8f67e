// Activations are logical NCHW tensors with channels innermost (stride(1) == 1: channels_last, or channel slices of
// channels_last buffers, any N/H/W strides). Outputs must be so; a read-only input that is not (e.g. an NCHW
// gradient) is copied to channels_last first (correct, not fast).
//
// Host entry points of the CUDA C++ ops (defined in the .cu files, registered in bindings.cpp as
// torch.ops.inception_kernels_cuda.<name>). Plain C++: no CUDA headers, so bindings.cpp builds with the host compiler.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace inception_kernels {

// Per-channel mean and biased variance over N*H*W, fp32 (C,) each.
std::tuple<at::Tensor, at::Tensor> bn_stats(const at::Tensor& x);

// out = act((x - mean[c]) * invstd[c] * weight[c] + bias[c]); out may be a channel slice of a bigger buffer.
void bn_act_fwd(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, bool relu,
                const at::Tensor& out);

// Training-mode BN(+ReLU) backward through the batch statistics: (grad_x, grad_weight, grad_bias).
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_bwd(const at::Tensor& grad_out, const at::Tensor& x,
                                                          const at::Tensor& mean, const at::Tensor& invstd,
                                                          const c10::optional<at::Tensor>& weight,
                                                          const c10::optional<at::Tensor>& bias, bool relu);

// kind 0 = max (returns int8 window-argmax indices), 1 = avg (returns an empty tensor). Writes out.
at::Tensor pool2d_fwd(const at::Tensor& x, int64_t kind, at::IntArrayRef kernel, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad, const at::Tensor& out);

// grad_x (channels_last contiguous) by gathering over the windows containing each input pixel.
at::Tensor pool2d_bwd(const at::Tensor& grad_out, const at::Tensor& indices, int64_t kind, at::IntArrayRef kernel,
                      at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                      at::IntArrayRef input_size);

// out = act(x + scale * y).
void scaled_residual_fwd(const at::Tensor& x, const at::Tensor& y, double scale, bool relu, const at::Tensor& out);

// (grad_x, grad_y) = (g * mask, scale * g * mask), mask = out > 0 when relu.
std::tuple<at::Tensor, at::Tensor> scaled_residual_bwd(const at::Tensor& grad_out, const at::Tensor& out,
                                                       double scale, bool relu);

// Output size of one pooled dimension, exactly as PyTorch's max_pool2d / avg_pool2d (dilation 1).
int64_t pool_out_size(int64_t in, int64_t k, int64_t pad, int64_t stride, bool ceil_mode);

}  // namespace inception_kernels
