#include "sliceserve/worker/engine/lowering.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "sliceserve/worker/engine/fusion.h"

namespace sliceserve::worker::engine {
namespace {

using backends::BinaryAlg;
using backends::OpKind;
using backends::Plan;
using backends::PlanOp;
using backends::PlanValue;
using backends::PostOp;
using backends::UnaryAlg;

class Lowerer {
 public:
  Lowerer(const Graph& graph, int64_t batch, std::deque<Tensor>& storage)
      : graph_(graph), storage_(storage) {
    plan_.batch = batch;
  }

  Result<Plan> run() {
    for (const ValueInfo& input : graph_.inputs) {
      ASSIGN_OR_RETURN(int index, value(input.name));
      plan_.inputs.push_back(index);
    }
    for (size_t i = 0; i < graph_.nodes.size(); ++i) {
      const Node& node = graph_.nodes[i];
      if (folded(node)) continue;
      RETURN_IF_ERROR(lower_node(node, graph_.params[i]));
    }
    for (const ValueInfo& output : graph_.outputs) {
      ASSIGN_OR_RETURN(int index, value(output.name));
      plan_.outputs.push_back(index);
    }
    return std::move(plan_);
  }

 private:
  // Shape inference computed every output of the node at load time.
  bool folded(const Node& node) const {
    return std::all_of(node.outputs.begin(), node.outputs.end(), [&](const std::string& out) {
      return out.empty() || graph_.find_constant(out) != nullptr;
    });
  }

  // The plan index of a named value, added on first use.
  Result<int> value(const std::string& name) {
    if (auto it = index_.find(name); it != index_.end()) return it->second;
    const ValueInfo* info = graph_.find_value(name);
    if (info == nullptr || !info->has_shape) {
      return Status{ErrorCode::kInvalidArgument, fmt::format("value '{}' has no shape", name)};
    }
    if (std::any_of(info->shape.begin(), info->shape.end(), [](int64_t d) { return d < 0; })) {
      return Status{ErrorCode::kInvalidArgument,
                    fmt::format("value '{}' has shape {} with unknown dimensions", name,
                                shm::shape_to_string(info->shape))};
    }
    PlanValue v;
    v.name = name;
    v.dtype = info->dtype;
    v.dims = info->shape;
    if (auto init = graph_.initializers.find(name); init != graph_.initializers.end()) {
      v.is_constant = true;
      v.data = init->second.data;
    } else if (const Tensor* folded = graph_.find_constant(name); folded != nullptr) {
      storage_.push_back(*folded);
      v.is_constant = true;
      v.data = storage_.back().data;
    }
    return add_value(std::move(v));
  }

  int add_value(PlanValue v) {
    const int index = static_cast<int>(plan_.values.size());
    index_[v.name] = index;
    plan_.values.push_back(std::move(v));
    return index;
  }

  // An unnamed value the lowering adds (Softmax's 2-D view).
  int internal_value(const std::string& name, DataType dtype, std::vector<int64_t> dims) {
    PlanValue v;
    v.name = name;
    v.dtype = dtype;
    v.dims = std::move(dims);
    return add_value(std::move(v));
  }

  // An op reading the node's inputs [0, inputs) (absent ones as -1) and writing output 0.
  Result<PlanOp> op(const Node& node, OpKind kind, size_t inputs) {
    PlanOp op;
    op.kind = kind;
    op.label = node.describe();
    for (size_t i = 0; i < inputs; ++i) {
      if (!node.has_input(i)) {
        op.inputs.push_back(-1);
        continue;
      }
      ASSIGN_OR_RETURN(int index, value(node.inputs[i]));
      op.inputs.push_back(index);
    }
    if (node.outputs.empty() || node.outputs[0].empty()) return node.error("has no output");
    ASSIGN_OR_RETURN(int out, value(node.outputs[0]));
    op.outputs.push_back(out);
    return op;
  }

  // Only output 0 may be read: the others are training outputs.
  Status only_first_output(const Node& node) {
    for (size_t i = 1; i < node.outputs.size(); ++i) {
      if (!node.outputs[i].empty()) {
        return node.error(fmt::format("output {} ('{}') is not supported", i, node.outputs[i]));
      }
    }
    return Status::ok();
  }

