#include "sliceserve/backends/hip/hip_executor.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "device_kernels.h"
#include "device_model.h"
#include "hip_executor_internal.h"
#include "hip_kernels.h"
#include "hip_runtime_api.h"
#include "sliceserve/backends/hip/hip_runtime.h"

namespace sliceserve::backends {
namespace {

void* as_pointer(DeviceAddress address) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>(address));
}
DeviceAddress as_address(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer); }

class HipExecutor final : public Executor {
 public:
  HipExecutor(const HipRuntimeApi& api, int device) : api_(api), device_(device) {}
  ~HipExecutor() override;
  HipExecutor(const HipExecutor&) = delete;
  HipExecutor& operator=(const HipExecutor&) = delete;

  Status open(std::span<const unsigned char> code_object);

  Status compile(std::span<const Plan> plans, WeightStore* weights, unsigned threads) override;
  Status run(size_t index, std::span<const std::byte* const> inputs,
             std::span<std::byte* const> outputs, ComputeContext& ctx) override;
  bool runs_items() const override { return true; }
  Status run_items(size_t index, std::span<const ItemBuffers> items, ComputeContext& ctx) override;
  Status register_host_memory(std::span<std::byte> memory) override;
  ExecutorWeights weights() const override { return usage_; }
  Result<std::vector<OpTiming>> profile_run(size_t index, std::span<const std::byte* const> inputs,
                                            std::span<std::byte* const> outputs,
                                            ComputeContext& ctx) override;

 private:
  Status place_weights(WeightStore* store);
  // The stream a run starts and ends on: the context's device queue, or the executor's own for a
  // context with none (a host slice, as slicectl run-model has).
  Result<hipStream_t> enter(const ComputeContext& ctx);
  // Enqueues program `index`'s steps, each on ctx.layer_queue(its label) (null: `main`), ordering
  // consecutive steps on different streams with an event and ending on `main`. With `timed`, a
  // pair of timing events around each step.
  Status enqueue_steps(size_t index, const ComputeContext& ctx, hipStream_t main, bool timed);
  // A whole batch from contiguous buffers: copies in, the steps (timed, for profile_run), copies
  // out, on the context's stream, synchronized.
  Status run_batch(size_t index, std::span<const std::byte* const> inputs,
                   std::span<std::byte* const> outputs, const ComputeContext& ctx, bool timed);
  // Makes `to` wait for what is enqueued on `from` so far, with the run's `n`-th ordering event.
  Status order(hipStream_t from, hipStream_t to, size_t n);
  Status enqueue_step(size_t index, const DeviceStep& step, hipStream_t stream);
  Result<hipEvent_t> pooled_event(std::vector<hipEvent_t>& pool, size_t n, unsigned flags);
  Status copy_in(hipStream_t stream, size_t index, std::span<const std::byte* const> inputs);
  Status copy_out(hipStream_t stream, size_t index, std::span<std::byte* const> outputs);

  const HipRuntimeApi& api_;
  int device_ = 0;
  hipStream_t own_stream_ = nullptr;
  std::unique_ptr<HipKernels> kernels_;

  DeviceModel model_;
  void* private_weights_ = nullptr;  // this executor's own allocation, when not in a store
  ExecutorWeights usage_;

  // Pooled events, created on first use and reused by every run (a run ends synchronized): the
  // ordering events of per-layer streams (no timing), and profile_run's timing pairs.
  std::vector<hipEvent_t> order_events_;
  std::vector<hipEvent_t> timing_events_;
  std::vector<void*> registered_;  // host ranges pinned by register_host_memory
};

HipExecutor::~HipExecutor() {
  // Teardown is best effort: a failing runtime call here has nobody to report to.
  for (hipEvent_t e : order_events_) (void)api_.hipEventDestroy(e);
  for (hipEvent_t e : timing_events_) (void)api_.hipEventDestroy(e);
  kernels_.reset();
  for (void* host : registered_) (void)api_.hipHostUnregister(host);
  for (void* p : {as_pointer(model_.arena), private_weights_}) {
    if (p != nullptr) (void)api_.hipFree(p);
  }
  if (own_stream_ != nullptr) (void)api_.hipStreamDestroy(own_stream_);
}

Status HipExecutor::open(std::span<const unsigned char> code_object) {
  SS_HIP_CHECK(api_, api_.hipSetDevice(device_));
  SS_HIP_CHECK(api_, api_.hipStreamCreateWithFlags(&own_stream_, hipStreamNonBlocking));
  ASSIGN_OR_RETURN(kernels_, HipKernels::load(api_, code_object));
  return Status::ok();
}

