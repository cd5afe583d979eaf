// The cpu executor: plans run on oneDNN primitives where oneDNN has them (fp32 convolutions with
// their post-ops, pooling, batch normalization, element-wise ops, concatenation, fully connected
// layers, softmax, LRN) and on the reference kernels (reference_ops.h) for the rest, which work
// on row-major tensors.
//
// Layouts: a primitive's outputs keep the layout oneDNN chose for it (blocked, e.g. nChw8c), so a
// chain of convolutions never goes back to row-major; an op that needs another layout gets a
// reorder into a temporary, made once per (value, layout) and kept while the value lives. Graph
// inputs are read and graph outputs written in place in the caller's buffers.
//
// Memory: every intermediate buffer has a lifetime (first and last step that touches it); one
// arena per executor holds them all, offsets assigned first-fit so buffers whose lifetimes do not
// overlap share bytes. All plans (one per batch size) use the same arena, one run at a time.
//
// Weights: every constant a step reads is a weight entry in the layout the step wants (a
// convolution's weights in the blocked layout its primitive chose, the same for all batch sizes
// when the primitives agree). The entries are laid out in one region of the WeightStore, filled
// by the first worker of a model and mapped read-only by its shadow.
//
// Threads: oneDNN primitives fix their thread count when they are created, so each plan is built
// per thread count: at compile for the slice's, on the first run at another (an in-place resize).
// They run on an OpenMP team of that many threads, pinned one per cpu of the slice
// (ctx.host_cpus()), re-pinned whenever the slice changes. Weights are reordered single-threaded:
// the loading thread is pinned to one cpu, where a team would only wait on itself.

#include <fmt/format.h>
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <map>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <unordered_map>

#include "reference_ops.h"
#include "sliceserve/backends/arena_layout.h"
#include "sliceserve/backends/executor.h"

namespace sliceserve::backends {
namespace {

using dnnl::algorithm;
using dnnl::memory;
using dnnl::primitive_attr;
using dnnl::prop_kind;
using Dims = memory::dims;

constexpr size_t kAlign = 64;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

Dims row_major_strides(const Dims& dims) {
  Dims strides(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;)
    strides[i - 1] = strides[i] * std::max<int64_t>(dims[i], 1);
  return strides;
}

// Row-major fp32 descriptor; rank 0 is viewed as [1].
memory::desc plain_md(const std::vector<int64_t>& dims_in) {
  Dims dims(dims_in.begin(), dims_in.end());
  if (dims.empty()) dims = {1};
  return {dims, memory::data_type::f32, row_major_strides(dims)};
}

// A row-major matrix read transposed: dims [rows, cols] of a buffer that is [cols, rows].
memory::desc transposed_md(int64_t rows, int64_t cols) {
  return {{rows, cols}, memory::data_type::f32, Dims{1, rows}};
}

Status dnnl_failure(const std::string& label, const dnnl::error& e) {
  return {ErrorCode::kInternal, fmt::format("{}: oneDNN: {}", label, e.what())};
}

// Where a buffer's bytes are.
struct Storage {
  enum class Kind { kArena, kWeight, kInput, kOutput };
  Kind kind = Kind::kArena;
  size_t index = 0;  // kWeight: entry; kInput/kOutput: the plan's input/output number
  size_t bytes = 0;
  int first = INT_MAX;  // kArena: the steps that use it, inclusive
  int last = -1;
  size_t offset = 0;  // kArena: in the arena; kWeight: in the weight region
};

// A view of a storage's bytes as a tensor: row-major with the value's dims, or in `md`.
struct Buffer {
  size_t storage = 0;
  DataType dtype = DataType::kInvalid;
  std::vector<int64_t> dims;
  bool plain = true;
  memory::desc md;  // fp32 buffers
};

struct WeightEntry {
  std::string name;
  memory::desc md;                    // the layout kept (fp32), or empty: the bytes as they are
  memory::desc src_md;                // the layout of `source` (fp32)
  std::span<const std::byte> source;  // the plan's constant: valid until compile() returns
  size_t bytes = 0;
  size_t offset = 0;                // in the weight region
  const std::byte* data = nullptr;  // once placed: in the region, or a late entry's own memory
};

using AlignedBytes = std::unique_ptr<std::byte, decltype(&std::free)>;

AlignedBytes aligned_bytes(size_t bytes) {
  return {static_cast<std::byte*>(std::aligned_alloc(kAlign, align_up(std::max(bytes, kAlign)))),
          &std::free};
}

// Sets OpenMP's thread count for the primitives created (and run) in this scope.
class OmpThreads {
 public:
  explicit OmpThreads(unsigned threads) : previous_(omp_get_max_threads()) {
    omp_set_num_threads(static_cast<int>(threads));
  }
  ~OmpThreads() { omp_set_num_threads(previous_); }
  OmpThreads(const OmpThreads&) = delete;
  OmpThreads& operator=(const OmpThreads&) = delete;

 private:
  int previous_;
};

struct Step {
  enum class Kind { kPrimitive, kReference, kCopy };
  Kind kind = Kind::kPrimitive;
  dnnl::primitive primitive;
  std::vector<std::pair<int, size_t>> args;   // kPrimitive: (DNNL_ARG_*, buffer)
  const PlanOp* op = nullptr;                 // kReference
  std::vector<size_t> inputs, outputs, sums;  // kReference buffers (inputs: SIZE_MAX = absent)
  size_t from = 0, to = 0;                    // kCopy buffers, same bytes
  size_t plan_op = SIZE_MAX;  // the PlanOp it was lowered for (profile_run); none: graph outputs
};

// One plan built for one thread count.
struct CompiledPlan {
  std::vector<Storage> storages;
  std::vector<Buffer> buffers;
  std::vector<Step> steps;
  size_t arena_bytes = 0;
  // One dnnl::memory per buffer a primitive reads or writes; those in the arena point at the
  // arena `bound_arena` (set again when the arena grows), those in the caller's inputs and
  // outputs (io_memories) are set at every run. step_args[i] is step i's argument map, built
  // once: a dnnl::memory is a shared handle, so the maps see every handle change.
  std::map<size_t, memory> memories;
  std::vector<std::pair<size_t, memory>> io_memories;
  std::vector<std::unordered_map<int, memory>> step_args;
  const std::byte* bound_arena = nullptr;
};

class PlanBuilder;

class OneDnnExecutor final : public Executor {
 public:
  OneDnnExecutor() : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}

  Status compile(std::span<const Plan> plans, WeightStore* weights, unsigned threads) override;
  Status run(size_t index, std::span<const std::byte* const> inputs,
             std::span<std::byte* const> outputs, ComputeContext& ctx) override;
  ExecutorWeights weights() const override { return usage_; }
  Result<std::vector<OpTiming>> profile_run(size_t index, std::span<const std::byte* const> inputs,
                                            std::span<std::byte* const> outputs,
                                            ComputeContext& ctx) override;

