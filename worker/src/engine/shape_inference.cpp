#include "sliceserve/worker/engine/shape_inference.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <numeric>

namespace sliceserve::worker::engine {
namespace {

using Shape = std::vector<int64_t>;

constexpr int64_t kMaxFoldElements = 4096;

std::string dims_text(const Shape& shape) { return shm::shape_to_string(shape); }

int64_t product(const Shape& shape, size_t begin, size_t end) {
  int64_t result = 1;
  for (size_t i = begin; i < end; ++i) {
    if (shape[i] < 0) return -1;
    result *= shape[i];
  }
  return result;
}

bool fully_known(const Shape& shape) {
  return std::all_of(shape.begin(), shape.end(), [](int64_t d) { return d >= 0; });
}

// b > 0; rounds toward +infinity without overflowing.
int64_t ceil_div(int64_t a, int64_t b) { return a / b + ((a % b != 0 && a > 0) ? 1 : 0); }

// Everything a handler needs about one node.
class Ctx {
 public:
  Ctx(Graph& graph, const Node& node, NodeParams& params)
      : graph_(graph), node_(node), params_(params) {}

  const Node& node() const { return node_; }
  NodeParams& params() { return params_; }
  int64_t opset() const { return graph_.opset; }
  Status err(std::string_view message) const { return node_.error(message); }

  bool has_in(size_t i) const { return node_.has_input(i); }

  Result<const ValueInfo*> in(size_t i) const {
    if (!has_in(i)) return err(fmt::format("missing input {}", i));
    const ValueInfo* info = graph_.find_value(node_.inputs[i]);
    if (info == nullptr || !info->has_shape) {
      return err(fmt::format("input '{}' has no known shape", node_.inputs[i]));
    }
    return info;
  }

  Result<const ValueInfo*> in_rank(size_t i, size_t min_rank) const {
    ASSIGN_OR_RETURN(const ValueInfo* info, in(i));
    if (info->shape.size() < min_rank) {
      return err(fmt::format("input '{}' has rank {} ({}), at least {} expected", info->name,
                             info->shape.size(), dims_text(info->shape), min_rank));
    }
    return info;
  }

  const Tensor* constant(size_t i) const {
    return has_in(i) ? graph_.find_constant(node_.inputs[i]) : nullptr;
  }

  // The integer elements of constant input i, or an error naming it.
  Result<std::vector<int64_t>> const_ints(size_t i, std::string_view what) const {
    const Tensor* tensor = constant(i);
    if (tensor == nullptr) {
      return err(fmt::format("input '{}' ({}) must be a constant", has_in(i) ? node_.inputs[i] : "",
                             what));
    }
    if (tensor->dtype != DataType::kInt64 && tensor->dtype != DataType::kInt32) {
      return err(fmt::format("input '{}' ({}) must be int64", node_.inputs[i], what));
    }
    return tensor->to_int64();
  }

  // Ints from input i at this opset, else from attribute attr at older ones.
  Result<std::vector<int64_t>> ints_from(size_t i, int64_t since_opset, std::string_view attr,
                                         std::string_view what, bool* present) const {
    if (opset() >= since_opset || has_in(i)) {
      *present = has_in(i);
      if (!*present) return std::vector<int64_t>{};
      return const_ints(i, what);
    }
    *present = node_.has_attribute(attr);
    return node_.ints_attr(attr);
  }

  Result<int64_t> axis(int64_t axis, size_t rank, bool inclusive_end = false) const {
    const auto r = static_cast<int64_t>(rank);
    const int64_t normalized = axis < 0 ? axis + r : axis;
    if (normalized < 0 || normalized > r || (normalized == r && !inclusive_end)) {
      return err(fmt::format("axis {} is out of range for rank {}", axis, rank));
    }
    return normalized;
  }

  void set_out(size_t i, DataType dtype, Shape shape) {
    if (i >= node_.outputs.size() || node_.outputs[i].empty()) return;
    ValueInfo& info = graph_.values[node_.outputs[i]];
    info.name = node_.outputs[i];
    info.dtype = dtype;
    info.shape = std::move(shape);
    info.has_shape = true;
  }

  void set_const(size_t i, Tensor tensor) {
    if (i >= node_.outputs.size() || node_.outputs[i].empty()) return;
    set_out(i, tensor.dtype, tensor.dims);
    graph_.constants[node_.outputs[i]] = std::move(tensor);
  }

  const ValueInfo* out(size_t i) const {
    if (i >= node_.outputs.size() || node_.outputs[i].empty()) return nullptr;
    return graph_.find_value(node_.outputs[i]);
  }

 private:
  Graph& graph_;
  const Node& node_;
  NodeParams& params_;
};

Result<Shape> broadcast(const Ctx& ctx, const Shape& a, const Shape& b) {
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank, 1);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da == db || db == 1) {
      out[i] = da;
    } else if (da == 1) {
      out[i] = db;
    } else if (da < 0 || db < 0) {
      out[i] = std::max(da, db);
    } else {
      return ctx.err(fmt::format("shapes {} and {} do not broadcast", dims_text(a), dims_text(b)));
    }
  }
  return out;
}

// --- element-wise and shape-preserving ops

Status same_as_input(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  ctx.set_out(0, x->dtype, x->shape);
  return Status::ok();
}

Status infer_dropout(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  ctx.set_out(0, x->dtype, x->shape);
  ctx.set_out(1, DataType::kBool, x->shape);
  return Status::ok();
}

Status infer_softmax(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  ASSIGN_OR_RETURN(int64_t axis, ctx.node().int_attr("axis", ctx.opset() >= 13 ? -1 : 1));
  if (!x->shape.empty() || axis != 0) {
    ASSIGN_OR_RETURN(ctx.params().axis, ctx.axis(axis, x->shape.size()));
  }
  ctx.set_out(0, x->dtype, x->shape);
  return Status::ok();
}

