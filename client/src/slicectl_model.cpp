// slicectl run-model and infer: .npy files through a model.
//
// run-model FILE.onnx loads the model into the engine on this machine (no daemon) and runs it
// on a cpu slice of --threads cores, --runs times (default once). With --device cuda:N the
// engine's executor is the CUDA one on device N; the slice is then a host slice of one thread
// (unless --threads says otherwise), and the executor launches on a stream of its own. The inputs' shapes come from the .npy files: every
// dimension the model leaves open (a batch dimension, -1 in the graph) is fixed to the file's,
// the others must match, and the engine builds one plan at exactly those shapes (max_batch 0),
// so a file of 16 images runs as one batch of 16 without plans for batches 1..15.
//
// infer MODEL sends the files to a running sliceserved through the client library. A model
// declares per-item shapes there: a file of exactly the item shape is one request, written back
// with the item shape; a file with a leading dimension of N items is N requests, all submitted
// before the first answer is awaited, whose outputs are stacked into files with that leading N.
//
// Both print one summary line on stderr. Exit codes: 0, 1 (the model failed to load or run, the
// server failed, an output could not be written), 2 (usage, a missing or malformed input file,
// a shape or dtype the model does not take).

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "slicectl.h"
#include "sliceserve/backends/cpu/cpu_slice.h"
#include "sliceserve/backends/cpu/cpu_topology.h"
#include "sliceserve/client/client.h"
#include "sliceserve/client/npy.h"
#include "sliceserve/worker/engine/engine.h"
#include "sliceserve/worker/engine/onnx_loader.h"

namespace sliceserve::slicectl {
namespace {

using client::NpyArray;
using shm::DataType;
using Clock = std::chrono::steady_clock;

int fail(int code, std::string_view message) {
  fmt::print(stderr, "slicectl: {}\n", message);
  return code;
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// [1,3,224,224]; an open dimension is '?'.
std::string dims_text(std::span<const int64_t> shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ",";
    out += shape[i] < 0 ? "?" : std::to_string(shape[i]);
  }
  return out + "]";
}

// "FP32 [1,3,224,224]"
std::string type_text(DataType dtype, std::span<const int64_t> shape) {
  return fmt::format("{} {}", shm::data_type_name(dtype), dims_text(shape));
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "'" : ", '") + n + "'";
  return out.empty() ? "none" : out;
}

// The file for each of `names` ("" where none is given): NAME=FILE pairs by name, then the
// plain files for the tensors left, in order. `what` is "input" or "output".
Result<std::vector<std::string>> bind_files(const std::vector<std::string>& names,
                                            const std::vector<std::string>& files,
                                            const std::vector<std::string>& pairs,
                                            std::string_view what) {
  std::vector<std::string> bound(names.size());
  for (const std::string& pair : pairs) {
    const size_t eq = pair.find('=');
    if (eq == 0 || eq == std::string::npos || eq + 1 == pair.size()) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("--{}-name expects NAME=FILE, got '{}'", what, pair));
    }
    const std::string name = pair.substr(0, eq);
    const auto it = std::find(names.begin(), names.end(), name);
    if (it == names.end()) {
      return Status(
          ErrorCode::kInvalidArgument,
          fmt::format("the model has no {} '{}' (its {}s: {})", what, name, what, join(names)));
    }
    std::string& slot = bound[static_cast<size_t>(it - names.begin())];
    if (!slot.empty()) {
      return Status(ErrorCode::kInvalidArgument, fmt::format("{} '{}' is given twice", what, name));
    }
    slot = pair.substr(eq + 1);
  }
  size_t next = 0;
  for (const std::string& file : files) {
    while (next < bound.size() && !bound[next].empty()) ++next;
    if (next == bound.size()) {
      return Status(
          ErrorCode::kInvalidArgument,
          fmt::format("{} {} files for a model with {} {}{} ({})", files.size() + pairs.size(),
                      what, names.size(), what, names.size() == 1 ? "" : "s", join(names)));
    }
    bound[next++] = file;
  }
  return bound;
}

// Reads every bound input file; every input needs one.
Result<std::vector<NpyArray>> read_inputs(const std::vector<std::string>& names,
                                          const std::vector<std::string>& files) {
  std::vector<NpyArray> arrays;
  for (size_t i = 0; i < names.size(); ++i) {
    if (files[i].empty()) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("input '{}' has no file: give --input FILE or --input-name {}=FILE "
                                "(the model's inputs: {})",
                                names[i], names[i], join(names)));
    }
    ASSIGN_OR_RETURN(NpyArray array, client::read_npy(files[i]));
    arrays.push_back(std::move(array));
  }
  return arrays;
}

