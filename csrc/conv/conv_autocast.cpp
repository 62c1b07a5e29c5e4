// Autocast for the convolution ops, in C++: floating tensors on the autocast device (float64 left
// alone, index tensors untouched) cast to the region's dtype through ATen's cached_cast, so a weight
// (a float32 leaf that requires grad) is cast once per autocast region, not once per call; then the
// op runs with the autocast key excluded. One boxed kernel serves every op and device. (The Python
// kernels of pointsparse.ops.autocast remain for torch.compile's Python dispatcher.)
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace pointsparse {
namespace {

// Operands an epilogue reads in float32 whatever their dtype (a batch norm's per-channel scale and
// shift): left as they are, not rounded to half.
bool kept_as_given(const c10::Argument& argument) { return argument.name() == "scale" || argument.name() == "shift"; }

template <c10::DeviceType kDevice>
void autocast_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(kDevice);
  const std::vector<c10::Argument>& arguments = op.schema().arguments();
  const size_t first = stack->size() - arguments.size();
  for (size_t i = 0; i < arguments.size(); ++i) {
    c10::IValue& value = (*stack)[first + i];
    if (value.isTensor() && !kept_as_given(arguments[i])) {
      value = at::autocast::cached_cast(dtype, value.toTensor(), kDevice);
    }
  }
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  op.callBoxed(stack);
}

// The ops whose floating operands autocast casts (their Python fake kernels promise the cast dtype).
constexpr const char* kAutocastOps[] = {
    "conv_gather_scatter", "conv_weight_grad",          "conv_grouped",
    "conv_grouped_weight_grad", "conv_fused",           "conv_fused_weight_grad",
    "conv_implicit",       "conv_implicit_weight_grad", "conv_implicit_affine_relu",
};

template <c10::DeviceType kDevice>
void register_autocast(torch::Library& m) {
  for (const char* name : kAutocastOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&autocast_kernel<kDevice>>());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }

TORCH_LIBRARY_IMPL(pointsparse, AutocastCUDA, m) { register_autocast<c10::DeviceType::CUDA>(m); }

}  // namespace pointsparse
