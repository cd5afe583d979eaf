#include "sliceserve/worker/engine/fusion.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <set>

namespace sliceserve::worker::engine {
namespace {

// How many times each value is read: node inputs, fused addends and graph outputs.
std::map<std::string, int, std::less<>> count_uses(const Graph& graph) {
  std::map<std::string, int, std::less<>> uses;
  for (const Node& node : graph.nodes) {
    for (const std::string& input : node.inputs) {
      if (!input.empty()) ++uses[input];
    }
    for (const FusedOp& op : node.fused) {
      if (!op.addend.empty()) ++uses[op.addend];
    }
  }
  for (const ValueInfo& output : graph.outputs) ++uses[output.name];
  return uses;
}

bool is_graph_output(const Graph& graph, std::string_view name) {
  for (const ValueInfo& output : graph.outputs) {
    if (output.name == name) return true;
  }
  return false;
}

const Tensor* fp32_initializer(const Graph& graph, std::string_view name) {
  auto it = graph.initializers.find(name);
  if (it == graph.initializers.end() || it->second.dtype != DataType::kFp32) return nullptr;
  return &it->second;
}

// A scalar constant (Clip's min and max inputs) as a float, or nullopt.
std::optional<float> scalar_constant(const Graph& graph, const Node& node, size_t index) {
  if (!node.has_input(index)) return std::nullopt;
  const Tensor* t = graph.find_constant(node.inputs[index]);
  if (t == nullptr || t->element_count() != 1) return std::nullopt;
  if (t->dtype == DataType::kFp32) return t->as<float>()[0];
  if (t->dtype == DataType::kFp64) return static_cast<float>(t->as<double>()[0]);
  const std::vector<int64_t> ints = t->to_int64();
  if (ints.size() != 1) return std::nullopt;
  return static_cast<float>(ints[0]);
}

}  // namespace

std::optional<FusedOp> activation_of(const Graph& graph, const Node& node) {
  FusedOp op;
  op.op_type = node.op_type;
  op.name = node.name;
  if (node.op_type == "Relu" || node.op_type == "Sigmoid" || node.op_type == "HardSwish" ||
      node.op_type == "Swish") {
    return op;
  }
  if (node.op_type == "LeakyRelu") {
    auto alpha = node.float_attr("alpha", 0.01F);
    if (!alpha) return std::nullopt;
    op.alpha = *alpha;
    return op;
  }
  if (node.op_type == "HardSigmoid") {
    auto alpha = node.float_attr("alpha", 0.2F);
    auto beta = node.float_attr("beta", 0.5F);
    if (!alpha || !beta) return std::nullopt;
    op.alpha = *alpha;
    op.beta = *beta;
    return op;
  }
  if (node.op_type == "Clip") {
    constexpr float kInf = std::numeric_limits<float>::infinity();
    if (graph.opset >= 11) {
      auto low = node.has_input(1) ? scalar_constant(graph, node, 1) : std::optional(-kInf);
      auto high = node.has_input(2) ? scalar_constant(graph, node, 2) : std::optional(kInf);
      if (!low || !high) return std::nullopt;
      op.alpha = *low;
      op.beta = *high;
    } else {
      auto low = node.float_attr("min", -kInf);
      auto high = node.float_attr("max", kInf);
      if (!low || !high) return std::nullopt;
      op.alpha = *low;
      op.beta = *high;
    }
    return op;
  }
  return std::nullopt;
}

namespace {

// Folds BatchNormalization `bn` into `conv`'s weights and bias, as new initializers. False when
// the operands are not fp32 initializers of the expected shapes.
bool fold_batch_norm(Graph& graph, Node& conv, const Node& bn) {
  const Tensor* w = fp32_initializer(graph, conv.inputs[1]);
  const Tensor* b = conv.has_input(2) ? fp32_initializer(graph, conv.inputs[2]) : nullptr;
  if (w == nullptr || w->dims.empty() || (conv.has_input(2) && b == nullptr)) return false;
  const int64_t channels = w->dims[0];
  const Tensor* params[4];
  for (size_t i = 0; i < 4; ++i) {
    params[i] = bn.has_input(i + 1) ? fp32_initializer(graph, bn.inputs[i + 1]) : nullptr;
    if (params[i] == nullptr || params[i]->element_count() != channels) return false;
  }
  auto eps = bn.float_attr("epsilon", 1e-5F);
  if (!eps || channels <= 0) return false;
  const auto scale = params[0]->as<float>();
  const auto shift = params[1]->as<float>();
  const auto mean = params[2]->as<float>();
  const auto var = params[3]->as<float>();

  Tensor folded_w = *w;
  Tensor folded_b;
  folded_b.dtype = DataType::kFp32;
  folded_b.dims = {channels};
  folded_b.data.resize(static_cast<size_t>(channels) * sizeof(float));
  auto* fw = reinterpret_cast<float*>(folded_w.data.data());
  auto* fb = reinterpret_cast<float*>(folded_b.data.data());
  const int64_t per_channel = w->element_count() / channels;
  for (int64_t c = 0; c < channels; ++c) {
    // In double: var + eps can be tiny and the products large.
    const double s = static_cast<double>(scale[c]) / std::sqrt(static_cast<double>(var[c]) + *eps);
    for (int64_t k = 0; k < per_channel; ++k) {
      fw[c * per_channel + k] = static_cast<float>(fw[c * per_channel + k] * s);
    }
    const double bias = b == nullptr ? 0.0 : b->as<float>()[c];
    fb[c] = static_cast<float>((bias - mean[c]) * s + shift[c]);
  }
  const std::string w_name = conv.inputs[1] + "/bn:" + bn.name;
  const std::string b_name =
      (conv.has_input(2) ? conv.inputs[2] : conv.inputs[1] + "/bias") + "/bn:" + bn.name;
  graph.initializers[w_name] = std::move(folded_w);
  graph.initializers[b_name] = std::move(folded_b);
  conv.inputs.resize(3);
  conv.inputs[1] = w_name;
  conv.inputs[2] = b_name;
  return true;
}

bool same_known_shape(const Graph& graph, std::string_view a, std::string_view b) {
  const ValueInfo* x = graph.find_value(a);
  const ValueInfo* y = graph.find_value(b);
  if (x == nullptr || y == nullptr || !x->has_shape || !y->has_shape) return false;
  return x->shape == y->shape && x->dtype == DataType::kFp32 && y->dtype == DataType::kFp32;
}

void drop_unused_initializers(Graph& graph) {
  const auto uses = count_uses(graph);
  for (auto it = graph.initializers.begin(); it != graph.initializers.end();) {
    it = uses.count(it->first) == 0 ? graph.initializers.erase(it) : std::next(it);
  }
}

// Removes Identity and inference Dropout nodes whose output is not a graph output.
int remove_no_ops(Graph& graph) {
  std::map<std::string, std::string, std::less<>> renamed;
  std::vector<Node> kept;
  int removed = 0;
  for (Node& node : graph.nodes) {
    for (std::string& input : node.inputs) {
      if (auto it = renamed.find(input); it != renamed.end()) input = it->second;
    }
    const bool no_op =
        node.op_type == "Identity" || (node.op_type == "Dropout" && !node.has_input(2) &&
                                       (node.outputs.size() < 2 || node.outputs[1].empty()));
    if (no_op && node.has_input(0) && !node.outputs.empty() &&
        !is_graph_output(graph, node.outputs[0])) {
      renamed[node.outputs[0]] = node.inputs[0];
      ++removed;
      continue;
    }
    kept.push_back(std::move(node));
  }
  graph.nodes = std::move(kept);
  return removed;
}

// The activation that x * gate(x) is, for a gate node: HardSwish for HardSigmoid(1/6, 1/2),
// Swish (SiLU) for Sigmoid; "" for any other node.
std::string gated_activation(const Node& gate) {
  if (gate.op_type == "Sigmoid") return "Swish";
  if (gate.op_type != "HardSigmoid") return "";
  auto alpha = gate.float_attr("alpha", 0.2F);
  auto beta = gate.float_attr("beta", 0.5F);
  const bool hardswish =
      alpha && beta && std::abs(*alpha - 1.0F / 6.0F) < 1e-6F && std::abs(*beta - 0.5F) < 1e-6F;
  return hardswish ? "HardSwish" : "";
}

// gate(x) read once, by Mul(x, it) or Mul(it, x): one activation node on x.
void fuse_gated_activations(Graph& graph, FusionCounts& counts) {
  auto uses = count_uses(graph);
  std::map<std::string, size_t, std::less<>> gates;  // output -> node index
  std::set<size_t> dropped;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    Node& node = graph.nodes[i];
    if (!gated_activation(node).empty() && node.has_input(0) && node.outputs.size() == 1) {
      if (uses[node.outputs[0]] == 1 && !is_graph_output(graph, node.outputs[0])) {
        gates[node.outputs[0]] = i;
      }
      continue;
    }
    if (node.op_type != "Mul" || node.inputs.size() != 2 || node.outputs.size() != 1) continue;
    for (size_t side = 0; side < 2; ++side) {
      auto it = gates.find(node.inputs[side]);
      if (it == gates.end()) continue;
      const Node& gate = graph.nodes[it->second];
      if (gate.inputs[0] != node.inputs[1 - side]) continue;
      node.op_type = gated_activation(gate);
      ++(node.op_type == "HardSwish" ? counts.hardswish : counts.swish);
      node.inputs = {gate.inputs[0]};
      node.attributes.clear();
      dropped.insert(it->second);
      gates.erase(it);
      break;
    }
  }
  std::vector<Node> kept;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    if (dropped.count(i) == 0) kept.push_back(std::move(graph.nodes[i]));
  }
  graph.nodes = std::move(kept);
}

}  // namespace

