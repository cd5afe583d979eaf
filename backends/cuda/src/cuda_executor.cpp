#include "sliceserve/backends/cuda/cuda_executor.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "cuda_driver_api.h"
#include "cuda_executor_internal.h"
#include "cuda_kernels.h"
#include "cuda_libraries.h"
#include "device_model.h"
#include "sliceserve/backends/cuda/cuda_driver.h"

namespace sliceserve::backends {
namespace {

// cuDNN's algorithm search may take this much workspace per convolution; faster algorithms that
// need more are skipped.
constexpr size_t kMaxConvWorkspace = size_t{256} << 20;
// cuBLAS's own workspace, set explicitly so that GEMMs inside graph capture never allocate
// (NVIDIA's recommendation for Hopper: 32 MiB).
constexpr size_t kCublasWorkspace = size_t{32} << 20;

std::vector<int> to_int(std::span<const int64_t> values) { return {values.begin(), values.end()}; }

// Row-major strides of dims.
std::vector<int> strides_of(const std::vector<int>& dims) {
  std::vector<int> strides(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) strides[i - 1] = strides[i] * dims[i];
  return strides;
}

// A 1-D convolution runs as a 2-D one of height 1 (cuDNN wants 4-D or 5-D tensors): a 1 is
// inserted as the first spatial dimension, and the kernel parameters get its 1s and 0s.
std::vector<int> conv_dims(const std::vector<int64_t>& dims) {
  std::vector<int> out = to_int(dims);
  if (out.size() == 3) out.insert(out.begin() + 2, 1);
  return out;
}

// One convolution's cuDNN descriptors and chosen algorithm.
struct ConvSetup {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
  size_t workspace = 0;
};

// Destroys the descriptors `s` holds (null ones are skipped); best effort, as in teardown.
void destroy(const CudnnApi& dnn, ConvSetup& s) {
  for (cudnnTensorDescriptor_t* t : {&s.x, &s.y, &s.bias}) {
    if (*t != nullptr) dnn.cudnnDestroyTensorDescriptor(std::exchange(*t, nullptr));
  }
  if (s.w != nullptr) dnn.cudnnDestroyFilterDescriptor(std::exchange(s.w, nullptr));
  if (s.conv != nullptr) dnn.cudnnDestroyConvolutionDescriptor(std::exchange(s.conv, nullptr));
}

class CudaExecutor final : public Executor {
 public:
  CudaExecutor(const CudaDriverApi& api, const CudaLibraries& libs, CUdevice device)
      : api_(api), libs_(libs), device_(device) {}
  ~CudaExecutor() override;
  CudaExecutor(const CudaExecutor&) = delete;
  CudaExecutor& operator=(const CudaExecutor&) = delete;

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
  Status open_context();
  Status place_weights(WeightStore* store);
  Status prepare_convolutions();
  // The descriptors and the fastest algorithm of a Conv; nothing is left behind on failure.
  Result<ConvSetup> find_convolution(const Plan& plan, const PlanOp& op);
  Status set_up_convolution(const Plan& plan, const PlanOp& op, ConvSetup& s);
  // The stream the run goes to, with its context current: the slice's queue, or the
  // executor's own stream for a context with none (a host slice, as slicectl run-model has).
  Result<DeviceQueue> enter(const ComputeContext& ctx);
  // Enqueues program `index` on `stream`: its graph for this queue (captured on first use), or
  // its steps one by one once capture has proven impossible.
  Status launch(size_t index, const DeviceQueue& queue);
  // Enqueues program `index`'s steps one by one on `stream`. With `timing` (profile_run's), an
  // event pair around each step s: timing[2s] before it, timing[2s + 1] after.
  Status record(size_t index, CUstream stream, std::span<const CUevent> timing = {});
  // `count` timing events of queue `queue`, made in its context (current) on first use: an event
  // is recorded only on streams of the context it was created in, and a pool's entries are
  // contexts of their own.
  Result<std::span<const CUevent>> timing_events(size_t queue, size_t count);
  Status copy_in(size_t index, std::span<const std::byte* const> inputs, CUstream stream);
  Status copy_out(size_t index, std::span<std::byte* const> outputs, CUstream stream);
  // The record_* functions enqueue one step of program `index`.
  Status record_step(size_t index, const DeviceStep& step, const ConvSetup* conv, CUstream stream);
  Status record_gemm(size_t index, const DeviceStep& step, CUstream stream);
  Status record_matmul(size_t index, const DeviceStep& step);
  Status record_kernel(size_t index, const PlanOp& op, CUstream stream);

