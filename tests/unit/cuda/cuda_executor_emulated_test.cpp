// The CUDA executor's host code on an emulated device, against the cpu executor: every
// torchvision export under models/ and a few hand-made plans, run through the executor's real
// compile and run paths with the driver, cuDNN and cuBLAS replaced by recording fakes whose
// "device" is host memory: kernels run their own bodies on the host (cuda_host_kernels.h),
// convolutions the reference kernels, GEMMs a plain loop, and stream capture records the work
// into a graph that a launch replays. What is checked here is everything but the vendor code:
// buffer placement, every launch's parameters, the GEMM transposition arguments, the fused
// convolution's z and bias, graphs per plan and queue, copies per item, host registration, the
// eager fallback, where the weights go, and profile_run's event pair around each step (the fake
// device's clock counts the work it has run, so an event pair times the work between them).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cuda_executor_internal.h"
#include "cuda_kernels.h"
#include "reference_ops.h"
#include "support/device_host_kernels.h"
#include "support/emulated_executor.h"
#include "support/torchvision_models.h"

namespace sliceserve::backends {
namespace {

// ---- the emulated device ---------------------------------------------------------------------

struct FakeTensorDesc {
  std::vector<int64_t> dims;
};
struct FakeFilterDesc {
  std::vector<int64_t> dims;
};
struct FakeConvDesc {
  std::vector<int64_t> pads, strides, dilations;
  int64_t group = 1;
};
struct FakeGraph {
  std::vector<std::function<void()>> work;
};

// What the fakes saw, and the knobs the tests turn.
struct Device {
  std::map<CUstream, std::vector<std::function<void()>>*> capturing;  // stream -> its capture
  std::map<CUfunction, DeviceKernel> functions;
  CUstream cudnn_stream = nullptr;
  CUstream cublas_stream = nullptr;
  CUcontext current = nullptr;
  std::vector<CUcontext> made_current;
  int captures = 0;
  int graph_launches = 0;
  int kernel_launches = 0;
  int convolutions = 0;
  int fused_convolutions = 0;
  int gemms = 0;
  int h2d = 0;
  int d2h = 0;
  int allocations = 0;
  std::vector<std::pair<void*, size_t>> registered;
  bool fail_next_end_capture = false;
  int live_graphs = 0;
  int work_done = 0;  // the device's clock: pieces of work run so far (each "takes" 0.5 ms)
  std::map<CUevent, unsigned> event_flags;      // live events
  std::map<CUevent, CUcontext> event_contexts;  // the context current when each was created
  std::map<CUevent, int> event_times;           // work_done when each was last recorded
  struct EventRecord {
    CUevent event = nullptr;
    CUstream stream = nullptr;
    CUcontext current = nullptr;
  };
  std::vector<EventRecord> event_records;
  std::vector<std::pair<CUevent, CUevent>> elapsed;  // cuEventElapsedTime(start, end)
  int events_created = 0;
};

Device& device() {
  static Device d;
  return d;
}

// Runs `work` now, or records it when `stream` is being captured.
void enqueue(CUstream stream, std::function<void()> work) {
  auto capture = device().capturing.find(stream);
  if (capture != device().capturing.end()) {
    capture->second->push_back(std::move(work));
  } else {
    work();
    ++device().work_done;
  }
}

template <typename T>
T* from(CUdeviceptr p) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

// The driver.
CUresult fake_name(CUresult, const char** text) {
  *text = "CUDA_ERROR_FAKE";
  return CUDA_SUCCESS;
}
CUresult fake_retain(CUcontext* ctx, CUdevice) {
  *ctx = reinterpret_cast<CUcontext>(0x100);
  return CUDA_SUCCESS;
}
CUresult fake_release(CUdevice) { return CUDA_SUCCESS; }
CUresult fake_set_current(CUcontext ctx) {
  device().current = ctx;
  device().made_current.push_back(ctx);
  return CUDA_SUCCESS;
}
CUresult fake_stream_create(CUstream* stream, unsigned) {
  static uintptr_t next = 0x1000;
  *stream = reinterpret_cast<CUstream>(next++);
  return CUDA_SUCCESS;
}
CUresult fake_stream_destroy(CUstream) { return CUDA_SUCCESS; }
CUresult fake_stream_sync(CUstream) { return CUDA_SUCCESS; }
CUresult fake_mem_alloc(CUdeviceptr* p, size_t bytes) {
  void* host = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  std::memset(host, 0xCD, bytes);  // garbage, as fresh device memory is
  *p = reinterpret_cast<uintptr_t>(host);
  ++device().allocations;
  return CUDA_SUCCESS;
}
CUresult fake_mem_free(CUdeviceptr p) {
  std::free(from<void>(p));
  --device().allocations;
  return CUDA_SUCCESS;
}
CUresult fake_h2d(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream) {
  ++device().h2d;
  enqueue(stream, [=] { std::memcpy(from<void>(dst), src, bytes); });
  return CUDA_SUCCESS;
}
CUresult fake_d2h(void* dst, CUdeviceptr src, size_t bytes, CUstream stream) {
  ++device().d2h;
  enqueue(stream, [=] { std::memcpy(dst, from<void>(src), bytes); });
  return CUDA_SUCCESS;
}
CUresult fake_host_register(void* p, size_t bytes, unsigned) {
  device().registered.emplace_back(p, bytes);
  return CUDA_SUCCESS;
}
CUresult fake_host_unregister(void*) { return CUDA_SUCCESS; }
CUresult fake_library_load(CUlibrary* library, const void*, CUjit_option*, void**, unsigned,
                           CUlibraryOption*, void**, unsigned) {
  *library = reinterpret_cast<CUlibrary>(0x200);
  return CUDA_SUCCESS;
}
CUresult fake_library_unload(CUlibrary) { return CUDA_SUCCESS; }
CUresult fake_get_kernel(CUkernel* k, CUlibrary, const char* name) {
  for (size_t i = 0; i < kDeviceKernelCount; ++i) {
    const auto kernel = static_cast<DeviceKernel>(i);
    if (std::strcmp(device_kernel_name(kernel), name) == 0) {
      *k = reinterpret_cast<CUkernel>(0x300 + i);
      device().functions[reinterpret_cast<CUfunction>(*k)] = kernel;
      return CUDA_SUCCESS;
    }
  }
  return CUDA_ERROR_NOT_FOUND;
}
CUresult fake_launch(CUfunction f, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                     unsigned, CUstream stream, void** params, void**) {
  ++device().kernel_launches;
  enqueue(stream, testing::host_kernel(device().functions.at(f), params[0]));
  return CUDA_SUCCESS;
}
CUresult fake_begin_capture(CUstream stream, CUstreamCaptureMode) {
  ++device().captures;
  device().capturing[stream] = new std::vector<std::function<void()>>();
  return CUDA_SUCCESS;
}
CUresult fake_end_capture(CUstream stream, CUgraph* graph) {
  std::unique_ptr<std::vector<std::function<void()>>> work(device().capturing.at(stream));
  device().capturing.erase(stream);
  if (device().fail_next_end_capture) {
    device().fail_next_end_capture = false;
    *graph = nullptr;
    return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  }
  *graph = reinterpret_cast<CUgraph>(new FakeGraph{std::move(*work)});
  return CUDA_SUCCESS;
}
CUresult fake_instantiate(CUgraphExec* exec, CUgraph graph, unsigned long long) {
  *exec = reinterpret_cast<CUgraphExec>(new FakeGraph(*reinterpret_cast<FakeGraph*>(graph)));
  ++device().live_graphs;
  return CUDA_SUCCESS;
}
CUresult fake_graph_destroy(CUgraph graph) {
  delete reinterpret_cast<FakeGraph*>(graph);
  return CUDA_SUCCESS;
}
CUresult fake_exec_destroy(CUgraphExec exec) {
  delete reinterpret_cast<FakeGraph*>(exec);
  --device().live_graphs;
  return CUDA_SUCCESS;
}
CUresult fake_graph_launch(CUgraphExec exec, CUstream stream) {
  ++device().graph_launches;
  const FakeGraph* graph = reinterpret_cast<FakeGraph*>(exec);
  enqueue(stream, [graph] {
    for (const auto& work : graph->work) work();
  });
  return CUDA_SUCCESS;
}

CUresult fake_event_create(CUevent* event, unsigned flags) {
  static uintptr_t next = 0x9000;
  *event = reinterpret_cast<CUevent>(next++);
  device().event_flags[*event] = flags;
  device().event_contexts[*event] = device().current;
  ++device().events_created;
  return CUDA_SUCCESS;
}
CUresult fake_event_destroy(CUevent event) {
  device().event_flags.erase(event);
  return CUDA_SUCCESS;
}
CUresult fake_event_record(CUevent event, CUstream stream) {
  device().event_times[event] = device().work_done;  // work runs when enqueued: all done by now
  device().event_records.push_back({event, stream, device().current});
  return CUDA_SUCCESS;
}
CUresult fake_elapsed(float* ms, CUevent start, CUevent end) {
  device().elapsed.emplace_back(start, end);
  *ms = 0.5F * float(device().event_times.at(end) - device().event_times.at(start));
  return CUDA_SUCCESS;
}

CudaDriverApi fake_driver() {
  CudaDriverApi api;
  api.cuGetErrorName = &fake_name;
  api.cuGetErrorString = &fake_name;
  api.cuDevicePrimaryCtxRetain = &fake_retain;
  api.cuDevicePrimaryCtxRelease = &fake_release;
  api.cuCtxSetCurrent = &fake_set_current;
  api.cuStreamCreate = &fake_stream_create;
  api.cuStreamDestroy = &fake_stream_destroy;
  api.cuStreamSynchronize = &fake_stream_sync;
  api.cuMemAlloc = &fake_mem_alloc;
  api.cuMemFree = &fake_mem_free;
  api.cuMemcpyHtoDAsync = &fake_h2d;
  api.cuMemcpyDtoHAsync = &fake_d2h;
  api.cuMemHostRegister = &fake_host_register;
  api.cuMemHostUnregister = &fake_host_unregister;
  api.cuLibraryLoadData = &fake_library_load;
  api.cuLibraryUnload = &fake_library_unload;
  api.cuLibraryGetKernel = &fake_get_kernel;
  api.cuLaunchKernel = &fake_launch;
  api.cuStreamBeginCapture = &fake_begin_capture;
  api.cuStreamEndCapture = &fake_end_capture;
  api.cuGraphInstantiate = &fake_instantiate;
  api.cuGraphDestroy = &fake_graph_destroy;
  api.cuGraphExecDestroy = &fake_exec_destroy;
  api.cuGraphLaunch = &fake_graph_launch;
  api.cuEventCreate = &fake_event_create;
  api.cuEventDestroy = &fake_event_destroy;
  api.cuEventRecord = &fake_event_record;
  api.cuEventElapsedTime = &fake_elapsed;
  return api;
}

// cuDNN: descriptors hold what was set; convolutions run the reference kernel.
const char* fake_cudnn_error(cudnnStatus_t) { return "CUDNN_STATUS_FAKE"; }
size_t fake_cudnn_version() { return 91900; }
cudnnStatus_t fake_cudnn_create(cudnnHandle_t* h) {
  *h = reinterpret_cast<cudnnHandle_t>(0x400);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_cudnn_destroy(cudnnHandle_t) { return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t fake_cudnn_set_stream(cudnnHandle_t, cudaStream_t stream) {
  device().cudnn_stream = reinterpret_cast<CUstream>(stream);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_create_tensor(cudnnTensorDescriptor_t* d) {
  *d = reinterpret_cast<cudnnTensorDescriptor_t>(new FakeTensorDesc);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_set_tensor(cudnnTensorDescriptor_t d, cudnnDataType_t, int n, const int dims[],
                              const int[]) {
  reinterpret_cast<FakeTensorDesc*>(d)->dims.assign(dims, dims + n);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_destroy_tensor(cudnnTensorDescriptor_t d) {
  delete reinterpret_cast<FakeTensorDesc*>(d);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_create_filter(cudnnFilterDescriptor_t* d) {
  *d = reinterpret_cast<cudnnFilterDescriptor_t>(new FakeFilterDesc);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_set_filter(cudnnFilterDescriptor_t d, cudnnDataType_t, cudnnTensorFormat_t,
                              int n, const int dims[]) {
  reinterpret_cast<FakeFilterDesc*>(d)->dims.assign(dims, dims + n);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_destroy_filter(cudnnFilterDescriptor_t d) {
  delete reinterpret_cast<FakeFilterDesc*>(d);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_create_conv(cudnnConvolutionDescriptor_t* d) {
  *d = reinterpret_cast<cudnnConvolutionDescriptor_t>(new FakeConvDesc);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_set_conv(cudnnConvolutionDescriptor_t d, int n, const int pads[],
                            const int strides[], const int dilations[], cudnnConvolutionMode_t,
                            cudnnDataType_t) {
  auto* c = reinterpret_cast<FakeConvDesc*>(d);
  c->pads.assign(pads, pads + n);
  c->strides.assign(strides, strides + n);
  c->dilations.assign(dilations, dilations + n);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_set_group(cudnnConvolutionDescriptor_t d, int group) {
  reinterpret_cast<FakeConvDesc*>(d)->group = group;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_set_math(cudnnConvolutionDescriptor_t, cudnnMathType_t) {
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_destroy_conv(cudnnConvolutionDescriptor_t d) {
  delete reinterpret_cast<FakeConvDesc*>(d);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_output_dim(cudnnConvolutionDescriptor_t d, cudnnTensorDescriptor_t x,
                              cudnnFilterDescriptor_t w, int n, int out[]) {
  const auto* c = reinterpret_cast<FakeConvDesc*>(d);
  const auto& xd = reinterpret_cast<FakeTensorDesc*>(x)->dims;
  const auto& wd = reinterpret_cast<FakeFilterDesc*>(w)->dims;
  out[0] = int(xd[0]);
  out[1] = int(wd[0]);
  for (int i = 2; i < n; ++i) {
    const size_t s = size_t(i - 2);
    const int64_t extent = c->dilations[s] * (wd[size_t(i)] - 1) + 1;
    out[i] = int((xd[size_t(i)] + 2 * c->pads[s] - extent) / c->strides[s] + 1);
  }
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_find(cudnnHandle_t, cudnnTensorDescriptor_t, cudnnFilterDescriptor_t,
                        cudnnConvolutionDescriptor_t, cudnnTensorDescriptor_t, int, int* returned,
                        cudnnConvolutionFwdAlgoPerf_t* perf) {
  // A failed and an oversized algorithm first: the executor must skip both.
  perf[0] = {};
  perf[0].status = CUDNN_STATUS_NOT_SUPPORTED;
  perf[1] = {};
  perf[1].algo = CUDNN_CONVOLUTION_FWD_ALGO_FFT;
  perf[1].memory = size_t{1} << 40;
  perf[2] = {};
  perf[2].algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
  perf[2].memory = 4096;
  *returned = 3;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_workspace(cudnnHandle_t, cudnnTensorDescriptor_t, cudnnFilterDescriptor_t,
                             cudnnConvolutionDescriptor_t, cudnnTensorDescriptor_t,
                             cudnnConvolutionFwdAlgo_t, size_t* bytes) {
  *bytes = 4096;
  return CUDNN_STATUS_SUCCESS;
}

// y = conv(x, w) on the host, with the reference kernel (4-D: a 1-D convolution arrives as 2-D
// with height 1).
void reference_conv(const FakeConvDesc& c, const FakeTensorDesc& xd, const void* x,
                    const FakeFilterDesc& wd, const void* w, const FakeTensorDesc& yd, void* y) {
  PlanOp op;
  op.kind = OpKind::kConv;
  op.label = "fake cudnn";
  op.group = c.group;
  op.kernel.assign(wd.dims.begin() + 2, wd.dims.end());
  op.strides = c.strides;
  op.dilations = c.dilations;
  op.pads = c.pads;
  op.pads.insert(op.pads.end(), c.pads.begin(), c.pads.end());
  const TensorRef inputs[] = {{DataType::kFp32, xd.dims, static_cast<const std::byte*>(x)},
                              {DataType::kFp32, wd.dims, static_cast<const std::byte*>(w)},
                              {DataType::kFp32, {}, nullptr}};
  const MutableTensorRef outputs[] = {{DataType::kFp32, yd.dims, static_cast<std::byte*>(y)}};
  const Status status = run_reference_op(op, inputs, outputs);
  ASSERT_TRUE(status.is_ok()) << status.to_string();
}

int64_t count(const FakeTensorDesc& d) {
  int64_t n = 1;
  for (int64_t v : d.dims) n *= v;
  return n;
}

cudnnStatus_t fake_conv(cudnnHandle_t, const void* alpha, cudnnTensorDescriptor_t xd, const void* x,
                        cudnnFilterDescriptor_t wd, const void* w, cudnnConvolutionDescriptor_t cd,
                        cudnnConvolutionFwdAlgo_t algo, void*, size_t workspace, const void* beta,
                        cudnnTensorDescriptor_t yd, void* y) {
  EXPECT_EQ(algo, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM);
  EXPECT_GE(workspace, 4096u);
  EXPECT_EQ(*static_cast<const float*>(alpha), 1.0F);
  EXPECT_EQ(*static_cast<const float*>(beta), 0.0F);
  ++device().convolutions;
  const auto* c = reinterpret_cast<FakeConvDesc*>(cd);
  const auto* xs = reinterpret_cast<FakeTensorDesc*>(xd);
  const auto* ws = reinterpret_cast<FakeFilterDesc*>(wd);
  const auto* ys = reinterpret_cast<FakeTensorDesc*>(yd);
  enqueue(device().cudnn_stream, [=] { reference_conv(*c, *xs, x, *ws, w, *ys, y); });
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t fake_conv_bias_act(cudnnHandle_t, const void* alpha1, cudnnTensorDescriptor_t xd,
                                 const void* x, cudnnFilterDescriptor_t wd, const void* w,
                                 cudnnConvolutionDescriptor_t cd, cudnnConvolutionFwdAlgo_t, void*,
                                 size_t, const void* alpha2, cudnnTensorDescriptor_t zd,
                                 const void* z, cudnnTensorDescriptor_t bd, const void* bias,
                                 cudnnActivationDescriptor_t, cudnnTensorDescriptor_t yd, void* y) {
  ++device().fused_convolutions;
  const float a1 = *static_cast<const float*>(alpha1);
  const float a2 = *static_cast<const float*>(alpha2);
  const auto* c = reinterpret_cast<FakeConvDesc*>(cd);
  const auto* xs = reinterpret_cast<FakeTensorDesc*>(xd);
  const auto* ws = reinterpret_cast<FakeFilterDesc*>(wd);
  const auto* ys = reinterpret_cast<FakeTensorDesc*>(yd);
  EXPECT_EQ(reinterpret_cast<FakeTensorDesc*>(zd)->dims, ys->dims);
  EXPECT_EQ(reinterpret_cast<FakeTensorDesc*>(bd)->dims[1], ys->dims[1]);
  enqueue(device().cudnn_stream, [=] {
    const int64_t n = count(*ys);
    // z may be y itself (scaled by 0): read it before the convolution overwrites y.
    std::vector<float> zs(static_cast<const float*>(z), static_cast<const float*>(z) + n);
    reference_conv(*c, *xs, x, *ws, w, *ys, y);
    auto* out = static_cast<float*>(y);
    const int64_t channels = ys->dims[1];
    const int64_t spatial = n / (ys->dims[0] * channels);
    for (int64_t i = 0; i < n; ++i) {
      const float b = static_cast<const float*>(bias)[(i / spatial) % channels];
      out[i] = std::max(0.0F, a1 * out[i] + (a2 != 0.0F ? a2 * zs[size_t(i)] : 0.0F) + b);
    }
  });
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_create_act(cudnnActivationDescriptor_t* d) {
  *d = reinterpret_cast<cudnnActivationDescriptor_t>(0x500);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_set_act(cudnnActivationDescriptor_t, cudnnActivationMode_t mode,
                           cudnnNanPropagation_t, double) {
  EXPECT_EQ(mode, CUDNN_ACTIVATION_RELU);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t fake_destroy_act(cudnnActivationDescriptor_t) { return CUDNN_STATUS_SUCCESS; }

// cuBLAS: column-major C = alpha op(A) op(B) + beta C.
const char* fake_cublas_error(cublasStatus_t) { return "CUBLAS_STATUS_FAKE"; }
cublasStatus_t fake_cublas_create(cublasHandle_t* h) {
  *h = reinterpret_cast<cublasHandle_t>(0x600);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t fake_cublas_destroy(cublasHandle_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t fake_cublas_set_stream(cublasHandle_t, cudaStream_t stream) {
  device().cublas_stream = reinterpret_cast<CUstream>(stream);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t fake_cublas_workspace(cublasHandle_t, void* p, size_t bytes) {
  EXPECT_NE(p, nullptr);
  EXPECT_GT(bytes, 0u);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t fake_cublas_math(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

void column_major_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                       const float* a, int lda, const float* b, int ldb, float beta, float* c,
                       int ldc) {
  auto at = [&](int i, int l) { return ta == CUBLAS_OP_N ? a[i + l * lda] : a[l + i * lda]; };
  auto bt = [&](int l, int j) { return tb == CUBLAS_OP_N ? b[l + j * ldb] : b[j + l * ldb]; };
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double sum = 0;
      for (int l = 0; l < k; ++l) sum += double(at(i, l)) * bt(l, j);
      float& out = c[i + j * ldc];
      out = float(alpha * sum) + (beta != 0.0F ? beta * out : 0.0F);
    }
  }
}
cublasStatus_t fake_sgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                          int k, const float* alpha, const float* a, int lda, const float* b,
                          int ldb, const float* beta, float* c, int ldc) {
  ++device().gemms;
  const float al = *alpha;
  const float be = *beta;
  enqueue(device().cublas_stream,
          [=] { column_major_gemm(ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc); });
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t fake_sgemm_batched(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                  int n, int k, const float* alpha, const float* a, int lda,
                                  long long sa, const float* b, int ldb, long long sb,
                                  const float* beta, float* c, int ldc, long long sc, int batch) {
  ++device().gemms;
  const float al = *alpha;
  const float be = *beta;
  enqueue(device().cublas_stream, [=] {
    for (int i = 0; i < batch; ++i) {
      column_major_gemm(ta, tb, m, n, k, al, a + i * sa, lda, b + i * sb, ldb, be, c + i * sc, ldc);
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

CudaLibraries fake_libraries() {
  CudaLibraries libs;
  CudnnApi& d = libs.cudnn;
  d.cudnnGetErrorString = &fake_cudnn_error;
  d.cudnnGetVersion = &fake_cudnn_version;
  d.cudnnCreate = &fake_cudnn_create;
  d.cudnnDestroy = &fake_cudnn_destroy;
  d.cudnnSetStream = &fake_cudnn_set_stream;
  d.cudnnCreateTensorDescriptor = &fake_create_tensor;
  d.cudnnSetTensorNdDescriptor = &fake_set_tensor;
  d.cudnnDestroyTensorDescriptor = &fake_destroy_tensor;
  d.cudnnCreateFilterDescriptor = &fake_create_filter;
  d.cudnnSetFilterNdDescriptor = &fake_set_filter;
  d.cudnnDestroyFilterDescriptor = &fake_destroy_filter;
  d.cudnnCreateConvolutionDescriptor = &fake_create_conv;
  d.cudnnSetConvolutionNdDescriptor = &fake_set_conv;
  d.cudnnSetConvolutionGroupCount = &fake_set_group;
  d.cudnnSetConvolutionMathType = &fake_set_math;
  d.cudnnDestroyConvolutionDescriptor = &fake_destroy_conv;
  d.cudnnGetConvolutionNdForwardOutputDim = &fake_output_dim;
  d.cudnnFindConvolutionForwardAlgorithm = &fake_find;
  d.cudnnGetConvolutionForwardWorkspaceSize = &fake_workspace;
  d.cudnnConvolutionForward = &fake_conv;
  d.cudnnConvolutionBiasActivationForward = &fake_conv_bias_act;
  d.cudnnCreateActivationDescriptor = &fake_create_act;
  d.cudnnSetActivationDescriptor = &fake_set_act;
  d.cudnnDestroyActivationDescriptor = &fake_destroy_act;
  CublasApi& b = libs.cublas;
  b.cublasGetStatusString = &fake_cublas_error;
  b.cublasCreate = &fake_cublas_create;
  b.cublasDestroy = &fake_cublas_destroy;
  b.cublasSetStream = &fake_cublas_set_stream;
  b.cublasSetWorkspace = &fake_cublas_workspace;
  b.cublasSetMathMode = &fake_cublas_math;
  b.cublasSgemm = &fake_sgemm;
  b.cublasSgemmStridedBatched = &fake_sgemm_batched;
  return libs;
}

using testing::CallBuffers;
using testing::cpu_reference;
using testing::expect_close;
using testing::expect_weights_placed;
using testing::gemm_matmul_plan;
using testing::plans_of;
using testing::QueueContext;
using testing::random_inputs;
using testing::run;
using testing::SlotItems;
using testing::step_labels;

class CudaExecutorEmulatedTest : public testing::EmulatedExecutorTest {
 protected:
  void SetUp() override {
    device() = Device{};
    EmulatedExecutorTest::SetUp();
  }
  void TearDown() override {
    EXPECT_EQ(device().allocations, 0) << "device memory leaked";
    EXPECT_EQ(device().live_graphs, 0) << "graphs leaked";
    EXPECT_TRUE(device().event_flags.empty()) << "events leaked";
  }

  std::unique_ptr<Executor> cuda() { return create_cuda_executor(api_, libs_, 0); }

  CudaDriverApi api_ = fake_driver();
  CudaLibraries libs_ = fake_libraries();
};

TEST_F(CudaExecutorEmulatedTest, EveryTorchvisionExportMatchesTheCpuExecutor) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  for (const auto& file : files) {
    SCOPED_TRACE(file.filename().string());
    auto model = plans_of(file, 2);
    ASSERT_NE(model, nullptr);
    device() = Device{};
    auto cpu = create_cpu_executor();
    ASSERT_TRUE(cpu->compile(model->plans, nullptr, 0).is_ok());
    {
      auto gpu = cuda();
      const Status compiled = gpu->compile(model->plans, nullptr, 0);
      ASSERT_TRUE(compiled.is_ok()) << compiled.to_string();
      for (size_t index = 0; index < model->plans.size(); ++index) {
        const Plan& plan = model->plans[index];
        const auto inputs = random_inputs(plan, unsigned(index) + 1);
        const auto want = run(*cpu, plan, index, inputs, *cpu_slice_);
        expect_close(run(*gpu, plan, index, inputs, *cpu_slice_), want, "captured");
        expect_close(run(*gpu, plan, index, inputs, *cpu_slice_), want, "replayed");
      }
      // One capture per plan on the executor's own stream; every run a graph launch.
      EXPECT_EQ(device().captures, 2);
      EXPECT_EQ(device().graph_launches, 4);
      EXPECT_GT(device().convolutions + device().fused_convolutions, 0);
      EXPECT_EQ(gpu->weights().private_bytes, gpu->weights().bytes);
    }
  }
}

TEST_F(CudaExecutorEmulatedTest, GemmWithBroadcastBiasAndBatchedMatMulMatchTheCpuExecutor) {
  std::deque<std::vector<float>> constants;
  const std::vector<Plan> plans = {gemm_matmul_plan(constants)};
  auto gpu = cuda();
  const Status compiled = gpu->compile(plans, nullptr, 0);
  ASSERT_TRUE(compiled.is_ok()) << compiled.to_string();
  const auto inputs = random_inputs(plans[0], 7);
  expect_close(run(*gpu, plans[0], 0, inputs, *cpu_slice_),
               cpu_reference(plans, 0, inputs, *cpu_slice_), "gemm and matmul");
  EXPECT_EQ(device().gemms, 3);
}

TEST_F(CudaExecutorEmulatedTest, ItemsGoStraightBetweenRegisteredSlotsAndTheDevice) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto model = plans_of(files.front(), 3);
  ASSERT_NE(model, nullptr);
  auto gpu = cuda();
  ASSERT_TRUE(gpu->compile(model->plans, nullptr, 0).is_ok());
  const Plan& plan = model->plans[2];  // batch 3
  ASSERT_EQ(plan.inputs.size(), 1u);
  ASSERT_EQ(plan.outputs.size(), 1u);
  const auto whole = random_inputs(plan, 3);
  SlotItems slots(plan, whole[0]);
  std::vector<float>& arena = slots.arena;
  ASSERT_TRUE(gpu->register_host_memory(std::as_writable_bytes(std::span(arena))).is_ok());
  ASSERT_EQ(device().registered.size(), 1u);
  EXPECT_EQ(device().registered[0].first, arena.data());
  EXPECT_EQ(device().registered[0].second, arena.size() * sizeof(float));
  device().h2d = 0;
  device().d2h = 0;
  ASSERT_TRUE(gpu->runs_items());
  const Status ran = gpu->run_items(2, slots.items, *cpu_slice_);
  ASSERT_TRUE(ran.is_ok()) << ran.to_string();
  EXPECT_EQ(device().h2d, 3);  // one copy per item, no gather
  EXPECT_EQ(device().d2h, 3);
  const auto want = run(*gpu, plan, 2, whole, *cpu_slice_);
  expect_close({slots.outputs()}, want, "items");
  // A batch of the wrong size is refused before anything is copied.
  EXPECT_FALSE(gpu->run_items(1, slots.items, *cpu_slice_).is_ok());
}

TEST_F(CudaExecutorEmulatedTest, EachQueueOfASlicesPoolGetsItsOwnGraphInItsContext) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto model = plans_of(files.front(), 1);
  ASSERT_NE(model, nullptr);
  auto gpu = cuda();
  ASSERT_TRUE(gpu->compile(model->plans, nullptr, 0).is_ok());
  const auto inputs = random_inputs(model->plans[0], 5);
  QueueContext ctx;
  auto* green_a = reinterpret_cast<CUcontext>(0xA0);
  auto* green_b = reinterpret_cast<CUcontext>(0xB0);
  std::vector<std::vector<float>> first;
  for (int round = 0; round < 2; ++round) {
    for (size_t entry = 0; entry < 2; ++entry) {
      ctx.queue = {entry == 0 ? green_a : green_b, reinterpret_cast<CUstream>(0x7000 + entry),
                   entry};
      device().made_current.clear();
      auto got = run(*gpu, model->plans[0], 0, inputs, ctx);
      ASSERT_FALSE(device().made_current.empty());
      EXPECT_EQ(device().made_current.back(), entry == 0 ? green_a : green_b);
      if (first.empty()) first = got;
      expect_close(got, first, "entry " + std::to_string(entry));
    }
  }
  EXPECT_EQ(device().captures, 2);  // once per queue, replayed in the second round
  EXPECT_EQ(device().graph_launches, 4);
}

TEST_F(CudaExecutorEmulatedTest, WhenCaptureIsRefusedTheStepsRunEagerlyWithTheSameAnswers) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto model = plans_of(files.front(), 1);
  ASSERT_NE(model, nullptr);
  auto gpu = cuda();
  ASSERT_TRUE(gpu->compile(model->plans, nullptr, 0).is_ok());
  const auto inputs = random_inputs(model->plans[0], 9);
  const auto want = cpu_reference(model->plans, 0, inputs, *cpu_slice_);
  device().fail_next_end_capture = true;
  expect_close(run(*gpu, model->plans[0], 0, inputs, *cpu_slice_), want, "fallback run");
  expect_close(run(*gpu, model->plans[0], 0, inputs, *cpu_slice_), want, "eager run");
  EXPECT_EQ(device().captures, 1);  // not tried again
  EXPECT_EQ(device().graph_launches, 0);
}

TEST_F(CudaExecutorEmulatedTest, WeightsGoToADeviceStoreAndAMappedRegionIsNotPrivate) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto model = plans_of(files.front(), 1);
  ASSERT_NE(model, nullptr);
  expect_weights_placed([this] { return cuda(); }, model->plans, "cuda",
                        "/sliceserve.test-emulated.m");
}

TEST_F(CudaExecutorEmulatedTest, ProfileRunTimesEveryStepEagerlyBetweenTwoEventsOnItsQueue) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto model = plans_of(files.front(), 1);
  ASSERT_NE(model, nullptr);
  const Plan& plan = model->plans[0];
  const std::vector<std::string> labels = step_labels(plan);
  auto gpu = cuda();
  ASSERT_TRUE(gpu->compile(model->plans, nullptr, 0).is_ok());
  const auto inputs = random_inputs(plan, 11);
  const auto want = cpu_reference(model->plans, 0, inputs, *cpu_slice_);
  // Two entries of a greenctx pool: a context and a stream each.
  auto* green_a = reinterpret_cast<CUcontext>(0xA0);
  auto* green_b = reinterpret_cast<CUcontext>(0xB0);
  QueueContext ctx;
  ctx.queue = {green_a, reinterpret_cast<CUstream>(0x7000), 0};
  // A run first: its graph is captured, and the profile must not replay it.
  expect_close(run(*gpu, plan, 0, inputs, ctx), want, "graph");
  ASSERT_EQ(device().captures, 1);
  ASSERT_EQ(device().graph_launches, 1);

  CallBuffers call(plan, inputs);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    if (round == 2) ctx.queue = {green_b, reinterpret_cast<CUstream>(0x7001), 1};
    device().event_records.clear();
    device().elapsed.clear();
    const int events_before = device().events_created;
    const int work_before = device().work_done;
    const int copies_before = device().h2d + device().d2h;
    auto timings = gpu->profile_run(0, call.in, call.out, ctx);
    ASSERT_TRUE(timings.is_ok()) << timings.status().to_string();
    expect_close(call.outputs, want, "profiled run");
    // Eager: no capture, no graph launch.
    EXPECT_EQ(device().captures, 1);
    EXPECT_EQ(device().graph_launches, 1);
    // One timing per step, in order, each the device time of the work between its two events:
    // together all the run's work but its copies.
    ASSERT_EQ(timings->size(), labels.size());
    double sum = 0;
    for (size_t s = 0; s < labels.size(); ++s) {
      EXPECT_EQ((*timings)[s].label, labels[s]);
      EXPECT_GT((*timings)[s].ms, 0.0) << labels[s];
      sum += (*timings)[s].ms;
    }
    const int copies = device().h2d + device().d2h - copies_before;
    EXPECT_DOUBLE_EQ(sum, 0.5 * (device().work_done - work_before - copies));
    // A pair of timing events per step, recorded on the queue's stream with its context current,
    // and one elapsed-time query per pair.
    ASSERT_EQ(device().event_records.size(), 2 * labels.size());
    ASSERT_EQ(device().elapsed.size(), labels.size());
    std::set<CUevent> distinct;
    for (size_t s = 0; s < labels.size(); ++s) {
      const auto& start = device().event_records[2 * s];
      const auto& end = device().event_records[2 * s + 1];
      for (const auto* r : {&start, &end}) {
        EXPECT_EQ(r->stream, ctx.queue.stream) << labels[s];
        EXPECT_EQ(r->current, ctx.queue.context) << labels[s];
        EXPECT_EQ(device().event_flags.at(r->event), unsigned(CU_EVENT_DEFAULT)) << labels[s];
        EXPECT_EQ(device().event_contexts.at(r->event), ctx.queue.context) << labels[s];
        distinct.insert(r->event);
      }
      EXPECT_EQ(device().elapsed[s], std::make_pair(start.event, end.event)) << labels[s];
    }
    EXPECT_EQ(distinct.size(), 2 * labels.size());
    // The first profile on a queue makes its events; later ones on it reuse them.
    EXPECT_EQ(device().events_created - events_before, round == 1 ? 0 : int(2 * labels.size()));
  }
}

}  // namespace
}  // namespace sliceserve::backends