// The command line's files bound to the model's tensors: the inputs read, the output paths ("" for
// an output not asked for; at least one is).
struct BoundFiles {
  std::vector<NpyArray> inputs;
  std::vector<std::string> outputs;
};

Result<BoundFiles> bind_and_read(const std::vector<std::string>& input_names,
                                 const std::vector<std::string>& output_names,
                                 const TensorFiles& files) {
  ASSIGN_OR_RETURN(std::vector<std::string> input_files,
                   bind_files(input_names, files.inputs, files.named_inputs, "input"));
  BoundFiles bound;
  ASSIGN_OR_RETURN(bound.outputs,
                   bind_files(output_names, files.outputs, files.named_outputs, "output"));
  if (std::all_of(bound.outputs.begin(), bound.outputs.end(),
                  [](const std::string& f) { return f.empty(); })) {
    return Status(ErrorCode::kInvalidArgument, "give --output FILE (or --output-name NAME=FILE)");
  }
  ASSIGN_OR_RETURN(bound.inputs, read_inputs(input_names, input_files));
  return bound;
}

// ---- run-model ----

// The process's cpus, or an error.
Result<unsigned> machine_cpus() {
  ASSIGN_OR_RETURN(std::vector<unsigned> cpus, backends::process_cpus());
  if (cpus.empty()) return Status(ErrorCode::kUnavailable, "this process may run on no cpu");
  return static_cast<unsigned>(cpus.size());
}

// Checks `array` against the graph input `info` and fixes the input's open dimensions to it.
Status fit_input(worker::engine::ValueInfo& info, const NpyArray& array) {
  const bool dtype_ok = info.dtype == DataType::kInvalid || info.dtype == array.dtype;
  bool shape_ok = !info.has_shape || info.shape.size() == array.shape.size();
  for (size_t d = 0; shape_ok && info.has_shape && d < info.shape.size(); ++d) {
    shape_ok = info.shape[d] < 0 || info.shape[d] == array.shape[d];
  }
  if (!dtype_ok || !shape_ok) {
    const DataType expected = info.dtype == DataType::kInvalid ? array.dtype : info.dtype;
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("input '{}': expected {}, got {}", info.name,
                              info.has_shape ? type_text(expected, info.shape)
                                             : std::string(shm::data_type_name(expected)),
                              type_text(array.dtype, array.shape)));
  }
  info.dtype = array.dtype;
  info.shape = array.shape;
  info.has_shape = true;
  return Status::ok();
}

}  // namespace

