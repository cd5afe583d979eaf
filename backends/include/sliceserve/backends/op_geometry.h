#pragma once
// The device-neutral geometry of the plan's ops: what a PlanOp and its tensors' dims must satisfy
// and what they imply (the output dims expected, the source view of a Slice or Transpose,
// Concat's and Split's blocks, Pad's kept region, broadcast strides, a pooling window's axes).
// The CPU reference kernels and the CUDA kernels' launches both check with it, so they accept the
// same plans and name the same faults; each backend words the errors (OpCheck::invalid).
//
// Tensors are dense and row-major; strides and offsets count elements. Dtypes are left to the
// backends (what each computes differs).

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sliceserve/backends/plan.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

using Dims = std::vector<int64_t>;
using DimsView = std::span<const int64_t>;

// The op being checked and how its backend words an error: `invalid(op, what)` gives the
// kInvalidArgument Status, naming op.label and the backend's kernel.
struct OpCheck {
  const PlanOp& op;
  Status (*invalid)(const PlanOp& op, const std::string& what);

  Status fail(const std::string& what) const { return invalid(op, what); }
};

// ---- dims ----------------------------------------------------------------------------------

int64_t element_count(DimsView dims);
Dims dense_strides(DimsView dims);
bool same_dims(DimsView a, DimsView b);
std::string dims_string(DimsView dims);  // "[2, 3]"

// "<what> has dims [..], expected [..]" unless they are the same.
Status check_dims(const OpCheck& check, const std::string& what, DimsView actual,
                  DimsView expected);
// An axis in [-rank, rank), normalised.
Result<int64_t> normalize_axis(const OpCheck& check, int64_t axis, size_t rank);

// numpy's broadcast of two shapes; nullopt when they do not broadcast.
std::optional<Dims> broadcast_dims(DimsView a, DimsView b);
// Strides of `dims` read as broadcast (numpy, right-aligned) to `out`: 0 along broadcast
// dimensions. nullopt when `dims` does not broadcast to `out`.
std::optional<Dims> broadcast_strides(DimsView dims, DimsView out);

// An index space `dims` with N strided views of it, size-1 dimensions dropped and neighbours
// contiguous in every view merged, innermost first: the fewest dimensions a strided loop or
// kernel iterates.
template <size_t N>
struct MergedDims {
  Dims dims;
  std::vector<std::array<int64_t, N>> strides;  // per merged dimension, each view's stride
};
template <size_t N>
MergedDims<N> merge_contiguous(DimsView dims, const std::array<DimsView, N>& strides) {
  MergedDims<N> merged;
  for (size_t i = dims.size(); i-- > 0;) {
    if (dims[i] == 1) continue;
    std::array<int64_t, N> step;
    bool contiguous = !merged.dims.empty();
    for (size_t v = 0; v < N; ++v) {
      step[v] = strides[v][i];
      if (contiguous && step[v] != merged.strides.back()[v] * merged.dims.back()) {
        contiguous = false;
      }
    }
    if (contiguous) {
      merged.dims.back() *= dims[i];
    } else {
      merged.dims.push_back(dims[i]);
      merged.strides.push_back(step);
    }
  }
  return merged;
}

// ---- data movement -------------------------------------------------------------------------

// The elements an output reads from its input x: output index i is x's element
// origin + sum(i[d] * strides[d]).
struct SourceView {
  Dims strides;
  int64_t origin = 0;
};

// Transpose: op.perm (empty: reversed) is a permutation of x's dims and y has the permuted dims.
Result<SourceView> transpose_view(const OpCheck& check, DimsView x, DimsView y);
// Slice: op.starts and op.steps (one per dimension) and y's dims stay inside x. An empty y
// reads nothing: origin 0.
Result<SourceView> slice_view(const OpCheck& check, DimsView x, DimsView y);

// Concat and Split: `parts` along `axis` (normalised, < whole's rank) make up `whole`, equal to
// it off the axis. Each part's offset along the axis.
Result<Dims> axis_blocks(const OpCheck& check, DimsView whole, std::span<const DimsView> parts,
                         int64_t axis);
// Split's op.sizes, when given: one per output, each its size along `axis` (normalised).
Status check_split_sizes(const OpCheck& check, DimsView x, std::span<const DimsView> outputs,
                         int64_t axis);

// Pad, per dimension: the kept part of x [keep_begin, keep_begin + kept) lands at
// [at, at + kept) of y (out_dims); the rest of y is padding.
struct PadGeometry {
  Dims out_dims, keep_begin, kept, at;
};
// op.pads (begins then ends, < 0 crops) and op.pad_mode against x, and y's dims.
Result<PadGeometry> pad_geometry(const OpCheck& check, DimsView x, DimsView y);

// Gather: int32/int64 indices, a rank >= 1 x and y = x's dims with `indices` in place of
// op.axis. The axis, normalised.
Result<int64_t> gather_axis(const OpCheck& check, DimsView x, DataType indices_dtype,
                            DimsView indices, DimsView y);

// ---- pooling and reductions ----------------------------------------------------------------

// One spatial axis of a Conv or pooling window.
struct WindowAxis {
  int64_t in = 1, out = 1, kernel = 1, stride = 1, dilation = 1, pad_begin = 0, pad_end = 0;
};
// Spatial dimension i of `spatial`: op.strides, op.dilations and op.pads (each empty: 1, 1, 0)
// with `kernel`; kernel, stride and dilation >= 1, pads >= 0. The output size is not checked.
Result<WindowAxis> window_axis(const OpCheck& check, size_t i, size_t spatial, int64_t kernel,
                               int64_t in, int64_t out);
// The output sizes the window gives along `a`, by the floor and the ceil formula; both -1 when
// the window is larger than the padded input.
struct WindowOutputs {
  int64_t floor = -1, ceil = -1;
};
WindowOutputs window_outputs(const WindowAxis& a);
// A pooling's y keeps x's rank, batch and channels.
Status check_pool_output(const OpCheck& check, DimsView x, DimsView y);
// GlobalAveragePool: a rank >= 3 x, y of x's dims with 1s for the spatial ones.
Status check_global_pool(const OpCheck& check, DimsView x, DimsView y);

// ReduceMean: op.axes (sorted, unique; empty: every axis) as flags per dimension of x, and the
// output dims they give (op.keepdims: 1s in their place).
struct Reduction {
  std::vector<bool> reduced;
  Dims out_dims;
};
Result<Reduction> reduction(const OpCheck& check, DimsView x);

// Softmax: y has x's dims (rank >= 1); x as [outer, length, inner] around op.axis.
struct AxisSplit {
  int64_t outer = 1, length = 1, inner = 1;
};
Result<AxisSplit> softmax_split(const OpCheck& check, DimsView x, DimsView y);

}  // namespace sliceserve::backends
