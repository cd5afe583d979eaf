#include "sliceserve/backends/op_geometry.h"

#include <algorithm>

#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::backends {

int64_t element_count(DimsView dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

Dims dense_strides(DimsView dims) {
  Dims strides(dims.size());
  int64_t stride = 1;
  for (size_t i = dims.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= dims[i];
  }
  return strides;
}

bool same_dims(DimsView a, DimsView b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

std::string dims_string(DimsView dims) { return shm::shape_to_string(dims); }

Status check_dims(const OpCheck& check, const std::string& what, DimsView actual,
                  DimsView expected) {
  if (same_dims(actual, expected)) return Status::ok();
  return check.fail(what + " has dims " + dims_string(actual) + ", expected " +
                    dims_string(expected));
}

Result<int64_t> normalize_axis(const OpCheck& check, int64_t axis, size_t rank) {
  const auto r = int64_t(rank);
  if (axis < -r || axis >= r) {
    return check.fail("axis " + std::to_string(axis) + " is out of range for rank " +
                      std::to_string(rank));
  }
  return axis < 0 ? axis + r : axis;
}

std::optional<Dims> broadcast_dims(DimsView a, DimsView b) {
  const size_t rank = std::max(a.size(), b.size());
  Dims out(rank, 1);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1) return std::nullopt;
    out[i] = da == 1 ? db : da;
  }
  return out;
}

std::optional<Dims> broadcast_strides(DimsView dims, DimsView out) {
  if (dims.size() > out.size()) return std::nullopt;
  const Dims own = dense_strides(dims);
  Dims strides(out.size(), 0);
  const size_t lead = out.size() - dims.size();
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] == out[lead + i]) {
      strides[lead + i] = dims[i] == 1 ? 0 : own[i];
    } else if (dims[i] != 1) {
      return std::nullopt;
    }
  }
  return strides;
}

Result<SourceView> transpose_view(const OpCheck& check, DimsView x, DimsView y) {
  const size_t rank = x.size();
  Dims perm = check.op.perm;
  if (perm.empty()) {  // ONNX's default: reverse the dimensions
    for (size_t i = rank; i-- > 0;) perm.push_back(int64_t(i));
  }
  std::vector<bool> seen(rank, false);
  bool valid = perm.size() == rank;
  for (size_t i = 0; valid && i < rank; ++i) {
    valid = perm[i] >= 0 && perm[i] < int64_t(rank) && !seen[size_t(perm[i])];
    if (valid) seen[size_t(perm[i])] = true;
  }
  if (!valid) {
    return check.fail("perm " + dims_string(perm) + " is not a permutation of " +
                      std::to_string(rank) + " dimensions");
  }
  const Dims x_strides = dense_strides(x);
  Dims expected(rank);
  SourceView view{Dims(rank), 0};
  for (size_t i = 0; i < rank; ++i) {
    expected[i] = x[size_t(perm[i])];
    view.strides[i] = x_strides[size_t(perm[i])];
  }
  RETURN_IF_ERROR(check_dims(check, "output", y, expected));
  return view;
}

Result<SourceView> slice_view(const OpCheck& check, DimsView x, DimsView y) {
  const PlanOp& op = check.op;
  const size_t rank = x.size();
  if (op.starts.size() != rank || op.steps.size() != rank || y.size() != rank) {
    return check.fail("needs starts, steps and an output of rank " + std::to_string(rank));
  }
  const Dims x_strides = dense_strides(x);
  SourceView view{Dims(rank), 0};
  const bool empty = element_count(y) == 0;
  for (size_t i = 0; i < rank; ++i) {
    const int64_t start = op.starts[i], step = op.steps[i], count = y[i];
    const int64_t last = start + (count - 1) * step;
    if (step == 0) return check.fail("step 0 in dimension " + std::to_string(i));
    if (!empty && (start < 0 || start >= x[i] || last < 0 || last >= x[i])) {
      return check.fail("dimension " + std::to_string(i) + ": " + std::to_string(count) +
                        " elements from " + std::to_string(start) + " by " + std::to_string(step) +
                        " leave [0, " + std::to_string(x[i]) + ")");
    }
    view.origin += start * x_strides[i];
    view.strides[i] = step * x_strides[i];
  }
  if (empty) view.origin = 0;
  return view;
}

Result<Dims> axis_blocks(const OpCheck& check, DimsView whole, std::span<const DimsView> parts,
                         int64_t axis) {
  const auto a = size_t(axis);
  Dims offsets(parts.size());
  int64_t total = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    Dims expected(whole.begin(), whole.end());
    expected[a] = parts[i].size() == whole.size() ? parts[i][a] : 0;
    RETURN_IF_ERROR(check_dims(check, "part " + std::to_string(i), parts[i], expected));
    offsets[i] = total;
    total += expected[a];
  }
  if (total != whole[a]) {
    return check.fail("parts add up to " + std::to_string(total) + " along axis " +
                      std::to_string(axis) + ", expected " + std::to_string(whole[a]));
  }
  return offsets;
}

Status check_split_sizes(const OpCheck& check, DimsView x, std::span<const DimsView> outputs,
                         int64_t axis) {
  const std::vector<int64_t>& sizes = check.op.sizes;
  if (sizes.empty()) return Status::ok();
  if (sizes.size() != outputs.size()) {
    return check.fail(std::to_string(sizes.size()) + " sizes for " +
                      std::to_string(outputs.size()) + " outputs");
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].size() != x.size() || outputs[i][size_t(axis)] != sizes[i]) {
      return check.fail("output " + std::to_string(i) + " " + dims_string(outputs[i]) +
                        " does not have size " + std::to_string(sizes[i]) + " along axis " +
                        std::to_string(axis));
    }
  }
  return Status::ok();
}