Status infer_binary(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* a, ctx.in(0));
  ASSIGN_OR_RETURN(const ValueInfo* b, ctx.in(1));
  ASSIGN_OR_RETURN(Shape out, broadcast(ctx, a->shape, b->shape));
  ctx.set_out(0, a->dtype, std::move(out));
  return Status::ok();
}

Status infer_batch_norm(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in_rank(0, 2));
  const int64_t channels = x->shape[1];
  for (size_t i = 1; i <= 4; ++i) {
    ASSIGN_OR_RETURN(const ValueInfo* p, ctx.in(i));
    if (p->shape.size() != 1 || (channels >= 0 && p->shape[0] >= 0 && p->shape[0] != channels)) {
      return ctx.err(fmt::format("input '{}' has shape {}, expected [{}]", p->name,
                                 dims_text(p->shape), channels));
    }
  }
  ctx.set_out(0, x->dtype, x->shape);
  ctx.set_out(1, x->dtype, {channels});
  ctx.set_out(2, x->dtype, {channels});
  ctx.set_out(3, x->dtype, {channels});
  ctx.set_out(4, x->dtype, {channels});
  return Status::ok();
}

// --- convolution and pooling

struct Window {
  std::vector<int64_t> kernel, strides, dilations, pads;
  std::string auto_pad;
  bool ceil_mode = false;
};

Result<Window> read_window(const Ctx& ctx, size_t spatial, Shape kernel) {
  Window w;
  const Node& node = ctx.node();
  ASSIGN_OR_RETURN(w.kernel, node.ints_attr("kernel_shape", std::move(kernel)));
  ASSIGN_OR_RETURN(w.strides, node.ints_attr("strides", Shape(spatial, 1)));
  ASSIGN_OR_RETURN(w.dilations, node.ints_attr("dilations", Shape(spatial, 1)));
  ASSIGN_OR_RETURN(w.pads, node.ints_attr("pads", Shape(2 * spatial, 0)));
  ASSIGN_OR_RETURN(w.auto_pad, node.string_attr("auto_pad", "NOTSET"));
  ASSIGN_OR_RETURN(int64_t ceil_mode, node.int_attr("ceil_mode", 0));
  w.ceil_mode = ceil_mode != 0;
  if (w.kernel.size() != spatial || w.strides.size() != spatial || w.dilations.size() != spatial ||
      w.pads.size() != 2 * spatial) {
    return ctx.err(fmt::format(
        "kernel_shape/strides/dilations/pads do not match {} spatial dimensions", spatial));
  }
  for (size_t i = 0; i < spatial; ++i) {
    if (w.kernel[i] <= 0 || w.strides[i] <= 0 || w.dilations[i] <= 0) {
      return ctx.err("kernel_shape, strides and dilations must be positive");
    }
  }
  if (w.auto_pad != "NOTSET" && w.auto_pad != "VALID" && w.auto_pad != "SAME_UPPER" &&
      w.auto_pad != "SAME_LOWER") {
    return ctx.err(fmt::format("unknown auto_pad '{}'", w.auto_pad));
  }
  return w;
}

// The output's spatial dimensions; `pads` receives the pads auto_pad implies (begins, ends).
Result<Shape> window_output(const Ctx& ctx, const Shape& x, const Window& w, Shape* pads) {
  Shape out;
  *pads = w.auto_pad == "NOTSET" ? w.pads : Shape(w.pads.size(), 0);
  for (size_t i = 0; i < w.kernel.size(); ++i) {
    const int64_t in = x[i + 2];
    if (in < 0) {
      out.push_back(-1);
      continue;
    }
    const int64_t effective = (w.kernel[i] - 1) * w.dilations[i] + 1;
    const int64_t stride = w.strides[i];
    int64_t dim = 0;
    if (w.auto_pad == "SAME_UPPER" || w.auto_pad == "SAME_LOWER") {
      dim = ceil_div(in, stride);
      const int64_t total = std::max<int64_t>(0, (dim - 1) * stride + effective - in);
      const int64_t smaller = total / 2;
      (*pads)[i] = w.auto_pad == "SAME_UPPER" ? smaller : total - smaller;
      (*pads)[i + w.kernel.size()] = total - (*pads)[i];
    } else {
      const int64_t padded =
          w.auto_pad == "VALID" ? in : in + w.pads[i] + w.pads[i + w.kernel.size()];
      if (padded < effective) {
        return ctx.err(fmt::format("window {} is larger than the padded input {} ({})", effective,
                                   padded, dims_text(x)));
      }
      if (w.ceil_mode) {
        dim = ceil_div(padded - effective, stride) + 1;
        // The last window must start inside the input or its left padding.
        if ((dim - 1) * stride >= in + w.pads[i]) --dim;
      } else {
        dim = (padded - effective) / stride + 1;
      }
    }
    out.push_back(dim);
  }
  return out;
}

void record_window(NodeParams& params, const Window& w) {
  params.kernel = w.kernel;
  params.strides = w.strides;
  params.dilations = w.dilations;
}

