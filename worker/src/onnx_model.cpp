#include "onnx_model.h"

#include <fmt/format.h>

#include <cstring>
#include <vector>

#include "batch_io.h"
#include "sliceserve/worker/engine/engine.h"
#include "sliceserve/worker/engine/onnx_loader.h"
#include "sliceserve/worker/engine/shape_inference.h"

namespace sliceserve::worker {
namespace {

using engine::ValueInfo;

std::string describe(const ValueInfo& info, size_t skip) {
  return fmt::format(
      "{} {}", shm::data_type_name(info.dtype),
      shm::shape_to_string(std::vector<int64_t>(
          info.shape.begin() + static_cast<std::ptrdiff_t>(skip), info.shape.end())));
}

// The spec's tensors must be the model's, one item each.
Status check_tensors(std::span<const shm::TensorSpec> declared, const std::vector<ValueInfo>& model,
                     std::string_view what) {
  if (declared.size() != model.size()) {
    return {ErrorCode::kInvalidArgument, fmt::format("the config declares {} {}s, the model has {}",
                                                     declared.size(), what, model.size())};
  }
  for (size_t i = 0; i < model.size(); ++i) {
    const shm::TensorSpec& spec = declared[i];
    const ValueInfo& info = model[i];
    const std::vector<int64_t> item(info.shape.begin() + 1, info.shape.end());
    const std::vector<int64_t> given(spec.shape().begin(), spec.shape().end());
    if (spec.name_view() != info.name || spec.dtype != info.dtype || given != item) {
      return {ErrorCode::kInvalidArgument,
              fmt::format("{} {}: the model has '{}' {}, the config declares '{}' {} {}", what, i,
                          info.name, describe(info, 1), spec.name_view(),
                          shm::data_type_name(spec.dtype), shm::shape_to_string(given))};
    }
  }
  return Status::ok();
}

class OnnxModel final : public Model {
 public:
  OnnxModel(const shm::ModelSpec& spec, std::unique_ptr<engine::Engine> engine)
      : spec_(spec), engine_(std::move(engine)) {
    const auto batch = static_cast<size_t>(engine_->max_batch());
    for (const shm::TensorSpec& t : spec_.input_specs()) {
      inputs_.emplace_back(t.byte_size() * batch);
      input_ptrs_.push_back(inputs_.back().data());
    }
    for (const shm::TensorSpec& t : spec_.output_specs()) {
      outputs_.emplace_back(t.byte_size() * batch);
      output_ptrs_.push_back(outputs_.back().data());
    }
  }

  const shm::ModelSpec& spec() const override { return spec_; }

  Status warm_up(backends::ComputeContext& ctx) override {
    // Every batch size once: the first run of a plan touches its memory and oneDNN's caches.
    for (auto& buffer : inputs_) std::fill(buffer.begin(), buffer.end(), std::byte{0});
    for (int64_t batch = 1; batch <= engine_->max_batch(); ++batch) {
      RETURN_IF_ERROR(run_engine(batch, ctx));
    }
    return Status::ok();
  }

  Status run(std::span<const ItemIO> batch, backends::ComputeContext& ctx) override {
    RETURN_IF_ERROR(check_batch(batch, spec_));
    if (batch.empty()) return Status::ok();
    if (static_cast<int64_t>(batch.size()) > engine_->max_batch()) {
      return {ErrorCode::kInvalidArgument,
              fmt::format("batch of {} exceeds max_batch {}", batch.size(), engine_->max_batch())};
    }
    if (engine_->runs_items()) {
      Status status = engine_->run_items(batch, ctx);
      if (!status.is_ok()) return {ErrorCode::kModelError, status.message()};
      return Status::ok();
    }
    // The slots are not contiguous: gather the items, run, scatter.
    for (size_t t = 0; t < spec_.n_inputs; ++t) {
      const size_t bytes = spec_.inputs[t].byte_size();
      for (size_t i = 0; i < batch.size(); ++i) {
        std::memcpy(inputs_[t].data() + i * bytes, batch[i].inputs[t], bytes);
      }
    }
    RETURN_IF_ERROR(run_engine(static_cast<int64_t>(batch.size()), ctx));
    for (size_t t = 0; t < spec_.n_outputs; ++t) {
      const size_t bytes = spec_.outputs[t].byte_size();
      for (size_t i = 0; i < batch.size(); ++i) {
        std::memcpy(batch[i].outputs[t], outputs_[t].data() + i * bytes, bytes);
      }
    }
    return Status::ok();
  }