Status HipExecutor::compile(std::span<const Plan> plans, WeightStore* weights,
                            unsigned /*threads*/) {
  if (!model_.plans.empty()) return {ErrorCode::kInternal, "the hip executor is compiled once"};
  ASSIGN_OR_RETURN(model_.programs, plan_device_programs(plans, model_.weights, "hip"));
  SS_HIP_CHECK(api_, api_.hipSetDevice(device_));
  RETURN_IF_ERROR(place_weights(weights));
  model_.keep_layout(plans);
  void* arena = nullptr;
  SS_HIP_CHECK(api_, api_.hipMalloc(&arena, model_.arena_bytes()));
  model_.arena = as_address(arena);
  return Status::ok();
}

Status HipExecutor::place_weights(WeightStore* store) {
  usage_.bytes = model_.weights.bytes;
  if (model_.weights.bytes == 0) return Status::ok();
  auto fill = [this](std::span<std::byte> region) {
    model_.weights.fill(region);
    return Status::ok();
  };
  if (store != nullptr && store->holds_device_memory()) {
    // A device store (none exists for HIP yet: HIP IPC handles are later work; docs/amd.md).
    ASSIGN_OR_RETURN(WeightRegion region, store->get_or_create(model_.weights.region_key("hip"),
                                                               model_.weights.bytes, fill));
    model_.weight_region = as_address(region.data);
    usage_.private_bytes = region.shared ? 0 : model_.weights.bytes;
    return Status::ok();
  }
  // A private copy, uploaded once.
  std::vector<std::byte> host(model_.weights.bytes);
  RETURN_IF_ERROR(fill(host));
  SS_HIP_CHECK(api_, api_.hipMalloc(&private_weights_, host.size()));
  SS_HIP_CHECK(api_, api_.hipMemcpyAsync(private_weights_, host.data(), host.size(),
                                         hipMemcpyHostToDevice, own_stream_));
  SS_HIP_CHECK(api_, api_.hipStreamSynchronize(own_stream_));
  model_.weight_region = as_address(private_weights_);
  usage_.private_bytes = model_.weights.bytes;
  return Status::ok();
}

Result<hipStream_t> HipExecutor::enter(const ComputeContext& ctx) {
  // The batch thread may not be the one that created the executor: select the device on it.
  SS_HIP_CHECK(api_, api_.hipSetDevice(device_));
  const DeviceQueue queue = ctx.device_queue();
  return queue.stream != nullptr ? static_cast<hipStream_t>(queue.stream) : own_stream_;
}

Result<hipEvent_t> HipExecutor::pooled_event(std::vector<hipEvent_t>& pool, size_t n,
                                             unsigned flags) {
  while (pool.size() <= n) {
    hipEvent_t event = nullptr;
    SS_HIP_CHECK(api_, api_.hipEventCreateWithFlags(&event, flags));
    pool.push_back(event);
  }
  return pool[n];
}

Status HipExecutor::order(hipStream_t from, hipStream_t to, size_t n) {
  ASSIGN_OR_RETURN(hipEvent_t event, pooled_event(order_events_, n, hipEventDisableTiming));
  SS_HIP_CHECK(api_, api_.hipEventRecord(event, from));
  SS_HIP_CHECK(api_, api_.hipStreamWaitEvent(to, event, 0));
  return Status::ok();
}

Status HipExecutor::enqueue_steps(size_t index, const ComputeContext& ctx, hipStream_t main,
                                  bool timed) {
  const DeviceProgram& program = model_.programs[index];
  hipStream_t current = main;
  size_t orderings = 0;
  for (size_t s = 0; s < program.steps.size(); ++s) {
    const DeviceStep& step = program.steps[s];
    const PlanOp& op = model_.plans[index].ops[step.op];
    const DeviceQueue layer = ctx.layer_queue(op.label);
    hipStream_t stream = layer.stream != nullptr ? static_cast<hipStream_t>(layer.stream) : main;
    if (stream != current) {
      // The steps form one chain: each waits for the one before, whatever stream that was on.
      RETURN_IF_ERROR(order(current, stream, orderings++));
      current = stream;
    }
    if (timed) {
      ASSIGN_OR_RETURN(hipEvent_t start, pooled_event(timing_events_, 2 * s, hipEventDefault));
      SS_HIP_CHECK(api_, api_.hipEventRecord(start, stream));
    }
    RETURN_IF_ERROR(enqueue_step(index, step, stream).with_context(op.label));
    if (timed) {
      ASSIGN_OR_RETURN(hipEvent_t end, pooled_event(timing_events_, 2 * s + 1, hipEventDefault));
      SS_HIP_CHECK(api_, api_.hipEventRecord(end, stream));
    }
  }
  // The outputs are copied on `main`, and the next run starts there.
  if (current != main) RETURN_IF_ERROR(order(current, main, orderings++));
  return Status::ok();
}