Status infer_conv(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in_rank(0, 3));
  ASSIGN_OR_RETURN(const ValueInfo* w, ctx.in(1));
  if (w->shape.size() != x->shape.size()) {
    return ctx.err(fmt::format("weight '{}' has shape {}, rank {} expected for input {}", w->name,
                               dims_text(w->shape), x->shape.size(), dims_text(x->shape)));
  }
  ASSIGN_OR_RETURN(int64_t group, ctx.node().int_attr("group", 1));
  if (group <= 0) return ctx.err("attribute 'group' must be positive");
  const int64_t channels = x->shape[1];
  if (channels >= 0 && w->shape[1] >= 0 && channels != w->shape[1] * group) {
    return ctx.err(fmt::format("input has {} channels, weight {} with group {} expects {}",
                               channels, dims_text(w->shape), group, w->shape[1] * group));
  }
  if (w->shape[0] >= 0 && w->shape[0] % group != 0) {
    return ctx.err(
        fmt::format("{} output channels are not divisible by group {}", w->shape[0], group));
  }
  if (ctx.has_in(2)) {
    ASSIGN_OR_RETURN(const ValueInfo* b, ctx.in(2));
    if (b->shape.size() != 1 ||
        (b->shape[0] >= 0 && w->shape[0] >= 0 && b->shape[0] != w->shape[0])) {
      return ctx.err(fmt::format("bias '{}' has shape {}, expected [{}]", b->name,
                                 dims_text(b->shape), w->shape[0]));
    }
  }
  const size_t spatial = x->shape.size() - 2;
  ASSIGN_OR_RETURN(Window window,
                   read_window(ctx, spatial, Shape(w->shape.begin() + 2, w->shape.end())));
  for (size_t i = 0; i < spatial; ++i) {
    if (w->shape[i + 2] >= 0 && window.kernel[i] != w->shape[i + 2]) {
      return ctx.err(fmt::format("kernel_shape does not match weight {}", dims_text(w->shape)));
    }
  }
  ASSIGN_OR_RETURN(Shape spatial_out, window_output(ctx, x->shape, window, &ctx.params().pads));
  record_window(ctx.params(), window);
  Shape out{x->shape[0], w->shape[0]};
  out.insert(out.end(), spatial_out.begin(), spatial_out.end());
  ctx.set_out(0, x->dtype, std::move(out));
  return Status::ok();
}

Status infer_pool(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in_rank(0, 3));
  if (!ctx.node().has_attribute("kernel_shape")) return ctx.err("missing attribute 'kernel_shape'");
  ASSIGN_OR_RETURN(Window window, read_window(ctx, x->shape.size() - 2, {}));
  ASSIGN_OR_RETURN(Shape spatial_out, window_output(ctx, x->shape, window, &ctx.params().pads));
  record_window(ctx.params(), window);
  Shape out{x->shape[0], x->shape[1]};
  out.insert(out.end(), spatial_out.begin(), spatial_out.end());
  ctx.set_out(0, x->dtype, out);
  ctx.set_out(1, DataType::kInt64, out);  // MaxPool's Indices
  return Status::ok();
}

Status infer_global_pool(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in_rank(0, 3));
  Shape out(x->shape.size(), 1);
  out[0] = x->shape[0];
  out[1] = x->shape[1];
  ctx.set_out(0, x->dtype, std::move(out));
  return Status::ok();
}

// --- linear algebra

Status infer_gemm(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* a, ctx.in(0));
  ASSIGN_OR_RETURN(const ValueInfo* b, ctx.in(1));
  if (a->shape.size() != 2 || b->shape.size() != 2) {
    return ctx.err(fmt::format("inputs must be matrices, got {} and {}", dims_text(a->shape),
                               dims_text(b->shape)));
  }
  ASSIGN_OR_RETURN(int64_t trans_a, ctx.node().int_attr("transA", 0));
  ASSIGN_OR_RETURN(int64_t trans_b, ctx.node().int_attr("transB", 0));
  const int64_t m = a->shape[trans_a != 0 ? 1 : 0];
  const int64_t k_a = a->shape[trans_a != 0 ? 0 : 1];
  const int64_t k_b = b->shape[trans_b != 0 ? 1 : 0];
  const int64_t n = b->shape[trans_b != 0 ? 0 : 1];
  if (k_a >= 0 && k_b >= 0 && k_a != k_b) {
    return ctx.err(fmt::format("inner dimensions differ: A {} (transA={}), B {} (transB={})",
                               dims_text(a->shape), trans_a, dims_text(b->shape), trans_b));
  }
  if (ctx.has_in(2)) {
    ASSIGN_OR_RETURN(const ValueInfo* c, ctx.in(2));
    ASSIGN_OR_RETURN(Shape out, broadcast(ctx, Shape{m, n}, c->shape));
    if (out.size() != 2) return ctx.err("C does not broadcast to [M, N]");
  }
  ctx.set_out(0, a->dtype, {m, n});
  return Status::ok();
}

Status infer_matmul(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* a_info, ctx.in_rank(0, 1));
  ASSIGN_OR_RETURN(const ValueInfo* b_info, ctx.in_rank(1, 1));
  Shape a = a_info->shape;
  Shape b = b_info->shape;
  const bool a_vector = a.size() == 1;
  const bool b_vector = b.size() == 1;
  if (a_vector) a.insert(a.begin(), 1);
  if (b_vector) b.push_back(1);
  const int64_t k_a = a.back();
  const int64_t k_b = b[b.size() - 2];
  if (k_a >= 0 && k_b >= 0 && k_a != k_b) {
    return ctx.err(fmt::format("inner dimensions differ: {} x {}", dims_text(a_info->shape),
                               dims_text(b_info->shape)));
  }
  ASSIGN_OR_RETURN(Shape out,
                   broadcast(ctx, Shape(a.begin(), a.end() - 2), Shape(b.begin(), b.end() - 2)));
  if (!a_vector) out.push_back(a[a.size() - 2]);
  if (!b_vector) out.push_back(b.back());
  ctx.set_out(0, a_info->dtype, std::move(out));
  return Status::ok();
}

// --- shape manipulation

Status infer_flatten(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  ASSIGN_OR_RETURN(int64_t axis_attr, ctx.node().int_attr("axis", 1));
  ASSIGN_OR_RETURN(int64_t axis, ctx.axis(axis_attr, x->shape.size(), true));
  ctx.params().axis = axis;
  const auto split = static_cast<size_t>(axis);
  ctx.set_out(0, x->dtype,
              {product(x->shape, 0, split), product(x->shape, split, x->shape.size())});
  return Status::ok();
}

