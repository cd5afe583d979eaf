#include "device_model.h"

#include <fmt/format.h>

#include <algorithm>

namespace sliceserve::backends {

void DeviceModel::keep_layout(std::span<const Plan> compiled) {
  plans.assign(compiled.begin(), compiled.end());
  for (Plan& plan : plans) {
    for (PlanValue& value : plan.values) value.data = {};
  }
  for (DeviceWeightEntry& entry : weights.entries) {
    entry.source = {};
    entry.derived = {};
  }
}

size_t DeviceModel::arena_bytes() const {
  size_t bytes = kDeviceAlignment;
  for (const DeviceProgram& program : programs) bytes = std::max(bytes, program.arena_bytes);
  return bytes;
}

Status DeviceModel::check_batch(size_t index, size_t inputs, size_t outputs) const {
  if (index >= plans.size()) {
    return {ErrorCode::kInvalidArgument,
            fmt::format("no plan {} (the executor has {})", index, plans.size())};
  }
  if (inputs != plans[index].inputs.size() || outputs != plans[index].outputs.size()) {
    return {ErrorCode::kInvalidArgument,
            fmt::format("plan {} takes {} inputs and {} outputs, the call has {} and {}", index,
                        plans[index].inputs.size(), plans[index].outputs.size(), inputs, outputs)};
  }
  return Status::ok();
}

Status DeviceModel::check_items(size_t index, std::span<const Executor::ItemBuffers> items) const {
  if (items.empty()) return {ErrorCode::kInvalidArgument, "a batch of no items"};
  RETURN_IF_ERROR(check_batch(index, items[0].inputs.size(), items[0].outputs.size()));
  if (static_cast<int64_t>(items.size()) != plans[index].batch) {
    return {ErrorCode::kInvalidArgument,
            fmt::format("plan {} is for batch {}, the call has {} items", index, plans[index].batch,
                        items.size())};
  }
  return Status::ok();
}

DeviceAddress DeviceModel::address(size_t index, int value) const {
  const ValueLocation& at = programs[index].values[static_cast<size_t>(value)];
  switch (at.kind) {
    case ValueLocation::Kind::kArena:
      return arena + at.offset;
    case ValueLocation::Kind::kWeight:
      return weight_region + at.offset;
    case ValueLocation::Kind::kNone:
      break;
  }
  return 0;
}

DeviceTensor DeviceModel::tensor(size_t index, int value) const {
  if (value < 0) return {};
  const PlanValue& v = plans[index].values[static_cast<size_t>(value)];
  return {address(index, value), v.dtype, v.dims};
}

std::vector<DeviceAddress> DeviceModel::sums_of(size_t index, const PlanOp& op) const {
  std::vector<DeviceAddress> sums;
  for (const PostOp& post : op.post_ops) {
    if (post.kind == PostOp::Kind::kSum) sums.push_back(address(index, post.value));
  }
  return sums;
}

}  // namespace sliceserve::backends
