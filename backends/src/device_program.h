#pragma once
// Private to the device wings: what a GPU executor (CUDA's, HIP's) will launch for a model, decided
// on the host with no device or vendor library, so that it is unit-tested here and shared by both.
//
// For every plan (one per batch size) a DeviceProgram says where each value's bytes are on the
// device and which step computes each op:
//   - values: graph inputs, outputs and intermediates live in one activation arena (offsets
//     first-fit by lifetime, arena_layout.h; inputs are copied in before the first step and
//     outputs out after the last); constants live in the model's weight region; a Copy (reshape)
//     is no step at all, its output a view of its input's bytes.
//   - steps: Conv on cuDNN, fused with its bias and post-ops when they are what
//     cudnnConvolutionBiasActivationForward computes (relu(conv + bias) and
//     relu(conv + bias + z)), otherwise a plain convolution followed by the epilogue kernel (bias,
//     then the post-ops in order); Gemm and MatMul on cuBLAS (Gemm's C broadcast into Y first,
//     its post-ops by the epilogue kernel); a BatchNorm as a per-channel scale and shift computed
//     here from its constants; every other op one of the wing's own kernels (device_kernels.h).
//
// Weights are shared by all of a model's plans: one table of entries (the plans' constants, by
// name, and the values derived from them here: BatchNorm's scale/shift, zero biases for fused
// convolutions), each at an aligned offset of one region the WeightStore keeps.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/backends/plan.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

inline constexpr size_t kDeviceAlignment = 256;  // cudaMalloc's and hipMalloc's; cuDNN wants >= 16

struct DeviceWeightEntry {
  std::string name;  // the constant's value name, or "<op label>/<what>"
  size_t bytes = 0;
  size_t offset = 0;                  // in the weight region, kDeviceAlignment-aligned
  std::span<const std::byte> source;  // the plan's constant bytes (valid during compile), or
  std::vector<std::byte> derived;     // bytes computed here (BatchNorm scale/shift, zeros)

  std::span<const std::byte> contents() const {
    return derived.empty() ? source : std::span<const std::byte>(derived);
  }
};

struct DeviceWeightTable {
  std::vector<DeviceWeightEntry> entries;
  size_t bytes = 0;  // the region's size

  // The entry holding constant value `v` of `plan` (added on first use, shared by name and size
  // with the other plans).
  size_t constant(const PlanValue& value);
  // A derived entry (key unique per op and purpose), added once.
  size_t derived(const std::string& name, std::vector<std::byte> bytes);
  // A key that names the region's layout: "<device>-engine-<hash>" of the entries' names, sizes
  // and leading bytes (a worker must never map weights laid out for another model file).
  std::string region_key(std::string_view device) const;
  // Writes every entry at its offset (region.size() == bytes).
  void fill(std::span<std::byte> region) const;
};

// Where a value's bytes are.
struct ValueLocation {
  enum class Kind { kNone, kArena, kWeight };
  Kind kind = Kind::kNone;  // kNone: never read or written (an unused output)
  size_t offset = 0;        // in the arena or the weight region
};

struct DeviceStep {
  enum class Kind {
    kConv,       // a convolution, then the epilogue when `epilogue` is set
    kConvFused,  // relu(conv + bias [+ z]) (cudnnConvolutionBiasActivationForward)
    kGemm,       // [Y = broadcast(C)], the GEMM, then the epilogue when set
    kMatMul,     // a (strided batched) GEMM
    kBatchNorm,  // the scale/shift kernel with the op's unary post-ops
    kKernel,     // the kernel library's kernels for op.kind
  };
  Kind kind = Kind::kKernel;
  size_t op = 0;                  // index into the plan's ops
  size_t bias = SIZE_MAX;         // kConv/kConvFused: weight entry of the bias (zeros when absent)
  int z = -1;                     // kConvFused: the value added before the relu (-1: none)
  bool epilogue = false;          // kConv/kGemm: the epilogue kernel runs after the library call
  size_t scale_shift = SIZE_MAX;  // kBatchNorm: weight entry, C scales then C shifts
  size_t zero = SIZE_MAX;  // kGemm with C: zeros [M, 1] (Y = C + zeros broadcasts C to [M, N])
  // kMatMul: Y[b] = A[b] x B[b] for b < batch, with A (m x k) and B (k x n) row-major and
  // batch strides in elements (0: broadcast).
  int64_t m = 0, n = 0, k = 0, batch = 1, stride_a = 0, stride_b = 0;
};

struct DeviceProgram {
  int64_t batch = 0;
  std::vector<ValueLocation> values;  // per plan value
  std::vector<DeviceStep> steps;
  size_t arena_bytes = 0;
};

// Plans a model's programs, one per plan, adding their weights to `weights`. Errors name the
// op's label and `device` ("cuda", "hip") and say what the executors do not support (an fp32-only
// op on another dtype, asymmetric convolution padding, MaxPool's Indices, training BatchNorm, ...).
Result<std::vector<DeviceProgram>> plan_device_programs(std::span<const Plan> plans,
                                                        DeviceWeightTable& weights,
                                                        std::string_view device);

}  // namespace sliceserve::backends