Status infer_reshape(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  bool present = false;
  ASSIGN_OR_RETURN(Shape target, ctx.ints_from(1, 5, "shape", "shape", &present));
  if (!present) return ctx.err("missing shape");
  ASSIGN_OR_RETURN(int64_t allow_zero, ctx.node().int_attr("allowzero", 0));
  Shape out;
  int64_t infer_at = -1;
  int64_t known = 1;
  for (size_t i = 0; i < target.size(); ++i) {
    int64_t dim = target[i];
    if (dim == 0 && allow_zero == 0) {
      if (i >= x->shape.size()) {
        return ctx.err(fmt::format("shape {} copies dimension {} of input {}", dims_text(target), i,
                                   dims_text(x->shape)));
      }
      dim = x->shape[i];
    } else if (dim == -1) {
      if (infer_at >= 0) return ctx.err(fmt::format("shape {} has two -1", dims_text(target)));
      infer_at = static_cast<int64_t>(i);
    } else if (dim < 0) {
      return ctx.err(fmt::format("shape {} has a negative dimension", dims_text(target)));
    }
    out.push_back(dim);
    if (static_cast<int64_t>(i) != infer_at) known = (known < 0 || dim < 0) ? -1 : known * dim;
  }
  const int64_t total = product(x->shape, 0, x->shape.size());
  if (infer_at >= 0) {
    if (total >= 0 && known > 0) {
      if (total % known != 0) {
        return ctx.err(
            fmt::format("cannot reshape {} to {}", dims_text(x->shape), dims_text(target)));
      }
      out[static_cast<size_t>(infer_at)] = total / known;
    } else if (total == 0) {
      out[static_cast<size_t>(infer_at)] = 0;
    }
  } else if (total >= 0 && known >= 0 && total != known) {
    return ctx.err(fmt::format("cannot reshape {} ({} elements) to {}", dims_text(x->shape), total,
                               dims_text(target)));
  }
  ctx.set_out(0, x->dtype, std::move(out));
  return Status::ok();
}

Status infer_transpose(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  const size_t rank = x->shape.size();
  Shape reversed(rank);
  for (size_t i = 0; i < rank; ++i) reversed[i] = static_cast<int64_t>(rank - 1 - i);
  ASSIGN_OR_RETURN(Shape perm, ctx.node().ints_attr("perm", reversed));
  if (perm.size() != rank)
    return ctx.err(fmt::format("perm has {} entries for rank {}", perm.size(), rank));
  std::vector<bool> seen(rank, false);
  Shape out;
  for (int64_t p : perm) {
    ASSIGN_OR_RETURN(int64_t axis, ctx.axis(p, rank));
    if (seen[static_cast<size_t>(axis)]) return ctx.err("perm repeats an axis");
    seen[static_cast<size_t>(axis)] = true;
    out.push_back(x->shape[static_cast<size_t>(axis)]);
    ctx.params().perm.push_back(axis);
  }
  ctx.set_out(0, x->dtype, std::move(out));
  return Status::ok();
}

Status infer_concat(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* first, ctx.in(0));
  if (!ctx.node().has_attribute("axis")) return ctx.err("missing attribute 'axis'");
  ASSIGN_OR_RETURN(int64_t axis_attr, ctx.node().int_attr("axis", 0));
  ASSIGN_OR_RETURN(int64_t axis_signed, ctx.axis(axis_attr, first->shape.size()));
  ctx.params().axis = axis_signed;
  const auto axis = static_cast<size_t>(axis_signed);
  Shape out = first->shape;
  out[axis] = 0;
  for (size_t i = 0; i < ctx.node().inputs.size(); ++i) {
    if (!ctx.has_in(i)) continue;
    ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(i));
    if (x->shape.size() != out.size()) {
      return ctx.err(fmt::format("input '{}' has shape {}, rank {} expected", x->name,
                                 dims_text(x->shape), out.size()));
    }
    for (size_t d = 0; d < out.size(); ++d) {
      if (d == axis) {
        out[d] = (out[d] < 0 || x->shape[d] < 0) ? -1 : out[d] + x->shape[d];
      } else if (out[d] < 0) {
        out[d] = x->shape[d];
      } else if (x->shape[d] >= 0 && x->shape[d] != out[d]) {
        return ctx.err(fmt::format("input '{}' has shape {}, which does not match {}", x->name,
                                   dims_text(x->shape), dims_text(first->shape)));
      }
    }
  }
  ctx.set_out(0, first->dtype, std::move(out));
  return Status::ok();
}

Status infer_split(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  ASSIGN_OR_RETURN(int64_t axis_attr, ctx.node().int_attr("axis", 0));
  ASSIGN_OR_RETURN(int64_t axis_signed, ctx.axis(axis_attr, x->shape.size()));
  ctx.params().axis = axis_signed;
  const auto axis = static_cast<size_t>(axis_signed);
  const int64_t dim = x->shape[axis];
  const size_t outputs = ctx.node().outputs.size();
  bool present = false;
  ASSIGN_OR_RETURN(Shape splits, ctx.ints_from(1, 13, "split", "split", &present));
  if (!present) {
    ASSIGN_OR_RETURN(int64_t num_outputs,
                     ctx.node().int_attr("num_outputs", static_cast<int64_t>(outputs)));
    if (num_outputs <= 0 || static_cast<size_t>(num_outputs) != outputs) {
      return ctx.err(fmt::format("num_outputs {} differs from {} outputs", num_outputs, outputs));
    }
    if (dim >= 0) {
      const int64_t chunk =
          ctx.node().has_attribute("num_outputs") ? ceil_div(dim, num_outputs) : dim / num_outputs;
      if (!ctx.node().has_attribute("num_outputs") && dim % num_outputs != 0) {
        return ctx.err(fmt::format("dimension {} does not split evenly in {}", dim, outputs));
      }
      int64_t left = dim;
      for (size_t i = 0; i < outputs; ++i) {
        splits.push_back(std::min(chunk, left));
        left -= splits.back();
      }
    } else {
      splits.assign(outputs, -1);
    }
  }
  if (splits.size() != outputs) {
    return ctx.err(fmt::format("split has {} entries for {} outputs", splits.size(), outputs));
  }
  const int64_t total = std::accumulate(splits.begin(), splits.end(), int64_t{0});
  if (dim >= 0 && total != dim && fully_known(splits)) {
    return ctx.err(fmt::format("split sizes sum to {}, dimension is {}", total, dim));
  }
  ctx.params().sizes = splits;
  for (size_t i = 0; i < outputs; ++i) {
    Shape out = x->shape;
    out[axis] = splits[i];
    ctx.set_out(i, x->dtype, std::move(out));
  }
  return Status::ok();
}