 private:
  friend class PlanBuilder;

  // run(), and with `timings` the host time of each op's steps (the stream waited on after each).
  Status execute(size_t index, std::span<const std::byte* const> inputs,
                 std::span<std::byte* const> outputs, ComputeContext& ctx,
                 std::vector<OpTiming>* timings);

  // The weight entry of `value` in layout md (empty md: as it is), added on first use. Once the
  // weights are placed, a new layout (a primitive built later chose another) is a late entry of
  // this process's own, reordered from the placed one.
  size_t weight(const PlanValue& value, const memory::desc& md, const memory::desc& src_md);
  Status place_weights(WeightStore* store);
  // Builds plan `index` for `threads`; the arena grows to fit it.
  Result<CompiledPlan*> build(size_t index, unsigned threads);
  void bind(CompiledPlan& plan);
  std::byte* address(const CompiledPlan& plan, size_t buffer) const;
  void pin_threads(unsigned threads, const std::vector<unsigned>& cpus);

  dnnl::engine engine_;
  dnnl::stream stream_;
  std::vector<Plan> plans_;  // as compiled; their constants' bytes are not kept
  std::map<std::pair<size_t, unsigned>, CompiledPlan> compiled_;  // (plan, threads)
  std::vector<WeightEntry> entries_;
  // Layouts chosen for a convolution's or matmul's weights, shared by all batch sizes.
  std::map<std::string, memory::desc> weight_layouts_;
  bool weights_placed_ = false;
  std::vector<std::byte> private_weights_;
  std::vector<AlignedBytes> late_weights_;
  AlignedBytes arena_{nullptr, &std::free};
  size_t arena_bytes_ = 0;
  ExecutorWeights usage_;
  unsigned pinned_threads_ = 0;
  std::vector<unsigned> pinned_cpus_;
  std::vector<const std::byte*> run_inputs_;
  std::vector<std::byte*> run_outputs_;
};

// Builds one plan's steps, buffers and storages.
class PlanBuilder {
 public:
  PlanBuilder(OneDnnExecutor& executor, const Plan& plan, CompiledPlan& out)
      : ex_(executor), plan_(plan), out_(out) {}

  Status build() {
    const Plan& plan = plan_;
    canonical_.assign(plan.values.size(), SIZE_MAX);
    for (size_t i = 0; i < plan.inputs.size(); ++i) {
      const auto v = static_cast<size_t>(plan.inputs[i]);
      if (canonical_[v] != SIZE_MAX) continue;
      canonical_[v] = new_buffer(new_storage(Storage::Kind::kInput, i, value(v).byte_size()), v);
    }
    for (size_t k = 0; k < plan.ops.size(); ++k) {
      const PlanOp& op = plan.ops[k];
      const size_t first = out_.steps.size();
      try {
        RETURN_IF_ERROR(lower(op));
      } catch (const dnnl::error& e) {
        return dnnl_failure(op.label, e);
      }
      // Its reorders count as the op's time: they exist because of its layout.
      for (size_t i = first; i < out_.steps.size(); ++i) out_.steps[i].plan_op = k;
      ++step_;
    }
    for (size_t i = 0; i < plan.outputs.size(); ++i) {
      const auto v = static_cast<size_t>(plan.outputs[i]);
      RETURN_IF_ERROR(ensure_present(v, "graph output"));
      const size_t out =
          new_buffer(new_storage(Storage::Kind::kOutput, i, value(v).byte_size()), v);
      try {
        copy_or_reorder(current(v), out);
      } catch (const dnnl::error& e) {
        return dnnl_failure("graph output '" + value(v).name + "'", e);
      }
      ++step_;
    }
    assign_offsets();
    return Status::ok();
  }

 private:
  const PlanValue& value(size_t v) const { return plan_.values[v]; }

  size_t new_storage(Storage::Kind kind, size_t index, size_t bytes) {
    Storage s;
    s.kind = kind;
    s.index = index;
    s.bytes = bytes;
    out_.storages.push_back(s);
    return out_.storages.size() - 1;
  }

  size_t new_buffer(size_t storage, size_t v) {
    Buffer b;
    b.storage = storage;
    b.dtype = value(v).dtype;
    b.dims = value(v).dims;
    if (b.dtype == DataType::kFp32) b.md = plain_md(b.dims);
    out_.buffers.push_back(std::move(b));
    return out_.buffers.size() - 1;
  }

  // A new arena buffer for value v in layout md (fp32) or row-major.
  size_t new_activation(size_t v, const std::optional<memory::desc>& md = std::nullopt) {
    const size_t bytes = md ? md->get_size() : value(v).byte_size();
    const size_t b = new_buffer(new_storage(Storage::Kind::kArena, 0, bytes), v);
    if (md) {
      out_.buffers[b].md = *md;
      out_.buffers[b].plain = *md == plain_md(value(v).dims);
    }
    return b;
  }

  void touch(size_t buffer) {
    Storage& s = out_.storages[out_.buffers[buffer].storage];
    s.first = std::min(s.first, step_);
    s.last = std::max(s.last, step_);
  }

  Status ensure_present(size_t v, std::string_view what) {
    if (canonical_[v] != SIZE_MAX) return Status::ok();
    const PlanValue& pv = value(v);
    if (!pv.is_constant) {
      return {ErrorCode::kInvalidArgument,
              fmt::format("{} '{}' is read before it is computed", what, pv.name)};
    }
    if (!ex_.weights_placed_ && pv.data.size() != pv.byte_size()) {
      return {ErrorCode::kInvalidArgument,
              fmt::format("constant '{}' has {} bytes, its shape needs {}", pv.name, pv.data.size(),
                          pv.byte_size())};
    }
    return Status::ok();
  }

  // The buffer that holds value v as computed; a constant's row-major weight buffer is made on
  // first use (a Conv's weights are only ever read in the primitive's layout).
  size_t current(size_t v) {
    if (canonical_[v] == SIZE_MAX) canonical_[v] = weight_buffer(v, std::nullopt, std::nullopt);
    return canonical_[v];
  }

  // A buffer over constant v's weight entry in layout md (from src_md; both default to
  // row-major).
  size_t weight_buffer(size_t v, std::optional<memory::desc> md,
                       std::optional<memory::desc> src_md) {
    const PlanValue& pv = value(v);
    memory::desc keep, from;
    if (pv.dtype == DataType::kFp32) {
      from = src_md ? *src_md : plain_md(pv.dims);
      keep = md ? *md : plain_md(pv.dims);
    }
    const size_t entry = ex_.weight(pv, keep, from);
    const size_t b =
        new_buffer(new_storage(Storage::Kind::kWeight, entry, ex_.entries_[entry].bytes), v);
    if (pv.dtype == DataType::kFp32) {
      out_.buffers[b].md = keep;
      out_.buffers[b].plain = keep == plain_md(pv.dims);
    }
    return b;
  }