  static Result<UnaryAlg> unary_alg(const Node& node, const std::string& op_type) {
    if (op_type == "Relu") return UnaryAlg::kRelu;
    if (op_type == "LeakyRelu") return UnaryAlg::kLeakyRelu;
    if (op_type == "Clip") return UnaryAlg::kClip;
    if (op_type == "Sigmoid") return UnaryAlg::kSigmoid;
    if (op_type == "HardSigmoid") return UnaryAlg::kHardSigmoid;
    if (op_type == "HardSwish") return UnaryAlg::kHardSwish;
    if (op_type == "Swish") return UnaryAlg::kSwish;
    return node.error(fmt::format("cannot fuse {}", op_type));
  }

  Status add_post_ops(const Node& node, PlanOp& op) {
    for (const FusedOp& fused : node.fused) {
      PostOp post;
      if (fused.op_type == "Add") {
        post.kind = PostOp::Kind::kSum;
        ASSIGN_OR_RETURN(post.value, value(fused.addend));
      } else {
        ASSIGN_OR_RETURN(post.unary, unary_alg(node, fused.op_type));
        post.alpha = fused.alpha;
        post.beta = fused.beta;
      }
      op.post_ops.push_back(post);
      op.label += fmt::format(" + '{}' ({})", fused.name, fused.op_type);
    }
    return Status::ok();
  }

  Status emit(PlanOp op) {
    plan_.ops.push_back(std::move(op));
    return Status::ok();
  }

