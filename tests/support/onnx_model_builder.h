#pragma once
// Builds small ONNX models with the onnx protobuf API for the engine's tests.

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sliceserve::testing {

class ModelBuilder {
 public:
  explicit ModelBuilder(int64_t opset = 13) {
    model_.set_ir_version(8);
    auto* import = model_.add_opset_import();
    import->set_domain("");
    import->set_version(opset);
    graph_ = model_.mutable_graph();
    graph_->set_name("test");
  }

  void value(onnx::ValueInfoProto* info, const std::string& name, int32_t elem,
             const std::vector<int64_t>& dims) {
    info->set_name(name);
    auto* tensor_type = info->mutable_type()->mutable_tensor_type();
    tensor_type->set_elem_type(elem);
    auto* shape = tensor_type->mutable_shape();
    for (int64_t d : dims) {
      if (d < 0) {
        shape->add_dim()->set_dim_param("N");
      } else {
        shape->add_dim()->set_dim_value(d);
      }
    }
  }
  void input(const std::string& name, const std::vector<int64_t>& dims,
             int32_t elem = onnx::TensorProto::FLOAT) {
    value(graph_->add_input(), name, elem, dims);
  }
  void output(const std::string& name, const std::vector<int64_t>& dims = {},
              int32_t elem = onnx::TensorProto::FLOAT) {
    value(graph_->add_output(), name, elem, dims);
  }
  onnx::NodeProto* node(const std::string& op, const std::vector<std::string>& inputs,
                        const std::vector<std::string>& outputs, const std::string& name = "") {
    auto* n = graph_->add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (const auto& i : inputs) n->add_input(i);
    for (const auto& o : outputs) n->add_output(o);
    return n;
  }
  onnx::TensorProto* init(const std::string& name, int32_t elem, const std::vector<int64_t>& dims) {
    auto* t = graph_->add_initializer();
    t->set_name(name);
    t->set_data_type(elem);
    for (int64_t d : dims) t->add_dims(d);
    return t;
  }
  std::string bytes() const { return model_.SerializeAsString(); }
  onnx::GraphProto* graph() { return graph_; }

 private:
  onnx::ModelProto model_;
  onnx::GraphProto* graph_;
};

inline void set_int(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}
inline void set_ints(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}
inline void set_float(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}
// A float initializer with the given values.
inline onnx::TensorProto* float_tensor(ModelBuilder& b, const std::string& name,
                                       const std::vector<int64_t>& dims,
                                       const std::vector<float>& values) {
  auto* t = b.init(name, onnx::TensorProto::FLOAT, dims);
  for (float v : values) t->add_float_data(v);
  return t;
}

}  // namespace sliceserve::testing