  // Records a step that makes `to` hold `from`'s tensor (its layout converted if they differ).
  void copy_or_reorder(size_t from, size_t to) {
    touch(from);
    touch(to);
    const Buffer& a = out_.buffers[from];
    const Buffer& b = out_.buffers[to];
    Step step;
    if (a.dtype != DataType::kFp32 || a.md == b.md) {
      step.kind = Step::Kind::kCopy;
      step.from = from;
      step.to = to;
    } else {
      step.primitive =
          dnnl::reorder(dnnl::reorder::primitive_desc(ex_.engine_, a.md, ex_.engine_, b.md));
      step.args = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    }
    out_.steps.push_back(std::move(step));
  }

  // Value v in layout md: its canonical buffer when that is the layout, else a reorder into a
  // temporary, made once per layout.
  size_t in_layout(size_t v, const memory::desc& md) {
    // A constant is kept in each layout it is read in; only those become weight entries.
    if (canonical_[v] != SIZE_MAX && out_.buffers[canonical_[v]].md == md) return canonical_[v];
    for (size_t b : converted_[v]) {
      if (out_.buffers[b].md == md) return b;
    }
    size_t b;
    if (value(v).is_constant) {
      b = weight_buffer(v, md, std::nullopt);
    } else {
      b = new_activation(v, md);
      copy_or_reorder(current(v), b);  // later readers in this layout reuse (and touch) it
    }
    converted_[v].push_back(b);
    return b;
  }

  size_t row_major(size_t v) {
    if (out_.buffers[current(v)].plain) return current(v);
    return in_layout(v, plain_md(value(v).dims));
  }

  static memory::desc any_md(const std::vector<int64_t>& dims) {
    return {Dims(dims.begin(), dims.end()), memory::data_type::f32, memory::format_tag::any};
  }

  Status inputs_present(const PlanOp& op) {
    for (int v : op.inputs) {
      if (v >= 0) RETURN_IF_ERROR(ensure_present(static_cast<size_t>(v), op.label + ": input"));
    }
    for (const PostOp& post : op.post_ops) {
      if (post.kind == PostOp::Kind::kSum) {
        RETURN_IF_ERROR(ensure_present(static_cast<size_t>(post.value), op.label + ": addend"));
      }
    }
    return Status::ok();
  }

  bool all_fp32(const PlanOp& op) const {
    for (int v : op.inputs) {
      if (v >= 0 && value(static_cast<size_t>(v)).dtype != DataType::kFp32) return false;
    }
    for (int v : op.outputs) {
      if (value(static_cast<size_t>(v)).dtype != DataType::kFp32) return false;
    }
    return true;
  }

  void primitive_step(dnnl::primitive primitive, std::vector<std::pair<int, size_t>> args) {
    for (const auto& [arg, buffer] : args) touch(buffer);
    Step step;
    step.primitive = std::move(primitive);
    step.args = std::move(args);
    out_.steps.push_back(std::move(step));
  }

  Status lower(const PlanOp& op) {
    RETURN_IF_ERROR(inputs_present(op));
    if (all_fp32(op)) {
      std::optional<bool> done;
      switch (op.kind) {
        case OpKind::kConv:
          done = conv(op);
          break;
        case OpKind::kGemm:
          done = gemm(op);
          break;
        case OpKind::kMaxPool:
        case OpKind::kAveragePool:
        case OpKind::kGlobalAveragePool:
          done = pool(op);
          break;
        case OpKind::kBatchNorm:
          done = batch_norm(op);
          break;
        case OpKind::kUnary:
          done = unary(op);
          break;
        case OpKind::kBinary:
          done = binary(op);
          break;
        case OpKind::kConcat:
          done = concat(op);
          break;
        case OpKind::kSoftmax:
          done = softmax(op);
          break;
        case OpKind::kLrn:
          done = lrn(op);
          break;
        default:
          break;
      }
      if (done && *done) return Status::ok();
    }
    if (op.kind == OpKind::kCopy) return copy(op);
    return reference(op);
  }

  // Attributes for a Conv's or Gemm's post-ops; false if one cannot be expressed.
  static bool post_ops_attr(const PlanOp& op, primitive_attr& attr) {
    dnnl::post_ops post;
    for (const PostOp& p : op.post_ops) {
      if (p.kind == PostOp::Kind::kSum) {
        post.append_sum(1.0F);
        continue;
      }
      switch (p.unary) {
        case UnaryAlg::kRelu:
          post.append_eltwise(1.0F, algorithm::eltwise_relu, 0.0F, 0.0F);
          break;
        case UnaryAlg::kLeakyRelu:
          post.append_eltwise(1.0F, algorithm::eltwise_relu, p.alpha, 0.0F);
          break;
        case UnaryAlg::kClip:
          post.append_eltwise(1.0F, algorithm::eltwise_clip, p.alpha, p.beta);
          break;
        case UnaryAlg::kSigmoid:
          post.append_eltwise(1.0F, algorithm::eltwise_logistic, 0.0F, 0.0F);
          break;
        case UnaryAlg::kHardSigmoid:
          post.append_eltwise(1.0F, algorithm::eltwise_linear, p.alpha, p.beta);
          post.append_eltwise(1.0F, algorithm::eltwise_clip, 0.0F, 1.0F);
          break;
        case UnaryAlg::kHardSwish:
          post.append_eltwise(1.0F, algorithm::eltwise_hardswish, 0.0F, 0.0F);
          break;
        case UnaryAlg::kSwish:
          post.append_eltwise(1.0F, algorithm::eltwise_swish, 1.0F, 0.0F);
          break;
      }
    }
    attr.set_post_ops(post);
    return true;
  }

  // The sum post-op adds into the destination: put the addend there first.
  void load_addend(const PlanOp& op, size_t dst) {
    for (const PostOp& p : op.post_ops) {
      if (p.kind == PostOp::Kind::kSum) copy_or_reorder(current(static_cast<size_t>(p.value)), dst);
    }
  }