  Status lower_node(const Node& node, const NodeParams& params) {
    const std::string& type = node.op_type;
    if (type == "Conv") {
      ASSIGN_OR_RETURN(PlanOp conv, op(node, OpKind::kConv, 3));
      ASSIGN_OR_RETURN(conv.group, node.int_attr("group", 1));
      set_window(conv, params);
      RETURN_IF_ERROR(add_post_ops(node, conv));
      return emit(std::move(conv));
    }
    if (type == "BatchNormalization") {
      ASSIGN_OR_RETURN(int64_t training, node.int_attr("training_mode", 0));
      ASSIGN_OR_RETURN(PlanOp bn, op(node, OpKind::kBatchNorm, 5));
      ASSIGN_OR_RETURN(bn.epsilon, node.float_attr("epsilon", 1e-5F));
      ASSIGN_OR_RETURN(bn.momentum, node.float_attr("momentum", 0.9F));
      bn.training = training != 0;
      if (!bn.training) {
        RETURN_IF_ERROR(only_first_output(node));
        RETURN_IF_ERROR(add_post_ops(node, bn));
      } else {
        // Training mode: the running mean and var are outputs 1 and 2 (both, or neither read).
        for (size_t i = 1; i < 3; ++i) {
          if (i >= node.outputs.size() || node.outputs[i].empty()) {
            return node.error("training_mode needs outputs running_mean and running_var");
          }
          ASSIGN_OR_RETURN(int stat, value(node.outputs[i]));
          bn.outputs.push_back(stat);
        }
      }
      return emit(std::move(bn));
    }
    if (type == "Relu" || type == "LeakyRelu" || type == "Clip" || type == "Sigmoid" ||
        type == "HardSigmoid" || type == "HardSwish" || type == "Swish") {
      const auto activation = activation_of(graph_, node);
      if (!activation) return node.error("min and max must be scalar constants");
      ASSIGN_OR_RETURN(PlanOp unary, op(node, OpKind::kUnary, 1));
      ASSIGN_OR_RETURN(unary.unary, unary_alg(node, type));
      unary.alpha = activation->alpha;
      unary.beta = activation->beta;
      return emit(std::move(unary));
    }
    if (type == "Add" || type == "Sub" || type == "Mul" || type == "Div") {
      ASSIGN_OR_RETURN(PlanOp binary, op(node, OpKind::kBinary, 2));
      binary.binary = type == "Add"   ? BinaryAlg::kAdd
                      : type == "Sub" ? BinaryAlg::kSub
                      : type == "Mul" ? BinaryAlg::kMul
                                      : BinaryAlg::kDiv;
      return emit(std::move(binary));
    }
    if (type == "MaxPool" || type == "AveragePool") {
      ASSIGN_OR_RETURN(int64_t storage_order, node.int_attr("storage_order", 0));
      if (storage_order != 0 && storage_order != 1) {
        return node.error(fmt::format("storage_order {} is not 0 or 1", storage_order));
      }
      ASSIGN_OR_RETURN(PlanOp pool,
                       op(node, type == "MaxPool" ? OpKind::kMaxPool : OpKind::kAveragePool, 1));
      pool.column_major_indices = storage_order == 1;
      if (type == "MaxPool" && node.outputs.size() > 1 && !node.outputs[1].empty()) {
        ASSIGN_OR_RETURN(int indices, value(node.outputs[1]));
        pool.outputs.push_back(indices);
      }
      set_window(pool, params);
      ASSIGN_OR_RETURN(int64_t include_pad, node.int_attr("count_include_pad", 0));
      pool.count_include_pad = include_pad != 0;
      return emit(std::move(pool));
    }
    if (type == "GlobalAveragePool") {
      ASSIGN_OR_RETURN(PlanOp pool, op(node, OpKind::kGlobalAveragePool, 1));
      return emit(std::move(pool));
    }
    if (type == "Gemm") {
      ASSIGN_OR_RETURN(PlanOp gemm, op(node, OpKind::kGemm, 3));
      ASSIGN_OR_RETURN(int64_t trans_a, node.int_attr("transA", 0));
      ASSIGN_OR_RETURN(int64_t trans_b, node.int_attr("transB", 0));
      gemm.trans_a = trans_a != 0;
      gemm.trans_b = trans_b != 0;
      ASSIGN_OR_RETURN(gemm.alpha, node.float_attr("alpha", 1.0F));
      ASSIGN_OR_RETURN(gemm.beta, node.float_attr("beta", 1.0F));
      RETURN_IF_ERROR(add_post_ops(node, gemm));
      return emit(std::move(gemm));
    }
    if (type == "MatMul") {
      ASSIGN_OR_RETURN(PlanOp matmul, op(node, OpKind::kMatMul, 2));
      return emit(std::move(matmul));
    }
    if (type == "Flatten" || type == "Reshape" || type == "Squeeze" || type == "Unsqueeze" ||
        type == "Identity") {
      ASSIGN_OR_RETURN(PlanOp copy, op(node, OpKind::kCopy, 1));
      return emit(std::move(copy));
    }
    if (type == "Dropout") return lower_dropout(node);
    if (type == "Transpose") {
      ASSIGN_OR_RETURN(PlanOp transpose, op(node, OpKind::kTranspose, 1));
      transpose.perm = params.perm;
      return emit(std::move(transpose));
    }
    if (type == "Concat") {
      ASSIGN_OR_RETURN(PlanOp concat, op(node, OpKind::kConcat, node.inputs.size()));
      std::erase(concat.inputs, -1);
      concat.axis = params.axis;
      return emit(std::move(concat));
    }
    if (type == "Split") {
      ASSIGN_OR_RETURN(PlanOp split, op(node, OpKind::kSplit, 1));
      split.outputs.clear();
      for (const std::string& output : node.outputs) {
        if (output.empty()) return node.error("every output must be named");
        ASSIGN_OR_RETURN(int index, value(output));
        split.outputs.push_back(index);
      }
      split.axis = params.axis;
      split.sizes = params.sizes;
      return emit(std::move(split));
    }
    if (type == "Slice") {
      ASSIGN_OR_RETURN(PlanOp slice, op(node, OpKind::kSlice, 1));
      slice.starts = params.starts;
      slice.steps = params.steps;
      return emit(std::move(slice));
    }
    if (type == "ReduceMean") {
      ASSIGN_OR_RETURN(PlanOp reduce,
                       op(node, params.axes.empty() ? OpKind::kCopy : OpKind::kReduceMean, 1));
      reduce.axes = params.axes;
      reduce.keepdims = params.keepdims;
      return emit(std::move(reduce));
    }
    if (type == "Softmax") return lower_softmax(node, params);
    if (type == "LRN") {
      ASSIGN_OR_RETURN(PlanOp lrn, op(node, OpKind::kLrn, 1));
      if (!node.has_attribute("size")) return node.error("missing attribute 'size'");
      ASSIGN_OR_RETURN(lrn.size, node.int_attr("size", 1));
      if (lrn.size <= 0) return node.error("attribute 'size' must be positive");
      ASSIGN_OR_RETURN(lrn.alpha, node.float_attr("alpha", 1e-4F));
      ASSIGN_OR_RETURN(lrn.beta, node.float_attr("beta", 0.75F));
      ASSIGN_OR_RETURN(lrn.bias, node.float_attr("bias", 1.0F));
      return emit(std::move(lrn));
    }
    if (type == "Pad") {
      // densenet's transitions carry an all-zero Pad: a no-op.
      const bool none = std::all_of(params.pads.begin(), params.pads.end(),
                                    [](int64_t p) { return p == 0; });
      if (!params.value_known) return node.error("input 'constant_value' must be a constant");
      ASSIGN_OR_RETURN(PlanOp pad, op(node, none ? OpKind::kCopy : OpKind::kPad, 1));
      pad.pads = params.pads;
      pad.pad_mode = params.mode == "reflect" ? PlanOp::PadMode::kReflect
                     : params.mode == "edge"  ? PlanOp::PadMode::kEdge
                                              : PlanOp::PadMode::kConstant;
      pad.pad_value = params.value;
      return emit(std::move(pad));
    }
    if (type == "Gather") {
      ASSIGN_OR_RETURN(PlanOp gather, op(node, OpKind::kGather, 2));
      gather.axis = params.axis;
      return emit(std::move(gather));
    }
    if (type == "Cast") {
      ASSIGN_OR_RETURN(PlanOp cast, op(node, OpKind::kCast, 1));
      return emit(std::move(cast));
    }
    // Shape, Constant and the shape computations are folded when shapes are known.
    return node.error("cannot be computed at load time and has no kernel");
  }