struct SliceRange {
  int64_t start = 0, step = 1, count = 0;
};

SliceRange slice_range(int64_t dim, int64_t start, int64_t end, int64_t step) {
  SliceRange r;
  // Steps beyond any dimension behave alike; bounding them keeps -step from overflowing.
  step = std::clamp<int64_t>(step, -(int64_t{1} << 62), int64_t{1} << 62);
  r.step = step;
  if (dim <= 0) return r;
  if (start < 0) start += dim;
  if (end < 0) end += dim;
  if (step > 0) {
    start = std::clamp<int64_t>(start, 0, dim);
    end = std::clamp<int64_t>(end, 0, dim);
    r.count = std::max<int64_t>(0, ceil_div(end - start, step));
  } else {
    start = std::clamp<int64_t>(start, 0, dim - 1);
    end = std::clamp<int64_t>(end, -1, dim - 1);
    r.count = std::max<int64_t>(0, ceil_div(start - end, -step));
  }
  r.start = start;
  return r;
}

struct SliceParams {
  std::vector<size_t> axes;
  std::vector<int64_t> starts, ends, steps;
};

Result<SliceParams> read_slice(const Ctx& ctx, size_t rank) {
  SliceParams p;
  Shape axes;
  if (ctx.opset() >= 10) {
    ASSIGN_OR_RETURN(p.starts, ctx.const_ints(1, "starts"));
    ASSIGN_OR_RETURN(p.ends, ctx.const_ints(2, "ends"));
    if (ctx.has_in(3)) {
      ASSIGN_OR_RETURN(axes, ctx.const_ints(3, "axes"));
    }
    if (ctx.has_in(4)) {
      ASSIGN_OR_RETURN(p.steps, ctx.const_ints(4, "steps"));
    }
  } else {
    ASSIGN_OR_RETURN(p.starts, ctx.node().ints_attr("starts"));
    ASSIGN_OR_RETURN(p.ends, ctx.node().ints_attr("ends"));
    ASSIGN_OR_RETURN(axes, ctx.node().ints_attr("axes"));
  }
  if (axes.empty()) {
    for (size_t i = 0; i < p.starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  }
  if (p.steps.empty()) p.steps.assign(p.starts.size(), 1);
  if (p.ends.size() != p.starts.size() || axes.size() != p.starts.size() ||
      p.steps.size() != p.starts.size()) {
    return ctx.err("starts, ends, axes and steps differ in length");
  }
  for (size_t i = 0; i < axes.size(); ++i) {
    ASSIGN_OR_RETURN(int64_t axis, ctx.axis(axes[i], rank));
    if (p.steps[i] == 0) return ctx.err("slice step 0");
    p.axes.push_back(static_cast<size_t>(axis));
  }
  return p;
}

Status infer_slice(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  ASSIGN_OR_RETURN(SliceParams p, read_slice(ctx, x->shape.size()));
  Shape out = x->shape;
  NodeParams& params = ctx.params();
  params.starts.assign(x->shape.size(), 0);
  params.steps.assign(x->shape.size(), 1);
  for (size_t i = 0; i < p.axes.size(); ++i) {
    const int64_t dim = x->shape[p.axes[i]];
    const SliceRange r = slice_range(dim, p.starts[i], p.ends[i], p.steps[i]);
    out[p.axes[i]] = dim < 0 ? -1 : r.count;
    params.starts[p.axes[i]] = r.start;
    params.steps[p.axes[i]] = r.step;
  }
  ctx.set_out(0, x->dtype, std::move(out));
  // Fold 1-D integer slices (shape computations).
  const Tensor* data = ctx.constant(0);
  if (data != nullptr && data->dims.size() == 1 && data->dtype == DataType::kInt64 &&
      p.axes.size() == 1) {
    const std::vector<int64_t> values = data->to_int64();
    const SliceRange r =
        slice_range(static_cast<int64_t>(values.size()), p.starts[0], p.ends[0], p.steps[0]);
    std::vector<int64_t> folded;
    for (int64_t k = 0; k < r.count; ++k) {
      folded.push_back(values[static_cast<size_t>(r.start + k * r.step)]);
    }
    ctx.set_const(0, Tensor::from_int64(folded, {r.count}));
  }
  return Status::ok();
}

Status infer_reduce_mean(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  bool present = false;
  ASSIGN_OR_RETURN(Shape axes, ctx.ints_from(1, 18, "axes", "axes", &present));
  ASSIGN_OR_RETURN(int64_t keep_dims, ctx.node().int_attr("keepdims", 1));
  ASSIGN_OR_RETURN(int64_t noop, ctx.node().int_attr("noop_with_empty_axes", 0));
  const size_t rank = x->shape.size();
  std::vector<bool> reduce(rank, axes.empty() && noop == 0);
  for (int64_t a : axes) {
    ASSIGN_OR_RETURN(int64_t axis, ctx.axis(a, rank));
    reduce[static_cast<size_t>(axis)] = true;
  }
  Shape out;
  ctx.params().keepdims = keep_dims != 0;
  for (size_t i = 0; i < rank; ++i) {
    if (!reduce[i]) {
      out.push_back(x->shape[i]);
    } else {
      ctx.params().axes.push_back(static_cast<int64_t>(i));
      if (keep_dims != 0) out.push_back(1);
    }
  }
  ctx.set_out(0, x->dtype, std::move(out));
  return Status::ok();
}

Result<double> scalar_as_double(const Ctx& ctx, const Tensor& t) {
  switch (t.dtype) {
    case DataType::kFp32:
      return static_cast<double>(t.as<float>()[0]);
    case DataType::kFp64:
      return t.as<double>()[0];
    default: {
      const std::vector<int64_t> ints = t.to_int64();
      if (ints.size() != 1) return ctx.err("constant_value has an unsupported dtype");
      return static_cast<double>(ints[0]);
    }
  }
}

Status infer_pad(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  const size_t rank = x->shape.size();
  Shape pads;
  if (ctx.opset() >= 11) {
    ASSIGN_OR_RETURN(pads, ctx.const_ints(1, "pads"));
  } else {
    ASSIGN_OR_RETURN(pads, ctx.node().ints_attr(ctx.opset() >= 2 ? "pads" : "paddings"));
  }
  std::vector<size_t> axes;
  if (ctx.has_in(3)) {
    ASSIGN_OR_RETURN(Shape axes_in, ctx.const_ints(3, "axes"));
    for (int64_t a : axes_in) {
      ASSIGN_OR_RETURN(int64_t axis, ctx.axis(a, rank));
      axes.push_back(static_cast<size_t>(axis));
    }
  } else {
    for (size_t i = 0; i < rank; ++i) axes.push_back(i);
  }
  if (pads.size() != 2 * axes.size()) {
    return ctx.err(fmt::format("pads has {} entries for {} axes", pads.size(), axes.size()));
  }
  Shape out = x->shape;
  NodeParams& params = ctx.params();
  params.pads.assign(2 * rank, 0);
  for (size_t i = 0; i < axes.size(); ++i) {
    int64_t& dim = out[axes[i]];
    if (dim >= 0) dim += pads[i] + pads[i + axes.size()];
    if (dim < -1) return ctx.err("pads make a dimension negative");
    params.pads[axes[i]] = pads[i];
    params.pads[axes[i] + rank] = pads[i + axes.size()];
  }
  ASSIGN_OR_RETURN(params.mode, ctx.node().string_attr("mode", "constant"));
  if (params.mode != "constant" && params.mode != "reflect" && params.mode != "edge") {
    return ctx.err(
        fmt::format("unsupported mode '{}' (constant, reflect and edge are)", params.mode));
  }
  if (ctx.opset() >= 11) {
    if (ctx.has_in(2)) {
      // Shapes do not depend on it; lowering needs it known.
      const Tensor* value = ctx.constant(2);
      params.value_known = value != nullptr;
      if (value != nullptr) {
        if (value->element_count() != 1) return ctx.err("constant_value must be a scalar");
        ASSIGN_OR_RETURN(params.value, scalar_as_double(ctx, *value));
      }
    }
  } else {
    ASSIGN_OR_RETURN(float value, ctx.node().float_attr("value", 0.0F));
    params.value = value;
  }
  ctx.set_out(0, x->dtype, std::move(out));
  return Status::ok();
}

Status infer_shape(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  const auto rank = static_cast<int64_t>(x->shape.size());
  ASSIGN_OR_RETURN(int64_t start, ctx.node().int_attr("start", 0));
  ASSIGN_OR_RETURN(int64_t end, ctx.node().int_attr("end", rank));
  if (start < 0) start += rank;
  if (end < 0) end += rank;
  start = std::clamp<int64_t>(start, 0, rank);
  end = std::clamp<int64_t>(end, 0, rank);
  const Shape dims(x->shape.begin() + start, x->shape.begin() + std::max(start, end));
  if (fully_known(dims)) {
    ctx.set_const(0, Tensor::from_int64(dims, {static_cast<int64_t>(dims.size())}));
  } else {
    ctx.set_out(0, DataType::kInt64, {static_cast<int64_t>(dims.size())});
  }
  return Status::ok();
}

Status infer_gather(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* data, ctx.in_rank(0, 1));
  ASSIGN_OR_RETURN(const ValueInfo* indices, ctx.in(1));
  ASSIGN_OR_RETURN(int64_t axis_attr, ctx.node().int_attr("axis", 0));
  ASSIGN_OR_RETURN(int64_t axis_signed, ctx.axis(axis_attr, data->shape.size()));
  ctx.params().axis = axis_signed;
  const auto axis = static_cast<size_t>(axis_signed);
  Shape out(data->shape.begin(), data->shape.begin() + axis_signed);
  out.insert(out.end(), indices->shape.begin(), indices->shape.end());
  out.insert(out.end(), data->shape.begin() + axis_signed + 1, data->shape.end());
  ctx.set_out(0, data->dtype, out);
  const Tensor* data_const = ctx.constant(0);
  const Tensor* index_const = ctx.constant(1);
  if (data_const == nullptr || index_const == nullptr || data_const->dtype != DataType::kInt64 ||
      !fully_known(out) || product(out, 0, out.size()) > kMaxFoldElements) {
    return Status::ok();
  }
  const std::vector<int64_t> values = data_const->to_int64();
  const std::vector<int64_t> index = index_const->to_int64();
  if (static_cast<int64_t>(values.size()) != product(data->shape, 0, data->shape.size())) {
    return Status::ok();
  }
  const int64_t outer = product(data->shape, 0, axis);
  const int64_t extent = data->shape[axis];
  const int64_t inner = product(data->shape, axis + 1, data->shape.size());
  std::vector<int64_t> folded;
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t idx : index) {
      if (idx < 0) idx += extent;
      if (idx < 0 || idx >= extent) return ctx.err(fmt::format("index {} is out of range", idx));
      for (int64_t i = 0; i < inner; ++i) {
        folded.push_back(values[static_cast<size_t>((o * extent + idx) * inner + i)]);
      }
    }
  }
  ctx.set_const(0, Tensor::from_int64(folded, out));
  return Status::ok();
}