  std::optional<bool> conv(const PlanOp& op) {
    const size_t x = static_cast<size_t>(op.inputs[0]);
    const size_t w = static_cast<size_t>(op.inputs[1]);
    const bool has_bias = op.inputs.size() > 2 && op.inputs[2] >= 0;
    const PlanValue& wv = value(w);
    const PlanValue& yv = value(static_cast<size_t>(op.outputs[0]));
    const size_t spatial = wv.dims.size() - 2;
    if (!wv.is_constant || spatial < 1 || spatial > 3 || op.kernel.size() != spatial ||
        op.pads.size() != 2 * spatial || op.group < 1) {
      return false;
    }
    if (has_bias && !value(static_cast<size_t>(op.inputs[2])).is_constant) return false;
    Dims w_dims(wv.dims.begin(), wv.dims.end());
    memory::desc w_src = plain_md(wv.dims);
    if (op.group > 1) {
      w_dims[0] /= op.group;
      w_dims.insert(w_dims.begin(), op.group);
      w_src = memory::desc(w_dims, memory::data_type::f32, row_major_strides(w_dims));
    }
    Dims strides(op.strides.begin(), op.strides.end());
    Dims dilations, pad_l, pad_r;
    for (size_t i = 0; i < spatial; ++i) {
      dilations.push_back(op.dilations[i] - 1);  // oneDNN counts the gaps
      pad_l.push_back(op.pads[i]);
      pad_r.push_back(op.pads[i + spatial]);
    }
    primitive_attr attr;
    post_ops_attr(op, attr);
    auto make = [&](const memory::desc& w_md) {
      const memory::desc bias_md = has_bias ? plain_md({wv.dims[0]}) : memory::desc();
      dnnl::convolution_forward::desc desc(
          prop_kind::forward_inference, algorithm::convolution_direct, any_md(value(x).dims), w_md,
          bias_md, any_md(yv.dims), strides, dilations, pad_l, pad_r);
      return dnnl::convolution_forward::primitive_desc(desc, attr, ex_.engine_);
    };
    const memory::desc w_any(w_dims, memory::data_type::f32, memory::format_tag::any);
    dnnl::convolution_forward::primitive_desc pd;
    auto chosen = ex_.weight_layouts_.find(wv.name);
    try {
      pd = chosen != ex_.weight_layouts_.end() ? make(chosen->second) : make(w_any);
    } catch (const dnnl::error&) {
      try {
        pd = make(w_any);
      } catch (const dnnl::error&) {
        return false;
      }
    }
    ex_.weight_layouts_.emplace(wv.name, pd.weights_desc());
    const size_t src = in_layout(x, pd.src_desc());
    const size_t weights = weight_buffer(w, pd.weights_desc(), w_src);
    const size_t y = new_activation(static_cast<size_t>(op.outputs[0]), pd.dst_desc());
    load_addend(op, y);
    std::vector<std::pair<int, size_t>> args = {
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, y}};
    if (has_bias) {
      args.push_back({DNNL_ARG_BIAS, weight_buffer(static_cast<size_t>(op.inputs[2]), std::nullopt,
                                                   std::nullopt)});
    }
    primitive_step(dnnl::convolution_forward(pd), std::move(args));
    canonical_[static_cast<size_t>(op.outputs[0])] = y;
    return true;
  }