  static void set_window(PlanOp& op, const NodeParams& params) {
    op.kernel = params.kernel;
    op.strides = params.strides;
    op.dilations = params.dilations;
    op.pads = params.pads;
  }

  // Dropout at inference: output = input; the mask, if read, all true.
  Status lower_dropout(const Node& node) {
    if (node.has_input(2)) {
      const Tensor* training = graph_.find_constant(node.inputs[2]);
      if (training == nullptr) return node.error("input 'training_mode' must be a constant");
      const std::vector<int64_t> flag = training->to_int64();
      if (flag.size() != 1) return node.error("training_mode must be a boolean scalar");
      double ratio = 0.5;
      if (node.has_input(1)) {
        const Tensor* r = graph_.find_constant(node.inputs[1]);
        if (r == nullptr || r->element_count() != 1) {
          return node.error("input 'ratio' must be a scalar constant");
        }
        ratio = r->dtype == DataType::kFp64   ? r->as<double>()[0]
                : r->dtype == DataType::kFp32 ? r->as<float>()[0]
                                              : 0.5;
      }
      if (flag[0] != 0 && ratio != 0.0) {
        return node.error("training-mode Dropout (random) is not supported: this engine infers");
      }
    }
    ASSIGN_OR_RETURN(PlanOp copy, op(node, OpKind::kCopy, 1));
    RETURN_IF_ERROR(emit(std::move(copy)));
    if (node.outputs.size() > 1 && !node.outputs[1].empty()) {
      PlanOp fill;
      fill.kind = OpKind::kFill;
      fill.label = node.describe();
      ASSIGN_OR_RETURN(int mask, value(node.outputs[1]));
      fill.outputs.push_back(mask);
      RETURN_IF_ERROR(emit(std::move(fill)));
    }
    return Status::ok();
  }

  Status lower_softmax(const Node& node, const NodeParams& params) {
    ASSIGN_OR_RETURN(PlanOp softmax, op(node, OpKind::kSoftmax, 1));
    const PlanValue& x = plan_.values[static_cast<size_t>(softmax.inputs[0])];
    if (graph_.opset >= 13 || x.dims.empty()) {
      softmax.axis = params.axis;
      return emit(std::move(softmax));
    }
    // Before opset 13 Softmax works on the 2-D view [d0 x .. x d(axis-1), d(axis) x .. x dn].
    const auto axis = static_cast<size_t>(params.axis);
    int64_t rows = 1;
    int64_t cols = 1;
    for (size_t i = 0; i < x.dims.size(); ++i) (i < axis ? rows : cols) *= x.dims[i];
    const DataType dtype = x.dtype;
    const int in2d = internal_value(node.outputs[0] + "/softmax-in-2d", dtype, {rows, cols});
    const int out2d = internal_value(node.outputs[0] + "/softmax-out-2d", dtype, {rows, cols});
    PlanOp to_2d;
    to_2d.kind = OpKind::kCopy;
    to_2d.label = softmax.label;
    to_2d.inputs = softmax.inputs;
    to_2d.outputs = {in2d};
    PlanOp from_2d = to_2d;
    from_2d.inputs = {out2d};
    from_2d.outputs = softmax.outputs;
    softmax.inputs = {in2d};
    softmax.outputs = {out2d};
    softmax.axis = 1;
    RETURN_IF_ERROR(emit(std::move(to_2d)));
    RETURN_IF_ERROR(emit(std::move(softmax)));
    return emit(std::move(from_2d));
  }

  const Graph& graph_;
  std::deque<Tensor>& storage_;
  Plan plan_;
  std::map<std::string, int, std::less<>> index_;
};

}  // namespace

Result<backends::Plan> lower(const Graph& graph, int64_t batch, std::deque<Tensor>& storage) {
  return Lowerer(graph, batch, storage).run();
}

}  // namespace sliceserve::worker::engine