Status infer_unsqueeze(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  bool present = false;
  ASSIGN_OR_RETURN(Shape axes, ctx.ints_from(1, 13, "axes", "axes", &present));
  if (!present || axes.empty()) return ctx.err("missing axes");
  const size_t rank = x->shape.size() + axes.size();
  std::vector<bool> inserted(rank, false);
  for (int64_t a : axes) {
    ASSIGN_OR_RETURN(int64_t axis, ctx.axis(a, rank));
    if (inserted[static_cast<size_t>(axis)]) return ctx.err("axes repeat an axis");
    inserted[static_cast<size_t>(axis)] = true;
  }
  Shape out;
  size_t next = 0;
  for (size_t i = 0; i < rank; ++i) out.push_back(inserted[i] ? 1 : x->shape[next++]);
  ctx.set_out(0, x->dtype, std::move(out));
  return Status::ok();
}

Status infer_squeeze(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  bool present = false;
  ASSIGN_OR_RETURN(Shape axes, ctx.ints_from(1, 13, "axes", "axes", &present));
  const size_t rank = x->shape.size();
  std::vector<bool> removed(rank, false);
  if (axes.empty()) {
    for (size_t i = 0; i < rank; ++i) removed[i] = x->shape[i] == 1;
  }
  for (int64_t a : axes) {
    ASSIGN_OR_RETURN(int64_t axis, ctx.axis(a, rank));
    const int64_t dim = x->shape[static_cast<size_t>(axis)];
    if (dim != 1 && dim >= 0) {
      return ctx.err(fmt::format("cannot squeeze axis {} of {}", a, dims_text(x->shape)));
    }
    removed[static_cast<size_t>(axis)] = true;
  }
  Shape out;
  for (size_t i = 0; i < rank; ++i) {
    if (!removed[i]) out.push_back(x->shape[i]);
  }
  ctx.set_out(0, x->dtype, std::move(out));
  return Status::ok();
}