int run_model(const RunModelOptions& o) {
  Clock::time_point load_start = Clock::now();
  auto graph = worker::engine::load_onnx_file(o.model_path);
  double load_ms = ms_since(load_start);  // parsing, then building the engine (not the .npy)
  if (!graph.is_ok()) {
    return fail(graph.status().code() == ErrorCode::kNotFound ? kExitBadInput : kExitFailure,
                graph.status().message());
  }
  std::vector<std::string> input_names;
  std::vector<std::string> output_names;
  for (const auto& info : graph->inputs) input_names.push_back(info.name);
  for (const auto& info : graph->outputs) output_names.push_back(info.name);
  auto bound = bind_and_read(input_names, output_names, o.files);
  if (!bound.is_ok()) return fail(kExitBadInput, bound.status().message());
  const std::vector<NpyArray>& inputs = bound->inputs;
  const std::vector<std::string>& output_files = bound->outputs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Status fits = fit_input(graph->inputs[i], inputs[i]);
    if (!fits.is_ok()) return fail(kExitBadInput, fits.message());
  }

  auto cores = machine_cpus();
  if (!cores.is_ok()) return fail(kExitFailure, cores.status().message());
  const bool host_device = o.device == "cpu";
  const unsigned threads = o.threads != 0 ? o.threads : host_device ? *cores : 1;
  if (threads > *cores) {
    return fail(kExitBadInput,
                fmt::format("--threads {}: this process may run on {} cpus", threads, *cores));
  }

  worker::engine::EngineOptions engine_options;
  engine_options.max_batch = 0;  // one plan, at the shapes the inputs were fixed to
  engine_options.threads = threads;
  engine_options.device = o.device;
  load_start = Clock::now();
  auto engine = worker::engine::Engine::load_graph(std::move(graph).value(), engine_options);
  if (!engine.is_ok()) {
    return fail(kExitFailure,
                engine.status()
                    .with_context(fmt::format("model '{}' on {}", o.model_path, o.device))
                    .message());
  }
  worker::engine::Engine& e = **engine;
  load_ms += ms_since(load_start);
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (e.input_shape(i, 0) != inputs[i].shape) {
      return fail(kExitFailure,
                  fmt::format("input '{}': the engine built {}, not {}", input_names[i],
                              dims_text(e.input_shape(i, 0)), dims_text(inputs[i].shape)));
    }
  }

  backends::CpuSliceOptions slice_options;
  slice_options.percent = 100.0 * threads / *cores;
  auto slice = backends::create_cpu_slice(slice_options);
  if (!slice.is_ok()) return fail(kExitFailure, slice.status().message());

  std::vector<NpyArray> outputs(e.outputs().size());
  std::vector<const std::byte*> input_ptrs;
  std::vector<std::byte*> output_ptrs;
  for (const NpyArray& in : inputs) input_ptrs.push_back(in.data.data());
  for (size_t i = 0; i < outputs.size(); ++i) {
    outputs[i].dtype = e.outputs()[i].dtype;
    outputs[i].shape = e.output_shape(i, 0);
    outputs[i].data.resize(static_cast<size_t>(outputs[i].element_count()) *
                           shm::data_type_size(outputs[i].dtype));
    output_ptrs.push_back(outputs[i].data.data());
  }
  double first_ms = 0;
  double best_ms = 0;
  for (unsigned r = 0; r < std::max(1u, o.runs); ++r) {
    const Clock::time_point run_start = Clock::now();
    (*slice)->begin_batch();
    Status ran = e.run(0, input_ptrs, output_ptrs, **slice);
    (*slice)->end_batch();
    const double run_ms = ms_since(run_start);
    if (!ran.is_ok()) {
      return fail(kExitFailure,
                  ran.with_context(fmt::format("model '{}' on {}", o.model_path, o.device))
                      .message());
    }
    if (r == 0) first_ms = run_ms;
    best_ms = r == 0 ? run_ms : std::min(best_ms, run_ms);
  }

  std::string written;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (output_files[i].empty()) continue;
    Status wrote = client::write_npy(output_files[i], outputs[i]);
    if (!wrote.is_ok()) return fail(kExitFailure, wrote.message());
    written += fmt::format("{}{} {}", written.empty() ? "" : ", ", output_names[i],
                           type_text(outputs[i].dtype, outputs[i].shape));
  }
  std::string read;
  for (size_t i = 0; i < inputs.size(); ++i) {
    read += fmt::format("{}{} {}", read.empty() ? "" : ", ", input_names[i],
                        type_text(inputs[i].dtype, inputs[i].shape));
  }
  const std::string timing =
      o.runs > 1 ? fmt::format("first run {:.1f} ms, fastest of {} {:.3f} ms", first_ms, o.runs,
                               best_ms)
                 : fmt::format("run {:.1f} ms", first_ms);
  fmt::print(stderr, "run-model {}: {} -> {}; load {:.1f} ms, {}, {}, {} thread{}\n",
             o.model_path, read.empty() ? "no inputs" : read, written, load_ms, timing, o.device,
             threads, threads == 1 ? "" : "s");
  return kExitOk;
}

// ---- infer ----

namespace {

bool is_input_error(ErrorCode code) {
  return code == ErrorCode::kWrongShape || code == ErrorCode::kWrongDtype ||
         code == ErrorCode::kUnknownTensor || code == ErrorCode::kTensorTooLarge ||
         code == ErrorCode::kInvalidArgument;
}

// How many items the files hold: nullopt when each is exactly one item, N when each stacks N
// items along a leading dimension. kInvalidArgument naming an input that is neither, or inputs
// that disagree.
Result<std::optional<int64_t>> count_items(const shm::ModelSpec& spec,
                                           const std::vector<NpyArray>& arrays) {
  std::optional<int64_t> items;
  auto describe = [](std::optional<int64_t> k) {
    return k ? fmt::format("{} items", *k) : std::string("one item");
  };
  for (size_t i = 0; i < arrays.size(); ++i) {
    const shm::TensorSpec& t = spec.inputs[i];
    const NpyArray& a = arrays[i];
    const std::span<const int64_t> item = t.shape();
    const bool single = std::equal(a.shape.begin(), a.shape.end(), item.begin(), item.end());
    const bool many = a.shape.size() == item.size() + 1 &&
                      std::equal(a.shape.begin() + 1, a.shape.end(), item.begin(), item.end());
    if (a.dtype != t.dtype || (!single && !many)) {
      std::vector<int64_t> stacked = {-1};
      stacked.insert(stacked.end(), item.begin(), item.end());
      return Status(
          ErrorCode::kInvalidArgument,
          fmt::format("input '{}': expected {} (or N items: {}), got {}", t.name_view(),
                      type_text(t.dtype, item), dims_text(stacked), type_text(a.dtype, a.shape)));
    }
    const std::optional<int64_t> n = single ? std::nullopt : std::optional(a.shape[0]);
    if (i > 0 && n != items) {
      return Status(
          ErrorCode::kInvalidArgument,
          fmt::format("inputs disagree: '{}' holds {}, '{}' {}", spec.inputs[0].name_view(),
                      describe(items), t.name_view(), describe(n)));
    }
    items = n;
  }
  return items;
}

}  // namespace