  WeightUsage weights() const override {
    const backends::ExecutorWeights w = engine_->weights();
    return {w.bytes, w.private_bytes};
  }

 private:
  Status run_engine(int64_t batch, backends::ComputeContext& ctx) {
    Status status = engine_->run(batch, input_ptrs_, output_ptrs_, ctx);
    if (!status.is_ok()) return {ErrorCode::kModelError, status.message()};
    return Status::ok();
  }

  shm::ModelSpec spec_;
  std::unique_ptr<engine::Engine> engine_;
  std::vector<std::vector<std::byte>> inputs_;  // max_batch items of each input, contiguous
  std::vector<std::vector<std::byte>> outputs_;
  std::vector<const std::byte*> input_ptrs_;  // into inputs_ / outputs_, which never grow
  std::vector<std::byte*> output_ptrs_;
};

}  // namespace

Result<std::unique_ptr<Model>> create_onnx_model(const ModelOptions& options,
                                                 const shm::ModelSpec& spec,
                                                 backends::WeightStore* weights) {
  if (options.max_batch < 1 || options.max_batch > 4096) {
    return Status{ErrorCode::kInvalidArgument,
                  fmt::format("max_batch {} is out of range [1, 4096]", options.max_batch)};
  }
  ASSIGN_OR_RETURN(std::unique_ptr<engine::Engine> loaded,
                   engine::Engine::load_file(options.path, {.max_batch = options.max_batch,
                                                            .device = options.device,
                                                            .weights = weights,
                                                            .threads = options.threads,
                                                            .io_memory = options.io_memory}));
  RETURN_IF_ERROR(
      check_tensors(spec.input_specs(), loaded->inputs(), "input").with_context(options.path));
  RETURN_IF_ERROR(
      check_tensors(spec.output_specs(), loaded->outputs(), "output").with_context(options.path));
  return std::unique_ptr<Model>(new OnnxModel(spec, std::move(loaded)));
}

Result<shm::ModelSpec> onnx_item_spec(const std::string& path) {
  ASSIGN_OR_RETURN(engine::Graph graph, engine::load_onnx_file(path));
  // Batch 1 fixes the batch dimension; the item is the rest.
  Status inferred = engine::infer_shapes(graph, 1);
  if (!inferred.is_ok()) return inferred.with_context(path);
  shm::ModelSpec spec;
  auto add = [&](const std::vector<ValueInfo>& values, shm::TensorSpec* out, uint32_t* count,
                 std::string_view what) -> Status {
    if (values.size() > shm::kMaxTensors) {
      return {ErrorCode::kInvalidArgument, fmt::format("{}: {} {}s, at most {} are supported", path,
                                                       values.size(), what, shm::kMaxTensors)};
    }
    for (const ValueInfo& info : values) {
      if (info.shape.size() < 2) {
        return {ErrorCode::kInvalidArgument,
                fmt::format("{}: {} '{}' has shape {}: a batch dimension and an item are needed",
                            path, what, info.name, shm::shape_to_string(info.shape))};
      }
      const std::vector<int64_t> item(info.shape.begin() + 1, info.shape.end());
      auto tensor = shm::make_tensor_spec(info.name, info.dtype, item);
      if (!tensor.is_ok()) return tensor.status().with_context(path);
      out[(*count)++] = *tensor;
    }
    return Status::ok();
  };
  RETURN_IF_ERROR(add(graph.inputs, spec.inputs, &spec.n_inputs, "input"));
  RETURN_IF_ERROR(add(graph.outputs, spec.outputs, &spec.n_outputs, "output"));
  return spec;
}

}  // namespace sliceserve::worker