Status infer_constant(Ctx& ctx) {
  const Node& node = ctx.node();
  if (node.has_attribute("value")) {
    ASSIGN_OR_RETURN(const Tensor* value, node.tensor_attr("value"));
    ctx.set_const(0, *value);
    return Status::ok();
  }
  if (node.has_attribute("value_int")) {
    ASSIGN_OR_RETURN(int64_t value, node.int_attr("value_int", 0));
    ctx.set_const(0, Tensor::from_int64(std::span<const int64_t>(&value, 1), {}));
    return Status::ok();
  }
  if (node.has_attribute("value_ints")) {
    ASSIGN_OR_RETURN(Shape values, node.ints_attr("value_ints"));
    ctx.set_const(0, Tensor::from_int64(values, {static_cast<int64_t>(values.size())}));
    return Status::ok();
  }
  if (node.has_attribute("value_float") || node.has_attribute("value_floats")) {
    std::vector<float> values;
    Shape dims;
    if (node.has_attribute("value_float")) {
      ASSIGN_OR_RETURN(float value, node.float_attr("value_float", 0.0F));
      values.push_back(value);
    } else {
      ASSIGN_OR_RETURN(values, node.floats_attr("value_floats"));
      dims.push_back(static_cast<int64_t>(values.size()));
    }
    Tensor tensor;
    tensor.dtype = DataType::kFp32;
    tensor.dims = dims;
    tensor.data.resize(values.size() * sizeof(float));
    if (!values.empty()) std::memcpy(tensor.data.data(), values.data(), tensor.data.size());
    ctx.set_const(0, std::move(tensor));
    return Status::ok();
  }
  return ctx.err("unsupported value attribute (value, value_int(s) and value_float(s) are)");
}

Status infer_cast(Ctx& ctx) {
  ASSIGN_OR_RETURN(const ValueInfo* x, ctx.in(0));
  if (!ctx.node().has_attribute("to")) return ctx.err("missing attribute 'to'");
  ASSIGN_OR_RETURN(int64_t to, ctx.node().int_attr("to", 0));
  auto dtype = data_type_from_onnx(to);
  if (!dtype) return ctx.err(fmt::format("attribute 'to': {}", dtype.status().message()));
  ctx.set_out(0, *dtype, x->shape);
  const Tensor* value = ctx.constant(0);
  if (value != nullptr && *dtype == DataType::kInt64 && value->dtype != DataType::kFp32 &&
      value->dtype != DataType::kFp64 && value->dtype != DataType::kFp16) {
    const std::vector<int64_t> ints = value->to_int64();
    if (static_cast<int64_t>(ints.size()) == value->element_count()) {
      ctx.set_const(0, Tensor::from_int64(ints, value->dims));
    }
  }
  return Status::ok();
}

// Ops whose output is their first input's data in a new shape: fold when that is a constant.
void fold_view(Ctx& ctx) {
  const Tensor* value = ctx.constant(0);
  const ValueInfo* out = ctx.out(0);
  if (value == nullptr || out == nullptr || !fully_known(out->shape) ||
      value->element_count() > kMaxFoldElements) {
    return;
  }
  if (product(out->shape, 0, out->shape.size()) != value->element_count()) return;
  Tensor folded = *value;
  folded.dims = out->shape;
  ctx.set_const(0, std::move(folded));
}

