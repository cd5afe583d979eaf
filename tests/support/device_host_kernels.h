#pragma once
// The kernel library runs on the host: each kernel's body (backends/kernels/*.cuh, compiled for
// the host too) over every index of its params, as the GPU's grid would. For the kernels' tests
// (one launch on host tensors) and the executors' emulated-device tests (launches arriving through
// a fake cuLaunchKernel, maybe inside a captured graph, hence the copy, or hipModuleLaunchKernel).

#include <functional>

#include "device_kernels.h"

namespace sliceserve::testing {

// The work of one launch of `kernel` with the params struct at `params`, copied now (the
// launcher's struct is gone by the time a captured graph replays it).
inline std::function<void()> host_kernel(backends::DeviceKernel kernel, const void* params) {
  namespace k = backends::kernels;
  using backends::DeviceKernel;
  auto elements = [params]<typename Params>(void (*body)(const Params&, int64_t)) {
    const Params p = *static_cast<const Params*>(params);
    return std::function<void()>([p, body] {
      for (int64_t i = 0; i < p.count; ++i) body(p, i);
    });
  };
  // The block-per-row kernels combine the same accesses in another order; on the host both
  // shapes are the serial row.
  auto rows = [params]<typename Params>(void (*body)(const Params&, int64_t)) {
    const Params p = *static_cast<const Params*>(params);
    return std::function<void()>([p, body] {
      for (int64_t r = 0; r < p.rows; ++r) body(p, r);
    });
  };
  switch (kernel) {
    case DeviceKernel::ss_unary:
      return elements(&k::unary_element);
    case DeviceKernel::ss_channel_epilogue:
      return elements(&k::channel_epilogue_element);
    case DeviceKernel::ss_binary:
      return elements(&k::binary_element);
    case DeviceKernel::ss_lrn:
      return elements(&k::lrn_element);
    case DeviceKernel::ss_cast:
      return elements(&k::cast_element);
    case DeviceKernel::ss_fill:
      return elements(&k::fill_element);
    case DeviceKernel::ss_max_pool:
      return elements(&k::max_pool_element);
    case DeviceKernel::ss_average_pool:
      return elements(&k::average_pool_element);
    case DeviceKernel::ss_strided_copy:
      return elements(&k::strided_copy_element);
    case DeviceKernel::ss_pad:
      return elements(&k::pad_element);
    case DeviceKernel::ss_gather:
      return elements(&k::gather_element);
    case DeviceKernel::ss_reduce_mean_rows:
    case DeviceKernel::ss_reduce_mean_block:
      return rows(&k::reduce_mean_row);
    case DeviceKernel::ss_softmax_rows:
    case DeviceKernel::ss_softmax_block:
      return rows(&k::softmax_row);
    case DeviceKernel::ss_conv:
      return elements(&k::conv_element);
    case DeviceKernel::ss_gemm:
      return elements(&k::gemm_tile);
  }
  return [] {};
}

}  // namespace sliceserve::testing