  // Gemm as a oneDNN matmul: Y = A' B' + C with C a bias row (beta 1) or absent, alpha 1.
  std::optional<bool> gemm(const PlanOp& op) {
    const size_t a = static_cast<size_t>(op.inputs[0]);
    const size_t b = static_cast<size_t>(op.inputs[1]);
    const bool has_c = op.inputs.size() > 2 && op.inputs[2] >= 0;
    const PlanValue& yv = value(static_cast<size_t>(op.outputs[0]));
    const int64_t m = yv.dims[0];
    const int64_t n = yv.dims[1];
    const int64_t k = value(a).dims[op.trans_a ? 0 : 1];
    if (op.alpha != 1.0F) return false;
    std::optional<size_t> bias;
    if (has_c) {
      const PlanValue& c = value(static_cast<size_t>(op.inputs[2]));
      const bool row =
          c.element_count() == n && (c.dims.size() == 1 || (c.dims.size() == 2 && c.dims[0] == 1));
      if (!c.is_constant || !row || op.beta != 1.0F) return false;
    }
    const memory::desc a_md = op.trans_a ? transposed_md(m, k) : plain_md({m, k});
    const memory::desc b_src = op.trans_b ? transposed_md(k, n) : plain_md({k, n});
    primitive_attr attr;
    post_ops_attr(op, attr);
    // Constant weights are packed in the layout the largest batch's matmul chose (see conv).
    const bool b_constant = value(b).is_constant;
    const memory::desc b_any({k, n}, memory::data_type::f32, memory::format_tag::any);
    const memory::desc bias_md = has_c ? plain_md({1, n}) : memory::desc();
    auto make = [&](const memory::desc& b_md) {
      return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, bias_md, plain_md({m, n})),
                                          attr, ex_.engine_);
    };
    dnnl::matmul::primitive_desc pd;
    auto chosen = b_constant ? ex_.weight_layouts_.find(value(b).name) : ex_.weight_layouts_.end();
    try {
      pd = make(!b_constant ? b_src : chosen != ex_.weight_layouts_.end() ? chosen->second : b_any);
    } catch (const dnnl::error&) {
      try {
        pd = make(b_constant ? b_any : b_src);
      } catch (const dnnl::error&) {
        return false;
      }
    }
    if (b_constant) ex_.weight_layouts_.emplace(value(b).name, pd.weights_desc());
    // A is read in place when row-major (transposed: the same bytes, strided).
    const size_t a_plain = row_major(a);
    size_t a_view = a_plain;
    if (op.trans_a) {
      a_view = new_buffer(out_.buffers[a_plain].storage, a);
      out_.buffers[a_view].md = a_md;
      out_.buffers[a_view].plain = false;
    }
    size_t weights;
    if (b_constant) {
      weights = weight_buffer(b, pd.weights_desc(), b_src);
    } else {
      weights = new_buffer(out_.buffers[row_major(b)].storage, b);
      out_.buffers[weights].md = b_src;
    }
    std::vector<std::pair<int, size_t>> args = {{DNNL_ARG_SRC, a_view},
                                                {DNNL_ARG_WEIGHTS, weights}};
    if (has_c) {
      bias = weight_buffer(static_cast<size_t>(op.inputs[2]), bias_md, bias_md);
      args.push_back({DNNL_ARG_BIAS, *bias});
    }
    const size_t y = new_activation(static_cast<size_t>(op.outputs[0]), plain_md(yv.dims));
    args.push_back({DNNL_ARG_DST, y});
    primitive_step(dnnl::matmul(pd), std::move(args));
    canonical_[static_cast<size_t>(op.outputs[0])] = y;
    return true;
  }

  std::optional<bool> pool(const PlanOp& op) {
    if (op.outputs.size() != 1) return false;  // MaxPool's Indices: the reference kernel
    const size_t x = static_cast<size_t>(op.inputs[0]);
    const PlanValue& xv = value(x);
    const PlanValue& yv = value(static_cast<size_t>(op.outputs[0]));
    const size_t spatial = xv.dims.size() - 2;
    if (spatial < 1 || spatial > 3) return false;
    Dims kernel, strides, dilations, pad_l, pad_r;
    algorithm alg = algorithm::pooling_max;
    if (op.kind == OpKind::kGlobalAveragePool) {
      alg = algorithm::pooling_avg_include_padding;
      for (size_t i = 0; i < spatial; ++i) {
        kernel.push_back(xv.dims[i + 2]);
        strides.push_back(1);
        dilations.push_back(0);
        pad_l.push_back(0);
        pad_r.push_back(0);
      }
    } else {
      if (op.kernel.size() != spatial || op.pads.size() != 2 * spatial) return false;
      for (size_t i = 0; i < spatial; ++i) {
        const int64_t dilation = op.dilations.empty() ? 1 : op.dilations[i];
        const int64_t extent = (op.kernel[i] - 1) * dilation + 1;
        // ceil_mode shows in the output size: oneDNN sees it as more padding at the end.
        const int64_t needed =
            (yv.dims[i + 2] - 1) * op.strides[i] + extent - xv.dims[i + 2] - op.pads[i];
        const int64_t end = std::max(op.pads[i + spatial], needed);
        if (op.kind == OpKind::kAveragePool && op.count_include_pad &&
            end != op.pads[i + spatial]) {
          return false;  // the extra padding must not count: the reference kernel knows
        }
        kernel.push_back(op.kernel[i]);
        strides.push_back(op.strides[i]);
        dilations.push_back(dilation - 1);
        pad_l.push_back(op.pads[i]);
        pad_r.push_back(end);
      }
      if (op.kind == OpKind::kAveragePool) {
        alg = op.count_include_pad ? algorithm::pooling_avg_include_padding
                                   : algorithm::pooling_avg_exclude_padding;
      }
    }
    const size_t src = current(x);
    dnnl::pooling_v2_forward::primitive_desc pd;
    try {
      pd = dnnl::pooling_v2_forward::primitive_desc(
          dnnl::pooling_v2_forward::desc(prop_kind::forward_inference, alg, out_.buffers[src].md,
                                         any_md(yv.dims), strides, kernel, dilations, pad_l, pad_r),
          ex_.engine_);
    } catch (const dnnl::error&) {
      return false;
    }
    const size_t s = in_layout(x, pd.src_desc());
    const size_t y = new_activation(static_cast<size_t>(op.outputs[0]), pd.dst_desc());
    primitive_step(dnnl::pooling_v2_forward(pd), {{DNNL_ARG_SRC, s}, {DNNL_ARG_DST, y}});
    canonical_[static_cast<size_t>(op.outputs[0])] = y;
    return true;
  }

  std::optional<bool> batch_norm(const PlanOp& op) {
    const size_t x = static_cast<size_t>(op.inputs[0]);
    const PlanValue& xv = value(x);
    if (xv.dims.size() < 2 || op.training) return false;
    for (size_t i = 1; i <= 4; ++i) {
      if (op.inputs[i] < 0 ||
          value(static_cast<size_t>(op.inputs[i])).element_count() != xv.dims[1]) {
        return false;
      }
    }
    // A Relu post-op is oneDNN's fused norm + relu; other post-ops go to the reference kernel.
    const bool relu = op.post_ops.size() == 1 && op.post_ops[0].unary == UnaryAlg::kRelu &&
                      op.post_ops[0].kind == PostOp::Kind::kUnary;
    if (!op.post_ops.empty() && !relu) return false;
    const size_t src = current(x);
    auto flags = dnnl::normalization_flags::use_global_stats |
                 dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
    if (relu) flags |= dnnl::normalization_flags::fuse_norm_relu;
    dnnl::batch_normalization_forward::primitive_desc pd;
    try {
      pd = dnnl::batch_normalization_forward::primitive_desc(
          dnnl::batch_normalization_forward::desc(prop_kind::forward_inference,
                                                  out_.buffers[src].md, op.epsilon, flags),
          ex_.engine_);
    } catch (const dnnl::error&) {
      return false;
    }
    const memory::desc channel = plain_md({xv.dims[1]});
    auto param = [&](size_t i) { return in_layout(static_cast<size_t>(op.inputs[i]), channel); };
    const size_t y = new_activation(static_cast<size_t>(op.outputs[0]), pd.dst_desc());
    primitive_step(dnnl::batch_normalization_forward(pd), {{DNNL_ARG_SRC, src},
                                                           {DNNL_ARG_SCALE, param(1)},
                                                           {DNNL_ARG_SHIFT, param(2)},
                                                           {DNNL_ARG_MEAN, param(3)},
                                                           {DNNL_ARG_VARIANCE, param(4)},
                                                           {DNNL_ARG_DST, y}});
    canonical_[static_cast<size_t>(op.outputs[0])] = y;
    return true;
  }

  std::optional<bool> unary(const PlanOp& op) {
    algorithm alg;
    float alpha = 0.0F;
    float beta = 0.0F;
    switch (op.unary) {
      case UnaryAlg::kRelu:
        alg = algorithm::eltwise_relu;
        break;
      case UnaryAlg::kLeakyRelu:
        alg = algorithm::eltwise_relu;
        alpha = op.alpha;
        break;
      case UnaryAlg::kClip:
        alg = algorithm::eltwise_clip;
        alpha = op.alpha;
        beta = op.beta;
        break;
      case UnaryAlg::kSigmoid:
        alg = algorithm::eltwise_logistic;
        break;
      case UnaryAlg::kHardSwish:
        alg = algorithm::eltwise_hardswish;
        break;
      case UnaryAlg::kSwish:
        alg = algorithm::eltwise_swish;
        alpha = 1.0F;
        break;
      default:
        return false;  // HardSigmoid: no single oneDNN function
    }
    const size_t x = static_cast<size_t>(op.inputs[0]);
    const size_t src = current(x);
    dnnl::eltwise_forward::primitive_desc pd;
    try {
      pd = dnnl::eltwise_forward::primitive_desc(
          dnnl::eltwise_forward::desc(prop_kind::forward_inference, alg, out_.buffers[src].md,
                                      alpha, beta),
          ex_.engine_);
    } catch (const dnnl::error&) {
      return false;
    }
    const size_t y = new_activation(static_cast<size_t>(op.outputs[0]), pd.dst_desc());
    primitive_step(dnnl::eltwise_forward(pd), {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, y}});
    canonical_[static_cast<size_t>(op.outputs[0])] = y;
    return true;
  }

  std::optional<bool> binary(const PlanOp& op) {
    size_t a = static_cast<size_t>(op.inputs[0]);
    size_t b = static_cast<size_t>(op.inputs[1]);
    const std::vector<int64_t>& out_dims = value(static_cast<size_t>(op.outputs[0])).dims;
    const bool commutative = op.binary == BinaryAlg::kAdd || op.binary == BinaryAlg::kMul;
    if (value(a).dims != out_dims && commutative) std::swap(a, b);
    if (value(a).dims != out_dims || value(b).dims.size() > out_dims.size()) return false;
    algorithm alg = op.binary == BinaryAlg::kAdd   ? algorithm::binary_add
                    : op.binary == BinaryAlg::kSub ? algorithm::binary_sub
                    : op.binary == BinaryAlg::kMul ? algorithm::binary_mul
                                                   : algorithm::binary_div;
    const size_t src0 = current(a);
    const memory::desc& md0 = out_.buffers[src0].md;
    // B either in A's layout or, when it broadcasts, row-major with leading ones.
    const bool same = value(b).dims == out_dims;
    std::vector<int64_t> b_dims = value(b).dims;
    b_dims.insert(b_dims.begin(), out_dims.size() - b_dims.size(), 1);
    const memory::desc md1 = same ? md0 : plain_md(b_dims);
    dnnl::binary::primitive_desc pd;
    try {
      pd = dnnl::binary::primitive_desc(dnnl::binary::desc(alg, md0, md1, md0), ex_.engine_);
    } catch (const dnnl::error&) {
      return false;
    }
    size_t src1;
    if (same) {
      src1 = in_layout(b, md0);
    } else {
      src1 = new_buffer(out_.buffers[row_major(b)].storage, b);  // the same bytes, rank of A
      out_.buffers[src1].dims = b_dims;
      out_.buffers[src1].md = md1;
    }
    const size_t y = new_activation(static_cast<size_t>(op.outputs[0]), pd.dst_desc());
    primitive_step(dnnl::binary(pd),
                   {{DNNL_ARG_SRC_0, src0}, {DNNL_ARG_SRC_1, src1}, {DNNL_ARG_DST, y}});
    canonical_[static_cast<size_t>(op.outputs[0])] = y;
    return true;
  }

  std::optional<bool> concat(const PlanOp& op) {
    std::vector<memory::desc> srcs;
    std::vector<size_t> buffers;
    for (int v : op.inputs) {
      if (value(static_cast<size_t>(v)).element_count() == 0) return false;
      buffers.push_back(current(static_cast<size_t>(v)));
      srcs.push_back(out_.buffers[buffers.back()].md);
    }
    dnnl::concat::primitive_desc pd;
    try {
      pd = dnnl::concat::primitive_desc(static_cast<int>(op.axis), srcs, ex_.engine_);
    } catch (const dnnl::error&) {
      return false;
    }
    const size_t y = new_activation(static_cast<size_t>(op.outputs[0]), pd.dst_desc());
    std::vector<std::pair<int, size_t>> args;
    for (size_t i = 0; i < buffers.size(); ++i) {
      args.push_back({DNNL_ARG_MULTIPLE_SRC + static_cast<int>(i), buffers[i]});
    }
    args.push_back({DNNL_ARG_DST, y});
    primitive_step(dnnl::concat(pd), std::move(args));
    canonical_[static_cast<size_t>(op.outputs[0])] = y;
    return true;
  }

  std::optional<bool> softmax(const PlanOp& op) {
    const size_t x = static_cast<size_t>(op.inputs[0]);
    if (value(x).dims.empty()) return false;
    dnnl::softmax_forward::primitive_desc pd;
    try {
      pd = dnnl::softmax_forward::primitive_desc(
          dnnl::softmax_forward::desc(prop_kind::forward_inference, plain_md(value(x).dims),
                                      static_cast<int>(op.axis)),
          ex_.engine_);
    } catch (const dnnl::error&) {
      return false;
    }
    const size_t src = row_major(x);
    const size_t y = new_activation(static_cast<size_t>(op.outputs[0]), pd.dst_desc());
    primitive_step(dnnl::softmax_forward(pd), {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, y}});
    canonical_[static_cast<size_t>(op.outputs[0])] = y;
    return true;
  }

  std::optional<bool> lrn(const PlanOp& op) {
    const size_t x = static_cast<size_t>(op.inputs[0]);
    // oneDNN centres an even window differently from ONNX; those go to the reference kernel.
    if (op.size % 2 == 0 || value(x).dims.size() != 4) return false;
    const size_t src = current(x);
    dnnl::lrn_forward::primitive_desc pd;
    try {
      pd = dnnl::lrn_forward::primitive_desc(
          dnnl::lrn_forward::desc(prop_kind::forward_inference, algorithm::lrn_across_channels,
                                  out_.buffers[src].md, op.size, op.alpha, op.beta, op.bias),
          ex_.engine_);
    } catch (const dnnl::error&) {
      return false;
    }
    const size_t y = new_activation(static_cast<size_t>(op.outputs[0]), pd.dst_desc());
    primitive_step(dnnl::lrn_forward(pd), {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, y}});
    canonical_[static_cast<size_t>(op.outputs[0])] = y;
    return true;
  }

  // Copy (Reshape, Flatten, ...): the output is the input's bytes, in place.
  Status copy(const PlanOp& op) {
    const size_t x = static_cast<size_t>(op.inputs.at(0));
    const size_t y = static_cast<size_t>(op.outputs.at(0));
    if (value(x).byte_size() != value(y).byte_size()) {
      return {ErrorCode::kInvalidArgument,
              fmt::format("{}: input and output sizes differ", op.label)};
    }
    // The same shape keeps the layout (Identity, an all-zero Pad); a new one needs row-major.
    const bool same_dims = value(x).dims == value(y).dims;
    const size_t from = same_dims ? current(x) : row_major(x);
    const size_t b = new_buffer(out_.buffers[from].storage, y);
    if (same_dims) {
      out_.buffers[b].md = out_.buffers[from].md;
      out_.buffers[b].plain = out_.buffers[from].plain;
    }
    touch(b);
    canonical_[y] = b;
    return Status::ok();
  }

  Status reference(const PlanOp& op) {
    Step step;
    step.kind = Step::Kind::kReference;
    step.op = &op;
    for (int v : op.inputs) {
      step.inputs.push_back(v < 0 ? SIZE_MAX : row_major(static_cast<size_t>(v)));
    }
    for (const PostOp& p : op.post_ops) {
      if (p.kind == PostOp::Kind::kSum)
        step.sums.push_back(row_major(static_cast<size_t>(p.value)));
    }
    for (int v : op.outputs) {
      const size_t y = new_activation(static_cast<size_t>(v));
      canonical_[static_cast<size_t>(v)] = y;
      step.outputs.push_back(y);
    }
    for (size_t b : step.inputs) {
      if (b != SIZE_MAX) touch(b);
    }
    for (size_t b : step.sums) touch(b);
    for (size_t b : step.outputs) touch(b);
    out_.steps.push_back(std::move(step));
    return Status::ok();
  }

  // First-fit offsets for the arena storages (arena_layout.h).
  void assign_offsets() {
    std::vector<size_t> arena_storages;
    std::vector<ArenaBlock> blocks;
    for (size_t i = 0; i < out_.storages.size(); ++i) {
      const Storage& s = out_.storages[i];
      if (s.kind != Storage::Kind::kArena) continue;
      arena_storages.push_back(i);
      blocks.push_back({.bytes = s.bytes, .first = s.first, .last = s.last});
    }
    out_.arena_bytes = assign_arena_offsets(blocks, kAlign);
    for (size_t b = 0; b < blocks.size(); ++b) {
      out_.storages[arena_storages[b]].offset = blocks[b].offset;
    }
  }

  OneDnnExecutor& ex_;
  const Plan& plan_;
  CompiledPlan& out_;
  int step_ = 0;
  std::vector<size_t> canonical_;  // value -> the buffer that holds it as computed
  std::map<size_t, std::vector<size_t>> converted_;  // value -> buffers in other layouts
};

