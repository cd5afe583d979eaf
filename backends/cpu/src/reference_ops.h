#pragma once
// Reference kernels for every plan op on plain (dense, row-major) tensors in host memory. The
// oneDNN executor runs them for the ops it does not hand to oneDNN, and tests use them as the
// oracle, so they favour clarity and exact semantics over speed (contiguous runs are still
// copied with memcpy and strides are precomputed).
//
// Semantics chosen where ONNX leaves room:
//   - Integer Div truncates toward zero; division by zero gives 0, INT_MIN / -1 wraps. Integer
//     Add/Sub/Mul and MatMul wrap around (two's complement) instead of overflowing.
//   - Cast: float -> integer saturates (NaN -> 0, truncation toward zero); integer -> integer
//     wraps modulo 2^bits like numpy; -> bool is value != 0 (NaN is true); -> fp16 rounds to
//     nearest even (overflow -> inf). Pad's pad_value is converted the same way.
//   - Pooling windows count only in-bounds elements (MaxPool's pads are -inf); a window with
//     none gives 0 (average) or -inf / the integer minimum (max). count_include_pad divides by
//     the window elements inside the padded input, not those beyond the end pads that ceil_mode
//     adds. The output's spatial dims must be the floor or the ceil formula's; a NaN in a max
//     window propagates.
//   - Shapes are checked completely (outputs against what the op implies), never trusted.
//   - Relu ignores alpha (LeakyRelu is its own function). Kernels are pure: safe from any
//     thread, no state kept between calls.
//   - Pad with negative pads crops first; reflect and edge then work on the cropped tensor.
//   - ReduceMean with empty axes reduces every axis; integer means truncate toward zero.
//   - fp16 is IEEE binary16 stored as raw bits; Unary and Binary compute it in fp32.

#include <cstddef>
#include <cstdint>
#include <span>

#include "sliceserve/backends/plan.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// A dense row-major tensor in host memory.
struct TensorRef {
  DataType dtype;
  std::span<const int64_t> dims;
  const std::byte* data;
};

struct MutableTensorRef {
  DataType dtype;
  std::span<const int64_t> dims;
  std::byte* data;
};

// Runs `op` on row-major tensors: inputs[i] is op.inputs[i] (a TensorRef with data == nullptr for
// an absent optional input, index -1), outputs[i] is op.outputs[i]; output dims and dtypes are
// given (the engine inferred them) and are filled completely. Post-ops of Conv/Gemm are applied
// (kSum adds `sum_operands[k]` for the k-th kSum post-op, same dims as the output).
// kInvalidArgument naming op.label when a count, shape, dtype or parameter is unsupported or
// inconsistent; it never crashes on such input.
Status run_reference_op(const PlanOp& op, std::span<const TensorRef> inputs,
                        std::span<const MutableTensorRef> outputs,
                        std::span<const TensorRef> sum_operands = {});

}  // namespace sliceserve::backends
