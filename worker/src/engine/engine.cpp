#include "sliceserve/worker/engine/engine.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <charconv>
#include <deque>
#include <string_view>

#ifdef SLICESERVE_HAVE_CUDA
#include "sliceserve/backends/cuda/cuda_executor.h"
#endif
#ifdef SLICESERVE_HAVE_HIP
#include "sliceserve/backends/hip/hip_executor.h"
#endif
#include "sliceserve/worker/engine/fusion.h"
#include "sliceserve/worker/engine/lowering.h"
#include "sliceserve/worker/engine/onnx_loader.h"
#include "sliceserve/worker/engine/shape_inference.h"

namespace sliceserve::worker::engine {
namespace {

// The ordinal of "<vendor>" (0) or "<vendor>:<ordinal>"; kInvalidArgument for anything else.
Result<int> device_ordinal(const std::string& device, std::string_view vendor,
                           std::string_view label) {
  if (device == vendor) return 0;
  const std::string digits = device.substr(vendor.size() + 1);
  int ordinal = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), ordinal);
  if (digits.empty() || error != std::errc() || end != digits.data() + digits.size() ||
      ordinal < 0) {
    return Status{ErrorCode::kInvalidArgument,
                  fmt::format("device '{}': the {} ordinal must be a number >= 0", device, label)};
  }
  return ordinal;
}