size_t OneDnnExecutor::weight(const PlanValue& value, const memory::desc& md,
                              const memory::desc& src_md) {
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (entries_[i].name == value.name && entries_[i].md == md) return i;
  }
  WeightEntry entry;
  entry.name = value.name;
  entry.md = md;
  entry.src_md = src_md;
  entry.source = value.data;
  entry.bytes = value.dtype == DataType::kFp32 ? md.get_size() : value.byte_size();
  if (weights_placed_) {
    // Only an fp32 layout can be new here (other dtypes have one); throws dnnl::error, which the
    // plan's build reports.
    auto placed = std::find_if(entries_.begin(), entries_.end(), [&](const WeightEntry& e) {
      return e.name == value.name && !e.md.is_zero();
    });
    if (placed == entries_.end() || md.is_zero()) {
      throw dnnl::error(dnnl_invalid_arguments, ("no placed weights for " + value.name).c_str());
    }
    late_weights_.push_back(aligned_bytes(entry.bytes));
    memory from(placed->md, engine_, const_cast<std::byte*>(placed->data));
    memory to(md, engine_, late_weights_.back().get());
    dnnl::reorder(from, to).execute(stream_, from, to);
    stream_.wait();
    entry.source = {};
    entry.data = late_weights_.back().get();
    usage_.bytes += entry.bytes;
    usage_.private_bytes += entry.bytes;
  }
  entries_.push_back(std::move(entry));
  return entries_.size() - 1;
}