Status HipExecutor::enqueue_step(size_t index, const DeviceStep& step, hipStream_t stream) {
  const Plan& plan = model_.plans[index];
  const PlanOp& op = plan.ops[step.op];
  auto in = [&](size_t i) { return model_.tensor(index, op.inputs[i]); };
  const DeviceTensor y = model_.tensor(index, op.outputs[0]);
  switch (step.kind) {
    case DeviceStep::Kind::kConv:
    case DeviceStep::Kind::kConvFused:
      // Both are one kernel here: bias and every post-op (a fused step's z is its sum post-op).
      return kernels_->launch(
          stream,
          conv_launch(op, in(0), in(1), step.bias == SIZE_MAX ? 0 : model_.weight(step.bias),
                      model_.sums_of(index, op), y));
    case DeviceStep::Kind::kGemm: {
      float beta = 0.0F;
      if (step.zero != SIZE_MAX) {
        // Y = broadcast(C) first (C + zeros [M, 1] with the binary kernel's broadcasting), so
        // that the GEMM adds beta * Y.
        PlanOp copy_c;
        copy_c.kind = OpKind::kBinary;
        copy_c.binary = BinaryAlg::kAdd;
        copy_c.label = op.label + " (C)";
        const int64_t zero_dims[] = {y.dims[0], 1};
        const DeviceTensor zeros{model_.weight(step.zero), DataType::kFp32, zero_dims};
        RETURN_IF_ERROR(kernels_->launch(stream, binary_launch(copy_c, in(2), zeros, y)));
        beta = op.beta;
      }
      return kernels_->launch(stream,
                              gemm_launch(op, in(0), in(1), beta, model_.sums_of(index, op), y));
    }
    case DeviceStep::Kind::kMatMul:
      return kernels_->launch(stream, matmul_launch(op, step.m, step.n, step.k, step.batch,
                                                    step.stride_a, step.stride_b, in(0), in(1), y));
    case DeviceStep::Kind::kBatchNorm: {
      const auto channels = static_cast<DeviceAddress>(plan.values[size_t(op.inputs[1])].dims[0]);
      const DeviceAddress scale = model_.weight(step.scale_shift);
      return kernels_->launch(
          stream, batch_norm_launch(op, scale, scale + channels * sizeof(float), in(0), y));
    }
    case DeviceStep::Kind::kKernel: {
      std::vector<DeviceTensor> ins, outs;
      for (int v : op.inputs) ins.push_back(model_.tensor(index, v));
      for (int v : op.outputs) outs.push_back(model_.tensor(index, v));
      return launch_op_kernels(
          op, ins, outs, [&](const auto& launch) { return kernels_->launch(stream, launch); });
    }
  }
  return {ErrorCode::kInternal, "unknown step kind"};
}

Status HipExecutor::copy_in(hipStream_t stream, size_t index,
                            std::span<const std::byte* const> inputs) {
  const Plan& plan = model_.plans[index];
  for (size_t i = 0; i < inputs.size(); ++i) {
    const PlanValue& v = plan.values[size_t(plan.inputs[i])];
    SS_HIP_CHECK(api_,
                 api_.hipMemcpyAsync(as_pointer(model_.address(index, plan.inputs[i])), inputs[i],
                                     v.byte_size(), hipMemcpyHostToDevice, stream));
  }
  return Status::ok();
}

Status HipExecutor::copy_out(hipStream_t stream, size_t index,
                             std::span<std::byte* const> outputs) {
  const Plan& plan = model_.plans[index];
  for (size_t i = 0; i < outputs.size(); ++i) {
    const PlanValue& v = plan.values[size_t(plan.outputs[i])];
    SS_HIP_CHECK(api_,
                 api_.hipMemcpyAsync(outputs[i], as_pointer(model_.address(index, plan.outputs[i])),
                                     v.byte_size(), hipMemcpyDeviceToHost, stream));
  }
  return Status::ok();
}

Status HipExecutor::run_batch(size_t index, std::span<const std::byte* const> inputs,
                              std::span<std::byte* const> outputs, const ComputeContext& ctx,
                              bool timed) {
  RETURN_IF_ERROR(model_.check_batch(index, inputs.size(), outputs.size()));
  ASSIGN_OR_RETURN(hipStream_t stream, enter(ctx));
  RETURN_IF_ERROR(copy_in(stream, index, inputs));
  RETURN_IF_ERROR(enqueue_steps(index, ctx, stream, timed));
  RETURN_IF_ERROR(copy_out(stream, index, outputs));
  SS_HIP_CHECK(api_, api_.hipStreamSynchronize(stream));
  return Status::ok();
}

