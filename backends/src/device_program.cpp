#include "device_program.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>

#include "device_kernels.h"
#include "sliceserve/backends/arena_layout.h"

namespace sliceserve::backends {
namespace {

size_t align_up(size_t n) {
  return (n + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
}

std::vector<std::byte> float_bytes(const std::vector<float>& values) {
  std::vector<std::byte> bytes(values.size() * sizeof(float));
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

std::vector<float> floats_of(const PlanValue& value) {
  std::vector<float> out(static_cast<size_t>(value.element_count()));
  std::memcpy(out.data(), value.data.data(), out.size() * sizeof(float));
  return out;
}

// Ops whose kernels compute in fp32 only; the others move elements of any size.
bool computes_in_fp32(OpKind kind) {
  switch (kind) {
    case OpKind::kCopy:
    case OpKind::kTranspose:
    case OpKind::kConcat:
    case OpKind::kSplit:
    case OpKind::kSlice:
    case OpKind::kPad:
    case OpKind::kGather:
    case OpKind::kCast:
    case OpKind::kFill:
      return false;
    default:
      return true;
  }
}

// Plans one model's program for one plan.
class ProgramPlanner {
 public:
  ProgramPlanner(const Plan& plan, DeviceWeightTable& weights, std::string_view device)
      : plan_(plan), weights_(weights), device_(device), root_(plan.values.size()) {
    std::iota(root_.begin(), root_.end(), 0);
  }

  Result<DeviceProgram> plan() {
    program_.batch = plan_.batch;
    for (size_t i = 0; i < plan_.ops.size(); ++i) RETURN_IF_ERROR(plan_op(i));
    place_values();
    return std::move(program_);
  }

 private:
  const PlanValue& value(int v) const { return plan_.values[static_cast<size_t>(v)]; }

  Status unsupported(const PlanOp& op, const std::string& why) const {
    return {ErrorCode::kInvalidArgument,
            fmt::format("{}: not supported on {}: {}", op.label, device_, why)};
  }

  Status check_fp32(const PlanOp& op) const {
    for (const std::vector<int>* list : {&op.inputs, &op.outputs}) {
      for (int v : *list) {
        if (v >= 0 && value(v).dtype != DataType::kFp32) {
          return unsupported(op, fmt::format("'{}' is {}; this op runs in FP32 only", value(v).name,
                                             shm::data_type_name(value(v).dtype)));
        }
      }
    }
    return Status::ok();
  }

  Status plan_op(size_t index) {
    const PlanOp& op = plan_.ops[index];
    if (op.kind == OpKind::kMaxPool && op.outputs.size() > 1 && op.outputs[1] >= 0) {
      return unsupported(op, "MaxPool's Indices output");
    }
    if (computes_in_fp32(op.kind)) RETURN_IF_ERROR(check_fp32(op));
    DeviceStep step;
    step.op = index;
    switch (op.kind) {
      case OpKind::kCopy:
        // A reshape: the output is a view of the input's bytes, no step.
        root_[static_cast<size_t>(op.outputs[0])] = find(op.inputs[0]);
        return Status::ok();
      case OpKind::kConv:
        RETURN_IF_ERROR(plan_conv(op, step));
        break;
      case OpKind::kGemm:
        step.kind = DeviceStep::Kind::kGemm;
        step.epilogue = !op.post_ops.empty();
        if (op.inputs.size() > 2 && op.inputs[2] >= 0 && op.beta != 0.0F) {
          // Y = C + zeros[M, 1] broadcasts C to Y's [M, N] with the binary kernel.
          const int64_t rows = value(op.outputs[0]).dims[0];
          step.zero = weights_.derived(fmt::format("zeros [{},1]", rows),
                                       std::vector<std::byte>(size_t(rows) * sizeof(float)));
        }
        break;
      case OpKind::kMatMul:
        RETURN_IF_ERROR(plan_matmul(op, step));
        break;
      case OpKind::kBatchNorm:
        RETURN_IF_ERROR(plan_batch_norm(op, step));
        break;
      case OpKind::kMaxPool:
      case OpKind::kAveragePool:
        if (op.kernel.size() != 1 && op.kernel.size() != 2) {
          return unsupported(op, fmt::format("{}-D pooling (1-D and 2-D only)", op.kernel.size()));
        }
        break;
      default:
        break;
    }
    record_step(op, step);
    return Status::ok();
  }

  Status plan_conv(const PlanOp& op, DeviceStep& step) {
    const size_t spatial = op.kernel.size();
    if (spatial < 1 || spatial > 3) {
      return unsupported(op, fmt::format("{}-D convolution (1-D to 3-D only)", spatial));
    }
    for (size_t d = 0; d < spatial; ++d) {
      if (op.pads[d] != op.pads[d + spatial]) {
        return unsupported(op, "asymmetric padding (the convolutions pad both sides alike)");
      }
    }
    const PlanValue& w = value(op.inputs[1]);
    if (!w.is_constant) return unsupported(op, "weights that are not constants");
    const int64_t channels = w.dims[0];
    if (op.inputs.size() > 2 && op.inputs[2] >= 0) {
      if (!value(op.inputs[2]).is_constant) return unsupported(op, "a bias that is not constant");
      step.bias = weights_.constant(value(op.inputs[2]));
    }
    // relu(conv + bias) and relu(conv + bias + z) are one cuDNN call (HIP fuses every epilogue).
    const auto& post = op.post_ops;
    const bool relu_last = !post.empty() && post.back().kind == PostOp::Kind::kUnary &&
                           post.back().unary == UnaryAlg::kRelu;
    const bool fusable =
        relu_last && (post.size() == 1 || (post.size() == 2 && post[0].kind == PostOp::Kind::kSum));
    if (fusable) {
      step.kind = DeviceStep::Kind::kConvFused;
      if (post.size() == 2) step.z = post[0].value;
      if (step.bias == SIZE_MAX) {
        step.bias =
            weights_.derived(op.label + "/zero bias",
                             float_bytes(std::vector<float>(static_cast<size_t>(channels), 0.0F)));
      }
    } else {
      step.kind = DeviceStep::Kind::kConv;
      step.epilogue = step.bias != SIZE_MAX || !post.empty();
    }
    return Status::ok();
  }

  Status plan_matmul(const PlanOp& op, DeviceStep& step) {
    const std::vector<int64_t>& a = value(op.inputs[0]).dims;
    const std::vector<int64_t>& b = value(op.inputs[1]).dims;
    if (a.size() < 2 || b.size() < 2) {
      return unsupported(op, "MatMul of a rank-1 operand");
    }
    auto batch_of = [](const std::vector<int64_t>& dims) {
      return std::accumulate(dims.begin(), dims.end() - 2, int64_t{1}, std::multiplies<>());
    };
    step.kind = DeviceStep::Kind::kMatMul;
    step.m = a[a.size() - 2];
    step.k = a.back();
    step.n = b.back();
    const int64_t batch_a = batch_of(a);
    const int64_t batch_b = batch_of(b);
    if (batch_b == 1) {
      // Every A matrix times one B: one GEMM over the stacked rows of A.
      step.m *= batch_a;
      step.batch = 1;
    } else if (batch_a == batch_b && std::equal(a.begin(), a.end() - 2, b.begin(), b.end() - 2)) {
      step.batch = batch_a;
      step.stride_a = step.m * step.k;
      step.stride_b = step.k * step.n;
    } else if (batch_a == 1) {
      step.batch = batch_b;
      step.stride_a = 0;
      step.stride_b = step.k * step.n;
    } else {
      return unsupported(op, "MatMul batch dimensions that broadcast partially");
    }
    return Status::ok();
  }

  Status plan_batch_norm(const PlanOp& op, DeviceStep& step) {
    if (op.training) return unsupported(op, "BatchNormalization in training mode");
    for (size_t i = 1; i <= 4; ++i) {
      if (!value(op.inputs[i]).is_constant) {
        return unsupported(op, "BatchNormalization statistics that are not constants");
      }
    }
    const std::vector<float> gamma = floats_of(value(op.inputs[1]));
    const std::vector<float> beta = floats_of(value(op.inputs[2]));
    const std::vector<float> mean = floats_of(value(op.inputs[3]));
    const std::vector<float> var = floats_of(value(op.inputs[4]));
    std::vector<float> scale_shift(gamma.size() * 2);
    const std::span<float> all(scale_shift);
    fold_batch_norm(op.epsilon, gamma, beta, mean, var, all.first(gamma.size()),
                    all.last(gamma.size()));
    step.kind = DeviceStep::Kind::kBatchNorm;
    step.scale_shift = weights_.derived(op.label + "/scale shift", float_bytes(scale_shift));
    return Status::ok();
  }

  void record_step(const PlanOp& op, DeviceStep step) {
    const int s = static_cast<int>(program_.steps.size());
    // A BatchNorm reads its statistics from the scale/shift entry, not from their constants.
    const size_t inputs_read = step.kind == DeviceStep::Kind::kBatchNorm ? 1 : op.inputs.size();
    for (size_t i = 0; i < inputs_read; ++i) {
      if (op.inputs[i] >= 0) touch(op.inputs[i], s);
    }
    for (int v : op.outputs) {
      if (v >= 0) touch(v, s);
    }
    for (const PostOp& post : op.post_ops) {
      if (post.kind == PostOp::Kind::kSum) touch(post.value, s);
    }
    program_.steps.push_back(step);
  }

  int find(int v) {
    while (root_[static_cast<size_t>(v)] != v) v = root_[static_cast<size_t>(v)];
    return v;
  }

  void touch(int v, int step) {
    auto [it, inserted] = use_.try_emplace(v, std::pair<int, int>{step, step});
    if (!inserted) {
      it->second.first = std::min(it->second.first, step);
      it->second.second = std::max(it->second.second, step);
    }
  }

  // Gives each value its location: constants their weight entry, the rest an arena block per
  // root (a root and its views share one block that lives from the first use of any of them to
  // the last). Inputs are live from before the first step, outputs to after the last.
  void place_values() {
    const int before = -1;
    const int after = static_cast<int>(program_.steps.size());
    for (int v : plan_.inputs) touch(v, before);
    for (int v : plan_.outputs) touch(v, after);
    program_.values.assign(plan_.values.size(), {});
    std::vector<ArenaBlock> blocks;
    std::vector<int> block_of(plan_.values.size(), -1);  // per root
    for (size_t v = 0; v < plan_.values.size(); ++v) {
      const int root = find(static_cast<int>(v));
      const auto use = use_.find(static_cast<int>(v));
      if (use == use_.end()) continue;
      const PlanValue& base = plan_.values[static_cast<size_t>(root)];
      if (base.is_constant) {
        program_.values[v] = {ValueLocation::Kind::kWeight,
                              weights_.entries[weights_.constant(base)].offset};
        continue;
      }
      int& block = block_of[static_cast<size_t>(root)];
      if (block < 0) {
        block = static_cast<int>(blocks.size());
        blocks.push_back({.bytes = base.byte_size(),
                          .first = use->second.first + 1,
                          .last = use->second.second + 1});
      }
      // Shifted by one so that "before the first step" is step 0 for the layout.
      ArenaBlock& b = blocks[static_cast<size_t>(block)];
      b.first = std::min(b.first, use->second.first + 1);
      b.last = std::max(b.last, use->second.second + 1);
      b.bytes = std::max(b.bytes, std::max<size_t>(base.byte_size(), 1));
      program_.values[v].kind = ValueLocation::Kind::kArena;
    }
    program_.arena_bytes = assign_arena_offsets(blocks, kDeviceAlignment);
    for (size_t v = 0; v < plan_.values.size(); ++v) {
      if (program_.values[v].kind != ValueLocation::Kind::kArena) continue;
      program_.values[v].offset =
          blocks[static_cast<size_t>(block_of[static_cast<size_t>(find(static_cast<int>(v)))])]
              .offset;
    }
  }

  const Plan& plan_;
  DeviceWeightTable& weights_;
  std::string_view device_;
  std::vector<int> root_;  // value -> the value whose bytes it views (itself when it owns them)
  std::map<int, std::pair<int, int>> use_;  // value -> first and last step touching it
  DeviceProgram program_;
};

}  // namespace

size_t DeviceWeightTable::constant(const PlanValue& value) {
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].name == value.name && entries[i].bytes == value.byte_size()) return i;
  }
  DeviceWeightEntry entry;
  entry.name = value.name;
  entry.bytes = value.byte_size();
  entry.offset = bytes;
  entry.source = value.data;
  bytes += align_up(std::max<size_t>(entry.bytes, 1));
  entries.push_back(std::move(entry));
  return entries.size() - 1;
}