Status OneDnnExecutor::place_weights(WeightStore* store) {
  size_t total = 0;
  // The key names the layout so a worker never maps weights laid out for another model file.
  uint64_t hash = 1469598103934665603ULL;
  auto mix = [&hash](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) hash = (hash ^ p[i]) * 1099511628211ULL;
  };
  for (WeightEntry& entry : entries_) {
    entry.offset = total;
    total += align_up(entry.bytes);
    mix(entry.name.data(), entry.name.size());
    mix(&entry.bytes, sizeof(entry.bytes));
    mix(entry.source.data(), std::min<size_t>(entry.source.size(), 64));
  }
  auto fill = [&](std::span<std::byte> region) -> Status {
    const OmpThreads one(1);
    try {
      for (const WeightEntry& entry : entries_) {
        std::byte* dst = region.data() + entry.offset;
        if (entry.md == entry.src_md || entry.md.is_zero()) {
          std::memcpy(dst, entry.source.data(), entry.source.size());
          continue;
        }
        memory from(entry.src_md, engine_, const_cast<std::byte*>(entry.source.data()));
        memory to(entry.md, engine_, dst);
        dnnl::reorder(from, to).execute(stream_, from, to);
      }
      stream_.wait();
    } catch (const dnnl::error& e) {
      return dnnl_failure("weights", e);
    }
    return Status::ok();
  };
  usage_.bytes = total;
  const std::byte* base = nullptr;
  if (store != nullptr && total > 0) {
    ASSIGN_OR_RETURN(WeightRegion region,
                     store->get_or_create(fmt::format("engine-{:016x}", hash), total, fill));
    base = region.data;
    usage_.private_bytes = region.shared ? 0 : total;
  } else {
    private_weights_.resize(total);
    RETURN_IF_ERROR(fill(private_weights_));
    base = private_weights_.data();
    usage_.private_bytes = total;
  }
  for (WeightEntry& entry : entries_) {
    entry.source = {};
    entry.data = base + entry.offset;
  }
  weights_placed_ = true;
  return Status::ok();
}

std::byte* OneDnnExecutor::address(const CompiledPlan& plan, size_t buffer) const {
  const Storage& s = plan.storages[plan.buffers[buffer].storage];
  switch (s.kind) {
    case Storage::Kind::kArena:
      return arena_.get() + s.offset;
    case Storage::Kind::kWeight:
      // Weights are only read; the region is mapped read-only in a shadow.
      return const_cast<std::byte*>(entries_[s.index].data);
    case Storage::Kind::kInput:
      return const_cast<std::byte*>(run_inputs_[s.index]);
    case Storage::Kind::kOutput:
      return run_outputs_[s.index];
  }
  return nullptr;
}

void OneDnnExecutor::bind(CompiledPlan& plan) {
  if (plan.step_args.empty()) {
    for (const Step& step : plan.steps) {
      auto& args = plan.step_args.emplace_back();
      for (const auto& [arg, buffer] : step.args) {
        auto it = plan.memories.find(buffer);
        if (it == plan.memories.end()) {
          it = plan.memories
                   .emplace(buffer, memory(plan.buffers[buffer].md, engine_, DNNL_MEMORY_NONE))
                   .first;
          const Storage::Kind kind = plan.storages[plan.buffers[buffer].storage].kind;
          if (kind == Storage::Kind::kInput || kind == Storage::Kind::kOutput) {
            plan.io_memories.emplace_back(buffer, it->second);
          }
        }
        args.emplace(arg, it->second);
      }
    }
  }
  for (auto& [buffer, mem] : plan.memories) {
    const Storage::Kind kind = plan.storages[plan.buffers[buffer].storage].kind;
    if (kind == Storage::Kind::kArena || kind == Storage::Kind::kWeight) {
      mem.set_data_handle(address(plan, buffer));
    }
  }
  plan.bound_arena = arena_.get();
}