Status HipExecutor::run(size_t index, std::span<const std::byte* const> inputs,
                        std::span<std::byte* const> outputs, ComputeContext& ctx) {
  return run_batch(index, inputs, outputs, ctx, false);
}

Result<std::vector<Executor::OpTiming>> HipExecutor::profile_run(
    size_t index, std::span<const std::byte* const> inputs, std::span<std::byte* const> outputs,
    ComputeContext& ctx) {
  RETURN_IF_ERROR(run_batch(index, inputs, outputs, ctx, true));
  std::vector<OpTiming> timings;
  const DeviceProgram& program = model_.programs[index];
  for (size_t s = 0; s < program.steps.size(); ++s) {
    float ms = 0;
    SS_HIP_CHECK(api_,
                 api_.hipEventElapsedTime(&ms, timing_events_[2 * s], timing_events_[2 * s + 1]));
    timings.push_back({model_.plans[index].ops[program.steps[s].op].label, double(ms)});
  }
  return timings;
}

Status HipExecutor::run_items(size_t index, std::span<const ItemBuffers> items,
                              ComputeContext& ctx) {
  RETURN_IF_ERROR(model_.check_items(index, items));
  const Plan& plan = model_.plans[index];
  for (const ItemBuffers& item : items) {
    if (item.inputs.size() != plan.inputs.size() || item.outputs.size() != plan.outputs.size()) {
      return {ErrorCode::kInvalidArgument, "the items do not all have the plan's tensors"};
    }
  }
  ASSIGN_OR_RETURN(hipStream_t stream, enter(ctx));
  // Each item straight from its slot to its row of the batch (DMA from registered memory).
  for (size_t t = 0; t < plan.inputs.size(); ++t) {
    const size_t item_bytes = plan.values[size_t(plan.inputs[t])].byte_size() / items.size();
    const DeviceAddress base = model_.address(index, plan.inputs[t]);
    for (size_t i = 0; i < items.size(); ++i) {
      SS_HIP_CHECK(api_, api_.hipMemcpyAsync(as_pointer(base + i * item_bytes), items[i].inputs[t],
                                             item_bytes, hipMemcpyHostToDevice, stream));
    }
  }
  RETURN_IF_ERROR(enqueue_steps(index, ctx, stream, false));
  for (size_t t = 0; t < plan.outputs.size(); ++t) {
    const size_t item_bytes = plan.values[size_t(plan.outputs[t])].byte_size() / items.size();
    const DeviceAddress base = model_.address(index, plan.outputs[t]);
    for (size_t i = 0; i < items.size(); ++i) {
      SS_HIP_CHECK(api_, api_.hipMemcpyAsync(items[i].outputs[t], as_pointer(base + i * item_bytes),
                                             item_bytes, hipMemcpyDeviceToHost, stream));
    }
  }
  SS_HIP_CHECK(api_, api_.hipStreamSynchronize(stream));
  return Status::ok();
}

Status HipExecutor::register_host_memory(std::span<std::byte> memory) {
  if (memory.empty()) return Status::ok();
  // Portable: pinned for every stream of the process. Pinning is a speed-up, not a need:
  // unpinned items still copy (the runtime stages them), so a refusal is a warning.
  const hipError_t pinned =
      api_.hipHostRegister(memory.data(), memory.size(), hipHostRegisterPortable);
  if (pinned != hipSuccess) {
    spdlog::warn("hip executor: {}: items are copied through the runtime's staging buffers",
                 hip_error(api_, pinned, "hipHostRegister(slot data, Portable)", __FILE__, __LINE__)
                     .message());
    return Status::ok();
  }
  registered_.push_back(memory.data());
  return Status::ok();
}

}  // namespace

Result<std::unique_ptr<Executor>> create_hip_executor(const HipRuntimeApi& api, int device,
                                                      std::span<const unsigned char> code_object) {
  auto executor = std::make_unique<HipExecutor>(api, device);
  RETURN_IF_ERROR(executor->open(code_object));
  return std::unique_ptr<Executor>(std::move(executor));
}

Result<std::unique_ptr<Executor>> create_hip_executor(int device) {
  ASSIGN_OR_RETURN(const HipRuntime* runtime, load_hip_runtime());
  ASSIGN_OR_RETURN(const HipDeviceInfo info, runtime->device_info(device));
  auto executor = create_hip_executor(runtime->api(), info.index, hip_kernels_code_object());
  if (!executor.is_ok()) {
    return executor.status().with_context(
        fmt::format("HIP executor on {} (device {}, gfx{})", info.name, info.index, info.gcn_arch));
  }
  return executor;
}

}  // namespace sliceserve::backends