  const CudaDriverApi& api_;
  const CudaLibraries& libs_;
  CUdevice device_ = 0;
  CUcontext primary_ = nullptr;
  CUstream own_stream_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::unique_ptr<CudaKernels> kernels_;

  DeviceModel model_;
  std::vector<std::map<size_t, ConvSetup>> convs_;  // per program: step -> its convolution
  CUdeviceptr private_weights_ = 0;  // this executor's own allocation, when not in a store
  CUdeviceptr conv_workspace_ = 0;
  size_t conv_workspace_bytes_ = 0;
  CUdeviceptr cublas_workspace_ = 0;
  ExecutorWeights usage_;

  std::map<std::pair<size_t, size_t>, CUgraphExec> graphs_;  // (program, queue index)
  bool capture_works_ = true;
  std::map<size_t, std::vector<CUevent>> timing_events_;  // per queue index, reused by each profile
  std::vector<void*> registered_;  // host ranges pinned by register_host_memory
};

CudaExecutor::~CudaExecutor() {
  // Teardown is best effort: a failing driver call here has nobody to report to.
  if (primary_ != nullptr) api_.cuCtxSetCurrent(primary_);
  for (auto& [key, graph] : graphs_) api_.cuGraphExecDestroy(graph);
  for (auto& [queue, events] : timing_events_) {
    for (CUevent event : events) api_.cuEventDestroy(event);
  }
  for (auto& setups : convs_) {
    for (auto& [step, setup] : setups) destroy(libs_.cudnn, setup);
  }
  kernels_.reset();
  if (cublas_ != nullptr) libs_.cublas.cublasDestroy(cublas_);
  if (cudnn_ != nullptr) libs_.cudnn.cudnnDestroy(cudnn_);
  for (void* host : registered_) api_.cuMemHostUnregister(host);
  for (CUdeviceptr p : {model_.arena, conv_workspace_, cublas_workspace_, private_weights_}) {
    if (p != 0) api_.cuMemFree(p);
  }
  if (own_stream_ != nullptr) api_.cuStreamDestroy(own_stream_);
  if (primary_ != nullptr) api_.cuDevicePrimaryCtxRelease(device_);
}

Status CudaExecutor::open_context() {
  // Everything is allocated in the primary context: green contexts share its memory, so one set
  // of buffers serves every queue of a slice's pool.
  SS_CU_CHECK(api_, api_.cuDevicePrimaryCtxRetain(&primary_, device_));
  SS_CU_CHECK(api_, api_.cuCtxSetCurrent(primary_));
  SS_CU_CHECK(api_, api_.cuStreamCreate(&own_stream_, CU_STREAM_NON_BLOCKING));
  SS_CUDNN_CHECK(libs_.cudnn, libs_.cudnn.cudnnCreate(&cudnn_));
  SS_CUBLAS_CHECK(libs_.cublas, libs_.cublas.cublasCreate(&cublas_));
  // FP32 GEMMs stay FP32 (no TF32), as PyTorch's default matmul precision.
  SS_CUBLAS_CHECK(libs_.cublas, libs_.cublas.cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  SS_CU_CHECK(api_, api_.cuMemAlloc(&cublas_workspace_, kCublasWorkspace));
  SS_CUBLAS_CHECK(libs_.cublas,
                  libs_.cublas.cublasSetWorkspace(
                      cublas_, reinterpret_cast<void*>(cublas_workspace_), kCublasWorkspace));
  ASSIGN_OR_RETURN(kernels_, CudaKernels::load(api_));
  return Status::ok();
}

Status CudaExecutor::compile(std::span<const Plan> plans, WeightStore* weights,
                             unsigned /*threads*/) {
  if (!model_.plans.empty()) return {ErrorCode::kInternal, "the cuda executor is compiled once"};
  ASSIGN_OR_RETURN(model_.programs, plan_device_programs(plans, model_.weights, "cuda"));
  RETURN_IF_ERROR(open_context());
  RETURN_IF_ERROR(place_weights(weights));
  model_.keep_layout(plans);
  SS_CU_CHECK(api_, api_.cuMemAlloc(&model_.arena, model_.arena_bytes()));
  return prepare_convolutions();
}

Status CudaExecutor::place_weights(WeightStore* store) {
  usage_.bytes = model_.weights.bytes;
  if (model_.weights.bytes == 0) return Status::ok();
  auto fill = [this](std::span<std::byte> region) {
    model_.weights.fill(region);
    return Status::ok();
  };
  if (store != nullptr && store->holds_device_memory()) {
    ASSIGN_OR_RETURN(WeightRegion region, store->get_or_create(model_.weights.region_key("cuda"),
                                                               model_.weights.bytes, fill));
    model_.weight_region = reinterpret_cast<CUdeviceptr>(region.data);
    usage_.private_bytes = region.shared ? 0 : model_.weights.bytes;
    return Status::ok();
  }
  // No device store (a standalone run): a private copy, uploaded once.
  std::vector<std::byte> host(model_.weights.bytes);
  RETURN_IF_ERROR(fill(host));
  SS_CU_CHECK(api_, api_.cuMemAlloc(&private_weights_, host.size()));
  SS_CU_CHECK(api_,
              api_.cuMemcpyHtoDAsync(private_weights_, host.data(), host.size(), own_stream_));
  SS_CU_CHECK(api_, api_.cuStreamSynchronize(own_stream_));
  model_.weight_region = private_weights_;
  usage_.private_bytes = model_.weights.bytes;
  return Status::ok();
}

Result<ConvSetup> CudaExecutor::find_convolution(const Plan& plan, const PlanOp& op) {
  ConvSetup s;
  Status set = set_up_convolution(plan, op, s);
  if (!set.is_ok()) {
    destroy(libs_.cudnn, s);  // what was created before the failure
    return set;
  }
  return s;
}

Status CudaExecutor::set_up_convolution(const Plan& plan, const PlanOp& op, ConvSetup& s) {
  const CudnnApi& dnn = libs_.cudnn;
  const PlanValue& x = plan.values[static_cast<size_t>(op.inputs[0])];
  const PlanValue& w = plan.values[static_cast<size_t>(op.inputs[1])];
  const PlanValue& y = plan.values[static_cast<size_t>(op.outputs[0])];
  const size_t spatial = op.kernel.size();
  std::vector<int> pads(op.pads.begin(), op.pads.begin() + static_cast<std::ptrdiff_t>(spatial));
  std::vector<int> strides = to_int(op.strides);
  std::vector<int> dilations = to_int(op.dilations);
  if (spatial == 1) {
    pads.insert(pads.begin(), 0);
    strides.insert(strides.begin(), 1);
    dilations.insert(dilations.begin(), 1);
  }
  const std::vector<int> xd = conv_dims(x.dims);
  const std::vector<int> wd = conv_dims(w.dims);
  const std::vector<int> yd = conv_dims(y.dims);
  SS_CUDNN_CHECK(dnn, dnn.cudnnCreateTensorDescriptor(&s.x));
  SS_CUDNN_CHECK(dnn, dnn.cudnnCreateTensorDescriptor(&s.y));
  SS_CUDNN_CHECK(dnn, dnn.cudnnCreateFilterDescriptor(&s.w));
  SS_CUDNN_CHECK(dnn, dnn.cudnnCreateConvolutionDescriptor(&s.conv));
  SS_CUDNN_CHECK(dnn, dnn.cudnnSetTensorNdDescriptor(s.x, CUDNN_DATA_FLOAT, int(xd.size()),
                                                     xd.data(), strides_of(xd).data()));
  SS_CUDNN_CHECK(dnn, dnn.cudnnSetTensorNdDescriptor(s.y, CUDNN_DATA_FLOAT, int(yd.size()),
                                                     yd.data(), strides_of(yd).data()));
  SS_CUDNN_CHECK(dnn, dnn.cudnnSetFilterNdDescriptor(s.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW,
                                                     int(wd.size()), wd.data()));
  SS_CUDNN_CHECK(dnn, dnn.cudnnSetConvolutionNdDescriptor(
                          s.conv, int(pads.size()), pads.data(), strides.data(), dilations.data(),
                          CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  SS_CUDNN_CHECK(dnn, dnn.cudnnSetConvolutionGroupCount(s.conv, int(op.group)));
  // cuDNN must agree with shape inference on the output, or the arena would be wrong.
  std::vector<int> out(yd.size());
  SS_CUDNN_CHECK(dnn, dnn.cudnnGetConvolutionNdForwardOutputDim(s.conv, s.x, s.w, int(out.size()),
                                                                out.data()));
  if (out != yd) {
    return Status{ErrorCode::kInternal,
                  fmt::format("{}: cuDNN computes output dims [{}], the plan has [{}]", op.label,
                              fmt::join(out, ","), fmt::join(yd, ","))};
  }
  std::array<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT> perf{};
  int found = 0;
  SS_CUDNN_CHECK(dnn, dnn.cudnnFindConvolutionForwardAlgorithm(
                          cudnn_, s.x, s.w, s.conv, s.y, int(perf.size()), &found, perf.data()));
  // Results come fastest first; the first that ran and fits the workspace limit wins. Its math
  // type (TF32 tensor cores allowed by default, as in PyTorch) goes with it.
  const cudnnConvolutionFwdAlgoPerf_t* best = nullptr;
  for (int i = 0; i < found && best == nullptr; ++i) {
    if (perf[size_t(i)].status == CUDNN_STATUS_SUCCESS &&
        perf[size_t(i)].memory <= kMaxConvWorkspace) {
      best = &perf[size_t(i)];
    }
  }
  if (best == nullptr) {
    return Status{ErrorCode::kInternal,
                  fmt::format("{}: cuDNN found no algorithm for this convolution", op.label)};
  }
  s.algo = best->algo;
  s.workspace = best->memory;
  SS_CUDNN_CHECK(dnn, dnn.cudnnSetConvolutionMathType(s.conv, best->mathType));
  const int channels = yd[1];
  std::vector<int> bias_dims(yd.size(), 1);
  bias_dims[1] = channels;
  SS_CUDNN_CHECK(dnn, dnn.cudnnCreateTensorDescriptor(&s.bias));
  SS_CUDNN_CHECK(dnn,
                 dnn.cudnnSetTensorNdDescriptor(s.bias, CUDNN_DATA_FLOAT, int(bias_dims.size()),
                                                bias_dims.data(), strides_of(bias_dims).data()));
  return Status::ok();
}

Status CudaExecutor::prepare_convolutions() {
  convs_.resize(model_.programs.size());
  for (size_t p = 0; p < model_.programs.size(); ++p) {
    for (size_t s = 0; s < model_.programs[p].steps.size(); ++s) {
      const DeviceStep& step = model_.programs[p].steps[s];
      if (step.kind != DeviceStep::Kind::kConv && step.kind != DeviceStep::Kind::kConvFused)
        continue;
      ASSIGN_OR_RETURN(ConvSetup setup,
                       find_convolution(model_.plans[p], model_.plans[p].ops[step.op]));
      conv_workspace_bytes_ = std::max(conv_workspace_bytes_, setup.workspace);
      convs_[p].emplace(s, setup);
    }
  }
  if (conv_workspace_bytes_ > 0) {
    SS_CU_CHECK(api_, api_.cuMemAlloc(&conv_workspace_, conv_workspace_bytes_));
  }
  return Status::ok();
}

Result<DeviceQueue> CudaExecutor::enter(const ComputeContext& ctx) {
  DeviceQueue queue = ctx.device_queue();
  if (queue.stream == nullptr) {
    // A host context: the executor's own stream, keyed apart from every pool index.
    queue = {primary_, own_stream_, SIZE_MAX};
  }
  SS_CU_CHECK(api_, api_.cuCtxSetCurrent(static_cast<CUcontext>(queue.context)));
  return queue;
}

Status CudaExecutor::record(size_t index, CUstream stream, std::span<const CUevent> timing) {
  const DeviceProgram& program = model_.programs[index];
  SS_CUDNN_CHECK(libs_.cudnn, libs_.cudnn.cudnnSetStream(cudnn_, stream));
  SS_CUBLAS_CHECK(libs_.cublas, libs_.cublas.cublasSetStream(cublas_, stream));
  for (size_t s = 0; s < program.steps.size(); ++s) {
    const auto conv = convs_[index].find(s);
    if (!timing.empty()) SS_CU_CHECK(api_, api_.cuEventRecord(timing[2 * s], stream));
    RETURN_IF_ERROR(record_step(index, program.steps[s],
                                conv == convs_[index].end() ? nullptr : &conv->second, stream));
    if (!timing.empty()) SS_CU_CHECK(api_, api_.cuEventRecord(timing[2 * s + 1], stream));
  }
  return Status::ok();
}

Result<std::span<const CUevent>> CudaExecutor::timing_events(size_t queue, size_t count) {
  std::vector<CUevent>& pool = timing_events_[queue];
  while (pool.size() < count) {
    CUevent event = nullptr;
    SS_CU_CHECK(api_, api_.cuEventCreate(&event, CU_EVENT_DEFAULT));
    pool.push_back(event);
  }
  return std::span<const CUevent>(pool.data(), count);
}

Status CudaExecutor::record_step(size_t index, const DeviceStep& step, const ConvSetup* conv,
                                 CUstream stream) {
  const Plan& plan = model_.plans[index];
  const PlanOp& op = plan.ops[step.op];
  const CudnnApi& dnn = libs_.cudnn;
  auto ptr = [&](int v) { return reinterpret_cast<void*>(model_.address(index, v)); };
  const float one = 1.0F;
  const float zero = 0.0F;
  switch (step.kind) {
    case DeviceStep::Kind::kConvFused: {
      // y = relu(conv(x) + z + bias) in one call; without z its scale is 0 (z := y, unread).
      const float z_scale = step.z >= 0 ? 1.0F : 0.0F;
      void* z = step.z >= 0 ? ptr(step.z) : ptr(op.outputs[0]);
      cudnnActivationDescriptor_t relu = nullptr;
      SS_CUDNN_CHECK(dnn, dnn.cudnnCreateActivationDescriptor(&relu));
      const cudnnStatus_t set = dnn.cudnnSetActivationDescriptor(relu, CUDNN_ACTIVATION_RELU,
                                                                 CUDNN_NOT_PROPAGATE_NAN, 0.0);
      const cudnnStatus_t ran =
          set != CUDNN_STATUS_SUCCESS
              ? set
              : dnn.cudnnConvolutionBiasActivationForward(
                    cudnn_, &one, conv->x, ptr(op.inputs[0]), conv->w, ptr(op.inputs[1]),
                    conv->conv, conv->algo, reinterpret_cast<void*>(conv_workspace_),
                    conv_workspace_bytes_, &z_scale, conv->y, z, conv->bias,
                    reinterpret_cast<void*>(model_.weight(step.bias)), relu, conv->y,
                    ptr(op.outputs[0]));
      dnn.cudnnDestroyActivationDescriptor(relu);
      SS_CUDNN_CHECK(dnn, ran);
      return Status::ok();
    }
    case DeviceStep::Kind::kConv: {
      SS_CUDNN_CHECK(dnn, dnn.cudnnConvolutionForward(
                              cudnn_, &one, conv->x, ptr(op.inputs[0]), conv->w, ptr(op.inputs[1]),
                              conv->conv, conv->algo, reinterpret_cast<void*>(conv_workspace_),
                              conv_workspace_bytes_, &zero, conv->y, ptr(op.outputs[0])));
      if (!step.epilogue) return Status::ok();
      return kernels_->epilogue(stream, op.post_ops,
                                step.bias == SIZE_MAX ? CUdeviceptr{0} : model_.weight(step.bias),
                                model_.sums_of(index, op), model_.tensor(index, op.outputs[0]));
    }
    case DeviceStep::Kind::kGemm:
      return record_gemm(index, step, stream);
    case DeviceStep::Kind::kMatMul:
      return record_matmul(index, step);
    case DeviceStep::Kind::kBatchNorm: {
      const size_t channels = static_cast<size_t>(plan.values[size_t(op.inputs[1])].dims[0]);
      const CUdeviceptr scale = model_.weight(step.scale_shift);
      return kernels_->batch_norm(stream, op, scale, scale + channels * sizeof(float),
                                  model_.tensor(index, op.inputs[0]),
                                  model_.tensor(index, op.outputs[0]));
    }
    case DeviceStep::Kind::kKernel:
      return record_kernel(index, op, stream);
  }
  return Status::ok();
}

Status CudaExecutor::record_gemm(size_t index, const DeviceStep& step, CUstream stream) {
  const Plan& plan = model_.plans[index];
  const PlanOp& op = plan.ops[step.op];
  const DeviceTensor y = model_.tensor(index, op.outputs[0]);
  const std::vector<int64_t>& a = plan.values[size_t(op.inputs[0])].dims;
  const std::vector<int64_t>& b = plan.values[size_t(op.inputs[1])].dims;
  const int m = int(op.trans_a ? a[1] : a[0]);
  const int k = int(op.trans_a ? a[0] : a[1]);
  const int n = int(op.trans_b ? b[0] : b[1]);
  float beta = 0.0F;
  if (step.zero != SIZE_MAX) {
    // Y = broadcast(C) first, so that cuBLAS's beta scales it: C + zeros [M, 1] with the binary
    // kernel's broadcasting.
    PlanOp copy_c;
    copy_c.kind = OpKind::kBinary;
    copy_c.binary = BinaryAlg::kAdd;
    copy_c.label = op.label + " (C)";
    const int64_t zero_dims[] = {m, 1};
    const DeviceTensor zeros{model_.weight(step.zero), DataType::kFp32, zero_dims};
    RETURN_IF_ERROR(kernels_->binary(stream, copy_c, model_.tensor(index, op.inputs[2]), zeros, y));
    beta = op.beta;
  }
  // Row-major Y[m,n] = op(A) op(B) is column-major Y^T = op(B)^T op(A)^T: B first (see
  // docs/nvidia.md, "CUDA executor").
  const cublasOperation_t op_b = op.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = op.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int ldb = op.trans_b ? k : n;
  const int lda = op.trans_a ? m : k;
  const auto* pa = reinterpret_cast<const float*>(model_.address(index, op.inputs[0]));
  const auto* pb = reinterpret_cast<const float*>(model_.address(index, op.inputs[1]));
  auto* py = reinterpret_cast<float*>(y.data);
  SS_CUBLAS_CHECK(libs_.cublas, libs_.cublas.cublasSgemm(cublas_, op_b, op_a, n, m, k, &op.alpha,
                                                         pb, ldb, pa, lda, &beta, py, n));
  if (!step.epilogue) return Status::ok();
  return kernels_->epilogue(stream, op.post_ops, 0, model_.sums_of(index, op), y);
}

Status CudaExecutor::record_matmul(size_t index, const DeviceStep& step) {
  const PlanOp& op = model_.plans[index].ops[step.op];
  const auto* pa = reinterpret_cast<const float*>(model_.address(index, op.inputs[0]));
  const auto* pb = reinterpret_cast<const float*>(model_.address(index, op.inputs[1]));
  auto* py = reinterpret_cast<float*>(model_.address(index, op.outputs[0]));
  const float one = 1.0F;
  const float zero = 0.0F;
  const int m = int(step.m);
  const int n = int(step.n);
  const int k = int(step.k);
  if (step.batch == 1) {
    SS_CUBLAS_CHECK(libs_.cublas, libs_.cublas.cublasSgemm(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, n, m,
                                                           k, &one, pb, n, pa, k, &zero, py, n));
    return Status::ok();
  }
  SS_CUBLAS_CHECK(libs_.cublas,
                  libs_.cublas.cublasSgemmStridedBatched(
                      cublas_, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &one, pb, n, step.stride_b, pa, k,
                      step.stride_a, &zero, py, n, step.m * step.n, int(step.batch)));
  return Status::ok();
}

Status CudaExecutor::record_kernel(size_t index, const PlanOp& op, CUstream stream) {
  std::vector<DeviceTensor> in, out;
  for (int v : op.inputs) in.push_back(model_.tensor(index, v));
  for (int v : op.outputs) out.push_back(model_.tensor(index, v));
  return launch_op_kernels(op, in, out,
                           [&](const auto& launch) { return kernels_->launch(stream, launch); });
}

Status CudaExecutor::launch(size_t index, const DeviceQueue& queue) {
  auto stream = static_cast<CUstream>(queue.stream);
  if (!capture_works_) return record(index, stream);
  const auto key = std::make_pair(index, queue.index);
  auto found = graphs_.find(key);
  if (found == graphs_.end()) {
    // First run on this queue: capture the steps into a graph (kernels and library calls record
    // their work; nothing runs) and instantiate it for this queue's context.
    SS_CU_CHECK(api_, api_.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    const Status recorded = record(index, stream);
    CUgraph graph = nullptr;
    const CUresult ended = api_.cuStreamEndCapture(stream, &graph);
    CUgraphExec exec = nullptr;
    CUresult instantiated = CUDA_ERROR_UNKNOWN;
    if (recorded.is_ok() && ended == CUDA_SUCCESS) {
      instantiated = api_.cuGraphInstantiate(&exec, graph, 0);
    }
    if (graph != nullptr) api_.cuGraphDestroy(graph);
    if (!recorded.is_ok() || ended != CUDA_SUCCESS || instantiated != CUDA_SUCCESS) {
      // Some library path refused capture: run eagerly from now on, and say so once.
      capture_works_ = false;
      const std::string why =
          !recorded.is_ok()
              ? recorded.message()
              : cuda_error(api_, ended != CUDA_SUCCESS ? ended : instantiated,
                           ended != CUDA_SUCCESS ? "cuStreamEndCapture" : "cuGraphInstantiate",
                           __FILE__, __LINE__)
                    .message();
      spdlog::warn("cuda executor: CUDA graph capture failed ({}); running the steps eagerly", why);
      return record(index, stream);
    }
    found = graphs_.emplace(key, exec).first;
  }
  SS_CU_CHECK(api_, api_.cuGraphLaunch(found->second, stream));
  return Status::ok();
}

Status CudaExecutor::copy_in(size_t index, std::span<const std::byte* const> inputs,
                             CUstream stream) {
  const Plan& plan = model_.plans[index];
  for (size_t i = 0; i < inputs.size(); ++i) {
    const PlanValue& v = plan.values[size_t(plan.inputs[i])];
    SS_CU_CHECK(api_, api_.cuMemcpyHtoDAsync(model_.address(index, plan.inputs[i]), inputs[i],
                                             v.byte_size(), stream));
  }
  return Status::ok();
}

Status CudaExecutor::copy_out(size_t index, std::span<std::byte* const> outputs, CUstream stream) {
  const Plan& plan = model_.plans[index];
  for (size_t i = 0; i < outputs.size(); ++i) {
    const PlanValue& v = plan.values[size_t(plan.outputs[i])];
    SS_CU_CHECK(api_, api_.cuMemcpyDtoHAsync(outputs[i], model_.address(index, plan.outputs[i]),
                                             v.byte_size(), stream));
  }
  return Status::ok();
}

Status CudaExecutor::run(size_t index, std::span<const std::byte* const> inputs,
                         std::span<std::byte* const> outputs, ComputeContext& ctx) {
  RETURN_IF_ERROR(model_.check_batch(index, inputs.size(), outputs.size()));
  ASSIGN_OR_RETURN(const DeviceQueue queue, enter(ctx));
  auto stream = static_cast<CUstream>(queue.stream);
  RETURN_IF_ERROR(copy_in(index, inputs, stream));
  RETURN_IF_ERROR(launch(index, queue));
  RETURN_IF_ERROR(copy_out(index, outputs, stream));
  SS_CU_CHECK(api_, api_.cuStreamSynchronize(stream));
  return Status::ok();
}

Result<std::vector<Executor::OpTiming>> CudaExecutor::profile_run(
    size_t index, std::span<const std::byte* const> inputs, std::span<std::byte* const> outputs,
    ComputeContext& ctx) {
  RETURN_IF_ERROR(model_.check_batch(index, inputs.size(), outputs.size()));
  ASSIGN_OR_RETURN(const DeviceQueue queue, enter(ctx));
  auto stream = static_cast<CUstream>(queue.stream);
  const DeviceProgram& program = model_.programs[index];
  ASSIGN_OR_RETURN(std::span<const CUevent> events,
                   timing_events(queue.index, 2 * program.steps.size()));
  RETURN_IF_ERROR(copy_in(index, inputs, stream));
  // Eagerly, never the captured graph: a graph launch is one unit on the stream, with no point
  // between two steps to record an event at. The steps run as a graph would run them.
  RETURN_IF_ERROR(record(index, stream, events));
  RETURN_IF_ERROR(copy_out(index, outputs, stream));
  SS_CU_CHECK(api_, api_.cuStreamSynchronize(stream));
  std::vector<OpTiming> timings;
  for (size_t s = 0; s < program.steps.size(); ++s) {
    float ms = 0;
    SS_CU_CHECK(api_, api_.cuEventElapsedTime(&ms, events[2 * s], events[2 * s + 1]));
    timings.push_back({model_.plans[index].ops[program.steps[s].op].label, double(ms)});
  }
  return timings;
}

Status CudaExecutor::run_items(size_t index, std::span<const ItemBuffers> items,
                               ComputeContext& ctx) {
  RETURN_IF_ERROR(model_.check_items(index, items));
  const Plan& plan = model_.plans[index];
  ASSIGN_OR_RETURN(const DeviceQueue queue, enter(ctx));
  auto stream = static_cast<CUstream>(queue.stream);
  // Each item straight from its slot to its row of the batch (DMA from pinned memory).
  for (size_t t = 0; t < plan.inputs.size(); ++t) {
    const size_t item_bytes = plan.values[size_t(plan.inputs[t])].byte_size() / items.size();
    const CUdeviceptr base = model_.address(index, plan.inputs[t]);
    for (size_t i = 0; i < items.size(); ++i) {
      SS_CU_CHECK(api_, api_.cuMemcpyHtoDAsync(base + i * item_bytes, items[i].inputs[t],
                                               item_bytes, stream));
    }
  }
  RETURN_IF_ERROR(launch(index, queue));
  for (size_t t = 0; t < plan.outputs.size(); ++t) {
    const size_t item_bytes = plan.values[size_t(plan.outputs[t])].byte_size() / items.size();
    const CUdeviceptr base = model_.address(index, plan.outputs[t]);
    for (size_t i = 0; i < items.size(); ++i) {
      SS_CU_CHECK(api_, api_.cuMemcpyDtoHAsync(items[i].outputs[t], base + i * item_bytes,
                                               item_bytes, stream));
    }
  }
  SS_CU_CHECK(api_, api_.cuStreamSynchronize(stream));
  return Status::ok();
}

Status CudaExecutor::register_host_memory(std::span<std::byte> memory) {
  if (memory.empty()) return Status::ok();
  SS_CU_CHECK(api_, api_.cuCtxSetCurrent(primary_));
  // PORTABLE: pinned for every context of the process, green contexts' included. Pinning is a
  // speed-up, not a need: unpinned items still copy (the driver stages them), so a refusal is
  // a warning rather than a failed load.
  const CUresult pinned =
      api_.cuMemHostRegister(memory.data(), memory.size(), CU_MEMHOSTREGISTER_PORTABLE);
  if (pinned != CUDA_SUCCESS) {
    spdlog::warn(
        "cuda executor: {}: items are copied through the driver's staging buffers",
        cuda_error(api_, pinned, "cuMemHostRegister(slot data, PORTABLE)", __FILE__, __LINE__)
            .message());
    return Status::ok();
  }
  registered_.push_back(memory.data());
  return Status::ok();
}

}  // namespace

std::unique_ptr<Executor> create_cuda_executor(const CudaDriverApi& api, const CudaLibraries& libs,
                                               CUdevice device) {
  return std::make_unique<CudaExecutor>(api, libs, device);
}

Result<std::unique_ptr<Executor>> create_cuda_executor(int device) {
  ASSIGN_OR_RETURN(const CudaDriver* driver, load_cuda_driver());
  ASSIGN_OR_RETURN(const CudaDeviceInfo info, driver->device_info(device));
  ASSIGN_OR_RETURN(const CudaLibraries* libs, load_cuda_libraries());
  const CudaDriverApi& api = driver->api();
  CUdevice handle = 0;
  SS_CU_CHECK(api, api.cuDeviceGet(&handle, info.index));
  return create_cuda_executor(api, *libs, handle);
}

}  // namespace sliceserve::backends
