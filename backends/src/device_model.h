#pragma once
// Private to the device wings: what a GPU executor (CUDA's, HIP's) keeps of a model once compiled,
// and the host side of a call on it that is the same for both: a call's arguments checked against
// its plan, and where a value's bytes are. The executors keep only their API calls.

#include <cstddef>
#include <span>
#include <vector>

#include "device_kernels.h"
#include "device_program.h"
#include "sliceserve/backends/executor.h"
#include "sliceserve/backends/plan.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

struct DeviceModel {
  // The plans without their constants' bytes (valid only during compile), and their programs.
  std::vector<Plan> plans;
  std::vector<DeviceProgram> programs;
  DeviceWeightTable weights;
  DeviceAddress arena = 0;          // the activation arena's device address
  DeviceAddress weight_region = 0;  // the weight region's device address

  // Once the weights are on the device: keeps copies of `compiled` without their constants'
  // bytes, and only the offsets of the weight table (its sources pointed into `compiled`).
  void keep_layout(std::span<const Plan> compiled);
  // The arena every program fits in (never empty: an allocation of 0 bytes may fail).
  size_t arena_bytes() const;

  // Plan `index` exists and takes `inputs` inputs and `outputs` outputs.
  Status check_batch(size_t index, size_t inputs, size_t outputs) const;
  // A run_items call: at least one item, as many as plan `index`'s batch, each with its tensors
  // (the first item's counts are checked).
  Status check_items(size_t index, std::span<const Executor::ItemBuffers> items) const;

  DeviceAddress address(size_t index, int value) const;
  DeviceAddress weight(size_t entry) const { return weight_region + weights.entries[entry].offset; }
  // Value `value` of plan `index` (-1, an absent optional tensor: an empty one).
  DeviceTensor tensor(size_t index, int value) const;
  // The addresses of op's sum post-ops' values, in order.
  std::vector<DeviceAddress> sums_of(size_t index, const PlanOp& op) const;
};

}  // namespace sliceserve::backends