Result<PadGeometry> pad_geometry(const OpCheck& check, DimsView x, DimsView y) {
  const PlanOp& op = check.op;
  const size_t rank = x.size();
  if (op.pads.size() != 2 * rank) {
    return check.fail("pads has " + std::to_string(op.pads.size()) + " entries, expected " +
                      std::to_string(2 * rank));
  }
  const bool constant = op.pad_mode == PlanOp::PadMode::kConstant;
  if (!constant && op.pad_mode != PlanOp::PadMode::kReflect &&
      op.pad_mode != PlanOp::PadMode::kEdge) {
    return check.fail("unknown pad mode");
  }
  PadGeometry g{Dims(rank), Dims(rank), Dims(rank), Dims(rank)};
  for (size_t i = 0; i < rank; ++i) {
    const int64_t begin = op.pads[i], end = op.pads[rank + i];
    g.out_dims[i] = x[i] + begin + end;
    if (g.out_dims[i] < 0) {
      return check.fail("pads crop more than dimension " + std::to_string(i) + " holds");
    }
    g.keep_begin[i] = std::max<int64_t>(0, -begin);
    g.kept[i] = std::max<int64_t>(0, x[i] - g.keep_begin[i] - std::max<int64_t>(0, -end));
    g.at[i] = std::max<int64_t>(0, begin);
    if (!constant && g.kept[i] == 0 && g.out_dims[i] > 0) {
      return check.fail("dimension " + std::to_string(i) + " has nothing to reflect or extend");
    }
  }
  RETURN_IF_ERROR(check_dims(check, "output", y, g.out_dims));
  return g;
}

Result<int64_t> gather_axis(const OpCheck& check, DimsView x, DataType indices_dtype,
                            DimsView indices, DimsView y) {
  if (indices_dtype != DataType::kInt32 && indices_dtype != DataType::kInt64) {
    return check.fail("indices must be INT32 or INT64, got " +
                      std::string(shm::data_type_name(indices_dtype)));
  }
  if (x.empty()) return check.fail("needs a rank >= 1 input");
  ASSIGN_OR_RETURN(const int64_t axis, normalize_axis(check, check.op.axis, x.size()));
  Dims expected(x.begin(), x.begin() + axis);
  expected.insert(expected.end(), indices.begin(), indices.end());
  expected.insert(expected.end(), x.begin() + axis + 1, x.end());
  RETURN_IF_ERROR(check_dims(check, "output", y, expected));
  return axis;
}

Result<WindowAxis> window_axis(const OpCheck& check, size_t i, size_t spatial, int64_t kernel,
                               int64_t in, int64_t out) {
  const PlanOp& op = check.op;
  WindowAxis a;
  a.in = in;
  a.out = out;
  a.kernel = kernel;
  if (!op.strides.empty()) a.stride = op.strides[i];
  if (!op.dilations.empty()) a.dilation = op.dilations[i];
  if (!op.pads.empty()) {
    a.pad_begin = op.pads[i];
    a.pad_end = op.pads[spatial + i];
  }
  if (a.kernel < 1 || a.stride < 1 || a.dilation < 1 || a.pad_begin < 0 || a.pad_end < 0) {
    return check.fail("spatial dimension " + std::to_string(i) +
                      " needs kernel, stride and dilation >= 1 and pads >= 0");
  }
  return a;
}

WindowOutputs window_outputs(const WindowAxis& a) {
  const int64_t span = a.in + a.pad_begin + a.pad_end - (a.kernel - 1) * a.dilation - 1;
  if (span < 0) return {};
  return {span / a.stride + 1, (span + a.stride - 1) / a.stride + 1};
}

Status check_pool_output(const OpCheck& check, DimsView x, DimsView y) {
  if (y.size() != x.size() || y[0] != x[0] || y[1] != x[1]) {
    return check.fail("Y " + dims_string(y) + " does not fit X " + dims_string(x));
  }
  return Status::ok();
}

Status check_global_pool(const OpCheck& check, DimsView x, DimsView y) {
  if (x.size() < 3) return check.fail("needs a rank >= 3 input");
  Dims expected(x.begin(), x.end());
  std::fill(expected.begin() + 2, expected.end(), 1);
  return check_dims(check, "Y", y, expected);
}

Result<Reduction> reduction(const OpCheck& check, DimsView x) {
  const PlanOp& op = check.op;
  const size_t rank = x.size();
  Reduction r{std::vector<bool>(rank, op.axes.empty()), {}};  // empty axes: every axis (ONNX)
  for (size_t i = 0; i < op.axes.size(); ++i) {
    const int64_t a = op.axes[i];
    if (a < 0 || a >= int64_t(rank) || (i > 0 && a <= op.axes[i - 1])) {
      return check.fail("axes " + dims_string(op.axes) + " are not sorted, unique axes of rank " +
                        std::to_string(rank));
    }
    r.reduced[size_t(a)] = true;
  }
  for (size_t i = 0; i < rank; ++i) {
    if (!r.reduced[i]) {
      r.out_dims.push_back(x[i]);
    } else if (op.keepdims) {
      r.out_dims.push_back(1);
    }
  }
  return r;
}

Result<AxisSplit> softmax_split(const OpCheck& check, DimsView x, DimsView y) {
  RETURN_IF_ERROR(check_dims(check, "Y", y, x));
  if (x.empty()) return check.fail("needs a rank >= 1 input");
  ASSIGN_OR_RETURN(const int64_t axis, normalize_axis(check, check.op.axis, x.size()));
  const auto a = size_t(axis);
  return AxisSplit{element_count(x.first(a)), x[a], element_count(x.subspan(a + 1))};
}

}  // namespace sliceserve::backends