// "cpu", "cuda", "cuda:<ordinal>", "hip" or "hip:<ordinal>".
Result<std::unique_ptr<backends::Executor>> create_executor(const std::string& device) {
  if (device == "cpu") return backends::create_cpu_executor();
  if (device == "cuda" || device.starts_with("cuda:")) {
    ASSIGN_OR_RETURN([[maybe_unused]] int ordinal, device_ordinal(device, "cuda", "CUDA"));
#ifdef SLICESERVE_HAVE_CUDA
    return backends::create_cuda_executor(ordinal);
#else
    return Status{ErrorCode::kUnavailable,
                  fmt::format("no executor for device '{}' in this build (built without the "
                              "CUDA toolkit)",
                              device)};
#endif
  }
  if (device == "hip" || device.starts_with("hip:")) {
    ASSIGN_OR_RETURN([[maybe_unused]] int ordinal, device_ordinal(device, "hip", "HIP"));
#ifdef SLICESERVE_HAVE_HIP
    return backends::create_hip_executor(ordinal);
#else
    return Status{ErrorCode::kUnavailable,
                  fmt::format("no executor for device '{}' in this build (built without the "
                              "HIP headers)",
                              device)};
#endif
  }
  return Status{
      ErrorCode::kInvalidArgument,
      fmt::format("unknown device '{}' (cpu, cuda, cuda:<ordinal>, hip:<ordinal>)", device)};
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::load_file(const std::string& path,
                                                  const EngineOptions& options) {
  ASSIGN_OR_RETURN(Graph graph, load_onnx_file(path));
  auto engine = load_graph(std::move(graph), options);
  if (!engine.is_ok()) return engine.status().with_context(path);
  return engine;
}

Result<std::unique_ptr<Engine>> Engine::load_graph(Graph graph, const EngineOptions& options) {
  if (options.max_batch < 0 || options.max_batch > 4096) {
    return Status{ErrorCode::kInvalidArgument,
                  fmt::format("max_batch {} is out of range [0, 4096]", options.max_batch)};
  }
  ASSIGN_OR_RETURN(std::unique_ptr<backends::Executor> executor, create_executor(options.device));
  for (const ValueInfo& input : graph.inputs) {
    if (options.max_batch > 0 && (!input.has_shape || input.shape.empty())) {
      return Status{ErrorCode::kInvalidArgument,
                    fmt::format("input '{}' has no batch dimension", input.name)};
    }
  }
  auto engine = std::unique_ptr<Engine>(new Engine());
  engine->max_batch_ = options.max_batch;
  const int64_t first_batch = options.max_batch > 0 ? 1 : 0;
  RETURN_IF_ERROR(infer_shapes(graph, first_batch));
  engine->inputs_ = graph.inputs;
  engine->outputs_ = graph.outputs;
  for (const auto* list : {&engine->inputs_, &engine->outputs_}) {
    for (const ValueInfo& info : *list) {
      for (int64_t d : info.shape) {
        if (d < 0) {
          return Status{ErrorCode::kInvalidArgument,
                        fmt::format("'{}' has shape {}: a dimension other than the batch is "
                                    "unknown",
                                    info.name, shm::shape_to_string(info.shape))};
        }
      }
    }
  }

  ASSIGN_OR_RETURN(FusionCounts fused, fuse(graph));
  spdlog::debug(
      "engine: fused {} BatchNormalization, {} Add, {} activations, {} HardSwish, {} Swish; "
      "removed {} no-ops",
      fused.batch_norm, fused.add, fused.activation, fused.hardswish, fused.swish, fused.removed);

  std::vector<backends::Plan> plans;
  std::deque<Tensor> storage;  // folded constants the plans point to, until compile returns
  for (int64_t batch = first_batch; batch <= std::max<int64_t>(options.max_batch, 0); ++batch) {
    RETURN_IF_ERROR(infer_shapes(graph, batch));
    ASSIGN_OR_RETURN(backends::Plan plan, lower(graph, batch, storage));
    plans.push_back(std::move(plan));
  }
  engine->executor_ = std::move(executor);
  RETURN_IF_ERROR(engine->executor_->compile(plans, options.weights, options.threads));
  RETURN_IF_ERROR(engine->executor_->register_host_memory(options.io_memory));
  return engine;
}

std::vector<int64_t> Engine::input_shape(size_t i, int64_t batch) const {
  std::vector<int64_t> shape = inputs_.at(i).shape;
  if (max_batch_ > 0 && !shape.empty()) shape[0] = batch;
  return shape;
}

std::vector<int64_t> Engine::output_shape(size_t i, int64_t batch) const {
  std::vector<int64_t> shape = outputs_.at(i).shape;
  if (max_batch_ > 0 && !shape.empty()) shape[0] = batch;
  return shape;
}

Result<size_t> Engine::plan_index(int64_t batch, size_t inputs, size_t outputs) const {
  const bool batch_ok = max_batch_ > 0 ? (batch >= 1 && batch <= max_batch_) : batch == 0;
  if (!batch_ok) {
    return Status{ErrorCode::kInvalidArgument,
                  fmt::format("batch {} is out of range (the engine was built for {})", batch,
                              max_batch_ > 0 ? fmt::format("1..{}", max_batch_) : "0")};
  }
  if (inputs != inputs_.size() || outputs != outputs_.size()) {
    return Status{ErrorCode::kInvalidArgument,
                  fmt::format("{} inputs and {} outputs given, the model has {} and {}", inputs,
                              outputs, inputs_.size(), outputs_.size())};
  }
  return static_cast<size_t>(max_batch_ > 0 ? batch - 1 : 0);
}

Status Engine::run(int64_t batch, std::span<const std::byte* const> inputs,
                   std::span<std::byte* const> outputs, backends::ComputeContext& ctx) {
  ASSIGN_OR_RETURN(size_t index, plan_index(batch, inputs.size(), outputs.size()));
  return executor_->run(index, inputs, outputs, ctx);
}

Result<std::vector<backends::Executor::OpTiming>> Engine::profile_run(
    int64_t batch, std::span<const std::byte* const> inputs, std::span<std::byte* const> outputs,
    backends::ComputeContext& ctx) {
  ASSIGN_OR_RETURN(size_t index, plan_index(batch, inputs.size(), outputs.size()));
  return executor_->profile_run(index, inputs, outputs, ctx);
}

Status Engine::run_items(std::span<const backends::Executor::ItemBuffers> items,
                         backends::ComputeContext& ctx) {
  const auto batch = static_cast<int64_t>(items.size());
  if (max_batch_ == 0 || batch < 1 || batch > max_batch_) {
    return {ErrorCode::kInvalidArgument,
            fmt::format("a batch of {} items is out of range (the engine was built for 1..{})",
                        batch, max_batch_)};
  }
  for (const backends::Executor::ItemBuffers& item : items) {
    if (item.inputs.size() != inputs_.size() || item.outputs.size() != outputs_.size()) {
      return {
          ErrorCode::kInvalidArgument,
          fmt::format("an item has {} inputs and {} outputs, the model has {} and {}",
                      item.inputs.size(), item.outputs.size(), inputs_.size(), outputs_.size())};
    }
  }
  return executor_->run_items(static_cast<size_t>(batch - 1), items, ctx);
}

}  // namespace sliceserve::worker::engine