void fold_concat(Ctx& ctx) {
  std::vector<int64_t> values;
  for (size_t i = 0; i < ctx.node().inputs.size(); ++i) {
    if (!ctx.has_in(i)) continue;
    const Tensor* t = ctx.constant(i);
    if (t == nullptr || t->dtype != DataType::kInt64 || t->dims.size() != 1) return;
    const std::vector<int64_t> part = t->to_int64();
    values.insert(values.end(), part.begin(), part.end());
  }
  ctx.set_const(0, Tensor::from_int64(values, {static_cast<int64_t>(values.size())}));
}

void fold_binary(Ctx& ctx) {
  const Tensor* a = ctx.constant(0);
  const Tensor* b = ctx.constant(1);
  const ValueInfo* out = ctx.out(0);
  if (a == nullptr || b == nullptr || out == nullptr || a->dtype != DataType::kInt64 ||
      b->dtype != DataType::kInt64 || !fully_known(out->shape)) {
    return;
  }
  const std::vector<int64_t> x = a->to_int64();
  const std::vector<int64_t> y = b->to_int64();
  if (x.empty() || y.empty() || (x.size() != y.size() && x.size() != 1 && y.size() != 1)) return;
  const size_t count = std::max(x.size(), y.size());
  if (static_cast<int64_t>(count) != product(out->shape, 0, out->shape.size())) return;
  const std::string& op = ctx.node().op_type;
  std::vector<int64_t> result(count);
  for (size_t i = 0; i < count; ++i) {
    const int64_t l = x[x.size() == 1 ? 0 : i];
    const int64_t r = y[y.size() == 1 ? 0 : i];
    if (op == "Add") {
      result[i] = l + r;
    } else if (op == "Sub") {
      result[i] = l - r;
    } else if (op == "Mul") {
      result[i] = l * r;
    } else {
      if (r == 0) return;
      result[i] = l / r;
    }
  }
  ctx.set_const(0, Tensor::from_int64(result, out->shape));
}

using Handler = Status (*)(Ctx&);

const std::map<std::string, Handler, std::less<>>& handlers() {
  static const std::map<std::string, Handler, std::less<>> table = {
      {"Conv", infer_conv},
      {"BatchNormalization", infer_batch_norm},
      {"Relu", same_as_input},
      {"LeakyRelu", same_as_input},
      {"Clip", same_as_input},
      {"Sigmoid", same_as_input},
      {"HardSigmoid", same_as_input},
      {"HardSwish", same_as_input},
      {"Swish", same_as_input},  // made by fusion (x * Sigmoid(x)); ONNX has no Swish at 13
      {"LRN", same_as_input},
      {"Identity", same_as_input},
      {"Dropout", infer_dropout},
      {"Softmax", infer_softmax},
      {"Add", infer_binary},
      {"Sub", infer_binary},
      {"Mul", infer_binary},
      {"Div", infer_binary},
      {"MaxPool", infer_pool},
      {"AveragePool", infer_pool},
      {"GlobalAveragePool", infer_global_pool},
      {"Gemm", infer_gemm},
      {"MatMul", infer_matmul},
      {"Flatten", infer_flatten},
      {"Reshape", infer_reshape},
      {"Transpose", infer_transpose},
      {"Concat", infer_concat},
      {"Split", infer_split},
      {"Slice", infer_slice},
      {"ReduceMean", infer_reduce_mean},
      {"Pad", infer_pad},
      {"Shape", infer_shape},
      {"Gather", infer_gather},
      {"Unsqueeze", infer_unsqueeze},
      {"Squeeze", infer_squeeze},
      {"Constant", infer_constant},
      {"Cast", infer_cast},
  };
  return table;
}

void fold(Ctx& ctx) {
  const std::string& op = ctx.node().op_type;
  if (op == "Identity" || op == "Reshape" || op == "Unsqueeze" || op == "Squeeze" ||
      op == "Flatten" || op == "Dropout") {
    fold_view(ctx);
  } else if (op == "Concat") {
    fold_concat(ctx);
  } else if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div") {
    fold_binary(ctx);
  }
}

}  // namespace

const std::set<std::string, std::less<>>& supported_ops() {
  static const std::set<std::string, std::less<>> ops = [] {
    std::set<std::string, std::less<>> names;
    for (const auto& [name, handler] : handlers()) names.insert(name);
    return names;
  }();
  return ops;
}

Status infer_shapes(Graph& graph, int64_t batch) {
  graph.values.clear();
  graph.constants.clear();
  for (auto& input : graph.inputs) {
    if (!input.has_shape) {
      return {ErrorCode::kInvalidArgument, fmt::format("input '{}' has no shape", input.name)};
    }
    if (batch > 0 && !input.shape.empty()) input.shape[0] = batch;
    graph.values[input.name] = input;
  }
  for (const auto& [name, tensor] : graph.initializers) {
    graph.values[name] = ValueInfo{name, tensor.dtype, tensor.dims, true};
    if (tensor.element_count() <= kMaxFoldElements &&
        (tensor.dtype == DataType::kInt64 || tensor.dtype == DataType::kInt32)) {
      graph.constants[name] = tensor;
    }
  }
  graph.params.assign(graph.nodes.size(), NodeParams{});
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& node = graph.nodes[i];
    auto handler = handlers().find(node.op_type);
    if (handler == handlers().end()) return node.error("unsupported op");
    Ctx ctx(graph, node, graph.params[i]);
    RETURN_IF_ERROR(handler->second(ctx));
    fold(ctx);
  }
  for (auto& output : graph.outputs) {
    const ValueInfo* info = graph.find_value(output.name);
    if (info == nullptr) {
      return {ErrorCode::kInvalidArgument,
              fmt::format("graph output '{}' has no inferred shape", output.name)};
    }
    output.dtype = info->dtype;
    output.shape = info->shape;
    output.has_shape = true;
  }
  return Status::ok();
}

}  // namespace sliceserve::worker::engine