Result<FusionCounts> fuse(Graph& graph) {
  FusionCounts counts;
  counts.removed = remove_no_ops(graph);
  fuse_gated_activations(graph, counts);

  // One pass in order. slot[i] holds node i or, once it was merged into a later one, nothing;
  // producer maps a value to the slot of the (possibly merged) node that computes it.
  auto uses = count_uses(graph);
  std::vector<std::optional<Node>> slots;
  slots.reserve(graph.nodes.size());
  for (Node& node : graph.nodes) slots.emplace_back(std::move(node));
  std::map<std::string, size_t, std::less<>> producer;

  // Merges slot `from` into slot `into` (a later node, whose place it takes).
  auto merge = [&](size_t from, size_t into) {
    Node merged = std::move(*slots[from]);
    slots[from].reset();
    merged.outputs = slots[into]->outputs;
    slots[into] = std::move(merged);
    producer[slots[into]->outputs[0]] = into;
  };

  for (size_t i = 0; i < slots.size(); ++i) {
    Node& node = *slots[i];
    // The Conv, Gemm or BatchNormalization that computes `value`, whose result nothing else
    // reads.
    auto fusable_producer = [&](const std::string& value) -> std::optional<size_t> {
      auto it = producer.find(value);
      if (it == producer.end() || uses[value] != 1 || is_graph_output(graph, value)) {
        return std::nullopt;
      }
      const Node& p = *slots[it->second];
      if (p.op_type != "Conv" && p.op_type != "Gemm" && p.op_type != "BatchNormalization") {
        return std::nullopt;
      }
      const auto named = std::count_if(p.outputs.begin(), p.outputs.end(),
                                       [](const std::string& o) { return !o.empty(); });
      if (named != 1 || p.outputs[0].empty()) return std::nullopt;
      return it->second;
    };
    bool merged = false;
    if (node.op_type == "BatchNormalization" && node.has_input(0)) {
      auto p = fusable_producer(node.inputs[0]);
      const bool one_output = std::all_of(node.outputs.begin() + 1, node.outputs.end(),
                                          [](const std::string& output) { return output.empty(); });
      if (p && one_output && slots[*p]->op_type == "Conv" && slots[*p]->fused.empty() &&
          fold_batch_norm(graph, *slots[*p], node)) {
        merge(*p, i);
        ++counts.batch_norm;
        merged = true;
      }
    } else if (node.op_type == "Add" && node.inputs.size() == 2) {
      for (size_t side = 0; side < 2 && !merged; ++side) {
        const std::string& other = node.inputs[1 - side];
        auto p = fusable_producer(node.inputs[side]);
        if (!p || slots[*p]->op_type != "Conv" || graph.find_constant(other) != nullptr ||
            !same_known_shape(graph, node.inputs[side], other)) {
          continue;
        }
        const bool has_add = std::any_of(slots[*p]->fused.begin(), slots[*p]->fused.end(),
                                         [](const FusedOp& f) { return f.op_type == "Add"; });
        if (has_add) continue;
        slots[*p]->fused.push_back(FusedOp{"Add", node.name, 0.0F, 0.0F, other});
        merge(*p, i);
        ++counts.add;
        merged = true;
      }
    } else if (node.has_input(0) && node.outputs.size() == 1) {
      auto p = fusable_producer(node.inputs[0]);
      // A standalone BatchNormalization takes one Relu (oneDNN's fused norm + relu).
      if (p && slots[*p]->op_type == "BatchNormalization" &&
          (node.op_type != "Relu" || !slots[*p]->fused.empty())) {
        p.reset();
      }
      std::optional<FusedOp> activation;
      if (p) activation = activation_of(graph, node);
      if (activation) {
        slots[*p]->fused.push_back(std::move(*activation));
        merge(*p, i);
        ++counts.activation;
        merged = true;
      }
    }
    if (!merged) {
      for (const std::string& output : slots[i]->outputs) {
        if (!output.empty()) producer[output] = i;
      }
    }
  }
  graph.nodes.clear();
  for (auto& slot : slots) {
    if (slot) graph.nodes.push_back(std::move(*slot));
  }
  drop_unused_initializers(graph);
  return counts;
}

}  // namespace sliceserve::worker::engine
