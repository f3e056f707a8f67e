// Registration of the CUDA C++ ops as torch.ops.inception_kernels_cuda.<name> (schemas + CUDA kernels).
//
// Built two ways from the same sources:
//  - setup.py: the Python extension module inception_kernels._C (IK_PYTHON_MODULE defined). Importing it runs the
//    static registrations below; the module itself is an empty stub.
//  - CMakeLists.txt: a plain shared library (no Python) for C++ users; load it from Python with
//    torch.ops.load_library(path).
#ifdef IK_PYTHON_MODULE
#include <Python.h>
#endif

#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(inception_kernels_cuda, m) {
  m.def("bn_stats(Tensor x) -> (Tensor mean, Tensor var)");
  m.def(
      "bn_act_fwd(Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, bool relu, Tensor(a!) out) "
      "-> ()");
  m.def(
      "bn_act_bwd(Tensor grad_out, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, bool relu) "
      "-> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "pool2d_fwd(Tensor x, int kind, int[2] kernel, int[2] stride, int[2] padding, bool ceil_mode, "
      "bool count_include_pad, Tensor(a!) out) -> Tensor");
  m.def(
      "pool2d_bwd(Tensor grad_out, Tensor indices, int kind, int[2] kernel, int[2] stride, int[2] padding, "
      "bool ceil_mode, bool count_include_pad, int[] input_size) -> Tensor");
  m.def("scaled_residual_fwd(Tensor x, Tensor y, float scale, bool relu, Tensor(a!) out) -> ()");
  m.def("scaled_residual_bwd(Tensor grad_out, Tensor out, float scale, bool relu) -> (Tensor grad_x, Tensor grad_y)");
}

TORCH_LIBRARY_IMPL(inception_kernels_cuda, CUDA, m) {
  m.impl("bn_stats", &inception_kernels::bn_stats);
  m.impl("bn_act_fwd", &inception_kernels::bn_act_fwd);
  m.impl("bn_act_bwd", &inception_kernels::bn_act_bwd);
  m.impl("pool2d_fwd", &inception_kernels::pool2d_fwd);
  m.impl("pool2d_bwd", &inception_kernels::pool2d_bwd);
  m.impl("scaled_residual_fwd", &inception_kernels::scaled_residual_fwd);
  m.impl("scaled_residual_bwd", &inception_kernels::scaled_residual_bwd);
}

#ifdef IK_PYTHON_MODULE
// `import inception_kernels._C` loads this library (running the registrations above) and gets an empty module.
static PyModuleDef ik_module = {PyModuleDef_HEAD_INIT, "_C",
                                "CUDA C++ ops of inception-kernels, registered as torch.ops.inception_kernels_cuda",
                                -1, nullptr};

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&ik_module); }
#endif