int run_infer(const std::string& instance, const InferOptions& o) {
  const std::chrono::milliseconds timeout(o.timeout_ms);
  client::ConnectOptions connect;
  connect.instance = instance;
  connect.default_timeout = timeout;
  connect.spin = std::chrono::microseconds(0);
  auto cl = connect_over(o.model, o.transport, connect);
  if (!cl.is_ok()) return fail(kExitFailure, cl.status().message());
  const shm::ModelSpec& spec = cl->spec();
  std::vector<std::string> input_names;
  std::vector<std::string> output_names;
  for (const auto& t : spec.input_specs()) input_names.emplace_back(t.name_view());
  for (const auto& t : spec.output_specs()) output_names.emplace_back(t.name_view());
  auto bound = bind_and_read(input_names, output_names, o.files);
  if (!bound.is_ok()) return fail(kExitBadInput, bound.status().message());
  const std::vector<NpyArray>& inputs = bound->inputs;
  const std::vector<std::string>& output_files = bound->outputs;
  auto counted = count_items(spec, inputs);
  if (!counted.is_ok()) return fail(kExitBadInput, counted.status().message());
  const bool stacked = counted->has_value();
  const size_t items = stacked ? static_cast<size_t>(**counted) : 1;

  // Every request is submitted before the first answer is awaited (infer_async waits for a free
  // slot when all of this client's are taken).
  const Clock::time_point start = Clock::now();
  std::vector<std::future<Result<client::InferResult>>> pending;
  pending.reserve(items);
  for (size_t k = 0; k < items; ++k) {
    std::vector<client::Tensor> tensors;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const shm::TensorSpec& t = spec.inputs[i];
      const size_t bytes = t.byte_size();
      tensors.push_back({input_names[i],
                         t.dtype,
                         {t.shape().begin(), t.shape().end()},
                         std::span<const std::byte>(inputs[i].data).subspan(k * bytes, bytes)});
    }
    pending.push_back(cl->infer_async(std::move(tensors), timeout));
  }

  std::vector<NpyArray> outputs(output_names.size());
  for (size_t j = 0; j < outputs.size(); ++j) {
    const shm::TensorSpec& t = spec.outputs[j];
    outputs[j].dtype = t.dtype;
    if (stacked) outputs[j].shape.push_back(static_cast<int64_t>(items));
    outputs[j].shape.insert(outputs[j].shape.end(), t.shape().begin(), t.shape().end());
    outputs[j].data.resize(items * t.byte_size());
  }
  Status first_error;
  size_t failed = 0;
  size_t failed_item = 0;
  for (size_t k = 0; k < items; ++k) {
    Result<client::InferResult> r = pending[k].get();
    if (r.is_ok() && r->outputs.size() != outputs.size()) {
      r = Status(ErrorCode::kInternal, fmt::format("{} outputs in the answer, the model has {}",
                                                   r->outputs.size(), outputs.size()));
    }
    for (size_t j = 0; r.is_ok() && j < outputs.size(); ++j) {
      const size_t bytes = spec.outputs[j].byte_size();
      if (r->outputs[j].data.size() != bytes) {
        r = Status(ErrorCode::kInternal,
                   fmt::format("output '{}' came back with {} bytes, not {}", output_names[j],
                               r->outputs[j].data.size(), bytes));
        break;
      }
      std::memcpy(outputs[j].data.data() + k * bytes, r->outputs[j].data.data(), bytes);
    }
    if (!r.is_ok() && failed++ == 0) {
      first_error = r.status();
      failed_item = k;
    }
  }
  const double total_ms = ms_since(start);
  if (failed > 0) {
    const std::string where =
        stacked ? fmt::format("item {} ({} of {} failed)", failed_item, failed, items)
                : std::string("request");
    return fail(is_input_error(first_error.code()) ? kExitBadInput : kExitFailure,
                fmt::format("{}: {}: {}", o.model, where, first_error.to_string()));
  }

  std::string written;
  for (size_t j = 0; j < outputs.size(); ++j) {
    if (output_files[j].empty()) continue;
    Status wrote = client::write_npy(output_files[j], outputs[j]);
    if (!wrote.is_ok()) return fail(kExitFailure, wrote.message());
    written += fmt::format("{}{} {}", written.empty() ? "" : ", ", output_names[j],
                           type_text(outputs[j].dtype, outputs[j].shape));
  }
  fmt::print(stderr, "infer {}: {} request{} -> {}; {:.1f} ms\n", o.model, items,
             items == 1 ? "" : "s", written, total_ms);
  return kExitOk;
}

}  // namespace sliceserve::slicectl
