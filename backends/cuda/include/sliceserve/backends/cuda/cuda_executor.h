#pragma once
// The CUDA executor: the engine's plans on one NVIDIA GPU. Convolutions run on cuDNN (the
// fastest algorithm found once per shape at compile; relu(conv + bias [+ residual]) fused into
// one call), Gemm and MatMul on cuBLAS, every other op on the wing's own kernels
// (backends/cuda/kernels). Each plan is captured into one CUDA graph per device queue (a slice's
// pool entry: the primary context's stream, or one green context's) on its first run there and
// replayed after, so a batch costs one graph launch plus its copies. profile_run (slicectl
// profile --device cuda:N) runs the steps eagerly instead, each between a pair of CUDA events
// recorded on the queue's stream (pooled per queue: an event belongs to the context it was made
// in), and answers each step's elapsed time.
//
// Memory: one activation arena for all plans (one run at a time), the weights in one region of
// the model's WeightStore when it holds device memory (a shadow worker maps the live one's
// region instead of uploading a second copy), otherwise a private device copy that weights()
// reports. Host memory registered with register_host_memory (the segment's slot arena) is pinned,
// so run_items copies each item between its shm slot and the device by DMA, with no staging copy.
//
// The driver, cuDNN and cuBLAS are loaded at run time (cuda_driver.h): creating the executor on
// a machine without them fails with kUnavailable and says what is missing.

#include <memory>

#include "sliceserve/backends/executor.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// An executor for CUDA device `device` (ordinal). kUnavailable "no CUDA device: ..." without a
// driver or GPU, or naming the missing cuDNN / cuBLAS library; kInvalidArgument for an ordinal
// the driver does not have.
Result<std::unique_ptr<Executor>> create_cuda_executor(int device);

}  // namespace sliceserve::backends