size_t DeviceWeightTable::derived(const std::string& name, std::vector<std::byte> data) {
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].name == name) return i;
  }
  DeviceWeightEntry entry;
  entry.name = name;
  entry.bytes = data.size();
  entry.offset = bytes;
  entry.derived = std::move(data);
  bytes += align_up(std::max<size_t>(entry.bytes, 1));
  entries.push_back(std::move(entry));
  return entries.size() - 1;
}

std::string DeviceWeightTable::region_key(std::string_view device) const {
  uint64_t hash = 1469598103934665603ULL;  // FNV-1a
  auto mix = [&hash](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) hash = (hash ^ p[i]) * 1099511628211ULL;
  };
  for (const DeviceWeightEntry& entry : entries) {
    mix(entry.name.data(), entry.name.size());
    mix(&entry.bytes, sizeof(entry.bytes));
    const std::span<const std::byte> contents = entry.contents();
    mix(contents.data(), std::min<size_t>(contents.size(), 64));
  }
  return fmt::format("{}-engine-{:016x}", device, hash);
}

void DeviceWeightTable::fill(std::span<std::byte> region) const {
  for (const DeviceWeightEntry& entry : entries) {
    const std::span<const std::byte> contents = entry.contents();
    std::memcpy(region.data() + entry.offset, contents.data(), contents.size());
  }
}

Result<std::vector<DeviceProgram>> plan_device_programs(std::span<const Plan> plans,
                                                        DeviceWeightTable& weights,
                                                        std::string_view device) {
  std::vector<DeviceProgram> programs;
  for (const Plan& plan : plans) {
    ASSIGN_OR_RETURN(DeviceProgram program, ProgramPlanner(plan, weights, device).plan());
    programs.push_back(std::move(program));
  }
  return programs;
}

}  // namespace sliceserve::backends