Result<CompiledPlan*> OneDnnExecutor::build(size_t index, unsigned threads) {
  const OmpThreads scope(threads);
  CompiledPlan& plan = compiled_[{index, threads}];
  Status built = PlanBuilder(*this, plans_[index], plan).build();
  if (!built.is_ok()) {
    compiled_.erase({index, threads});
    return built;
  }
  if (plan.arena_bytes > arena_bytes_) {
    AlignedBytes bigger = aligned_bytes(plan.arena_bytes);
    if (bigger == nullptr) {
      compiled_.erase({index, threads});
      return Status{ErrorCode::kInternal,
                    fmt::format("cannot allocate {} bytes of activations", plan.arena_bytes)};
    }
    arena_ = std::move(bigger);  // plans bound to the old arena rebind before they run
    arena_bytes_ = plan.arena_bytes;
  }
  return &plan;
}

Status OneDnnExecutor::compile(std::span<const Plan> plans, WeightStore* weights,
                               unsigned threads) {
  if (!plans_.empty()) return {ErrorCode::kInvalidArgument, "the executor is compiled already"};
  plans_.assign(plans.begin(), plans.end());
  const unsigned n = threads > 0 ? threads : static_cast<unsigned>(omp_get_max_threads());
  // The largest batch first: its primitives choose the weight layouts the others reuse.
  for (size_t i = plans_.size(); i-- > 0;) RETURN_IF_ERROR(build(i, n).status());
  RETURN_IF_ERROR(place_weights(weights));
  // The constants are in the weights now; their spans must not be used again.
  for (Plan& plan : plans_) {
    for (PlanValue& v : plan.values) v.data = {};
  }
  return Status::ok();
}

void OneDnnExecutor::pin_threads(unsigned threads, const std::vector<unsigned>& cpus) {
  if (threads == pinned_threads_ && cpus == pinned_cpus_) return;
  if (!cpus.empty()) {
#pragma omp parallel num_threads(static_cast <int>(threads))
    {
      // Thread 0 is the caller, already on cpus[0].
      const auto t = static_cast<size_t>(omp_get_thread_num());
      if (t != 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpus[t % cpus.size()], &set);
        sched_setaffinity(0, sizeof(set), &set);
      }
    }
  }
  pinned_threads_ = threads;
  pinned_cpus_ = cpus;
}

Status OneDnnExecutor::run(size_t index, std::span<const std::byte* const> inputs,
                           std::span<std::byte* const> outputs, ComputeContext& ctx) {
  return execute(index, inputs, outputs, ctx, nullptr);
}

Result<std::vector<Executor::OpTiming>> OneDnnExecutor::profile_run(
    size_t index, std::span<const std::byte* const> inputs, std::span<std::byte* const> outputs,
    ComputeContext& ctx) {
  std::vector<OpTiming> timings;
  RETURN_IF_ERROR(execute(index, inputs, outputs, ctx, &timings));
  return timings;
}

Status OneDnnExecutor::execute(size_t index, std::span<const std::byte* const> inputs,
                               std::span<std::byte* const> outputs, ComputeContext& ctx,
                               std::vector<OpTiming>* timings) {
  if (index >= plans_.size()) {
    return {ErrorCode::kInvalidArgument, fmt::format("no plan {}", index)};
  }
  if (inputs.size() != plans_[index].inputs.size() ||
      outputs.size() != plans_[index].outputs.size()) {
    return {ErrorCode::kInvalidArgument, "wrong number of inputs or outputs"};
  }
  const unsigned threads = std::max(1U, ctx.concurrency());
  auto found = compiled_.find({index, threads});
  CompiledPlan* built = found != compiled_.end() ? &found->second : nullptr;
  if (built == nullptr) {
    auto made = build(index, threads);
    if (!made.is_ok()) return made.status().with_context(fmt::format("{} threads", threads));
    built = *made;
  }
  CompiledPlan& plan = *built;
  pin_threads(threads, ctx.host_cpus());
  omp_set_num_threads(static_cast<int>(threads));
  run_inputs_.assign(inputs.begin(), inputs.end());
  run_outputs_.assign(outputs.begin(), outputs.end());
  try {
    if (plan.bound_arena != arena_.get()) bind(plan);
    for (auto& [buffer, mem] : plan.io_memories) mem.set_data_handle(address(plan, buffer));
    for (size_t i = 0; i < plan.steps.size(); ++i) {
      const Step& step = plan.steps[i];
      const auto step_start = timings != nullptr ? std::chrono::steady_clock::now()
                                                 : std::chrono::steady_clock::time_point{};
      switch (step.kind) {
        case Step::Kind::kPrimitive:
          step.primitive.execute(stream_, plan.step_args[i]);
          break;
        case Step::Kind::kCopy: {
          const Storage& s = plan.storages[plan.buffers[step.to].storage];
          std::memmove(address(plan, step.to), address(plan, step.from), s.bytes);
          break;
        }
        case Step::Kind::kReference: {
          auto ref = [&](size_t b) {
            const Buffer& buf = plan.buffers[b];
            return TensorRef{buf.dtype, buf.dims, address(plan, b)};
          };
          std::vector<TensorRef> ins, sums;
          std::vector<MutableTensorRef> outs;
          for (size_t b : step.inputs) {
            ins.push_back(b == SIZE_MAX ? TensorRef{DataType::kInvalid, {}, nullptr} : ref(b));
          }
          for (size_t b : step.sums) sums.push_back(ref(b));
          for (size_t b : step.outputs) {
            const Buffer& buf = plan.buffers[b];
            outs.push_back(MutableTensorRef{buf.dtype, buf.dims, address(plan, b)});
          }
          RETURN_IF_ERROR(run_reference_op(*step.op, ins, outs, sums));
          break;
        }
      }
      if (timings != nullptr && step.plan_op != SIZE_MAX) {
        stream_.wait();
        const double ms = std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - step_start)
                              .count();
        const std::string& label = plans_[index].ops[step.plan_op].label;
        // An op's steps are consecutive: one timing per op.
        if (!timings->empty() && i > 0 && plan.steps[i - 1].plan_op == step.plan_op) {
          timings->back().ms += ms;
        } else {
          timings->push_back({label, ms});
        }
      }
    }
    stream_.wait();
  } catch (const dnnl::error& e) {
    return {ErrorCode::kModelError, fmt::format("oneDNN: {}", e.what())};
  }
  return Status::ok();
}

}  // namespace

std::unique_ptr<Executor> create_cpu_executor() { return std::make_unique<OneDnnExecutor>(); }

}  // namespace sliceserve::backends
