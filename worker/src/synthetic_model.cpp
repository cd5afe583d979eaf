#include "synthetic_model.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "batch_io.h"
#include "tensor_elements.h"

namespace sliceserve::worker {
namespace {

constexpr uint32_t kMaxWorkingSetKb = 1u << 20;  // 1 GiB
constexpr double kMaxFlopsPerItem = 1e15;
constexpr uint32_t kMaxWeightsMb = 1u << 16;  // 64 GiB
constexpr uint32_t kMaxLoadDelayMs = 600'000;
constexpr size_t kMiB = size_t{1} << 20;
constexpr float kScale = 0.5f;  // x <- kScale * x + kOffset keeps x in [0.5, 1] from [0, 1]
constexpr float kOffset = 0.5f;

// Each compute thread's working set, allocated the first time the thread computes (at warm-up)
// and reused by every later batch; shared by the models of a process (its contents are scratch).
thread_local std::vector<float> tl_working_set;
// Where each part's checksum goes, so that the loop has an observable effect.
thread_local volatile float tl_sink = 0;
// Where each compute thread goes on reading the weights.
thread_local size_t tl_weight_cursor = 0;

float* working_set(size_t floats) {
  if (tl_working_set.size() < floats) {
    const size_t old = tl_working_set.size();
    tl_working_set.resize(floats);
    for (size_t i = old; i < floats; ++i) tl_working_set[i] = float(i % 1024) / 1024.0f;
  }
  return tl_working_set.data();
}

// Spends `elements` FMA updates (2 flops each) over a working set of `floats` floats; returns a
// checksum that always lies in [0, 2] (each x stays in [0, 1]). With weights (all in [0, 1]) the
// offset of each update is kOffset * w[j], j walking on through the weights from where this
// thread's previous call stopped.
float burn(size_t elements, size_t floats, std::span<const float> weights) {
  float* x = working_set(floats);
  while (elements > 0) {
    const size_t count = std::min(elements, floats);
    if (weights.empty()) {
      for (size_t i = 0; i < count; ++i) x[i] = kScale * x[i] + kOffset;  // vectorisable
    } else {
      size_t& at = tl_weight_cursor;
      for (size_t i = 0; i < count;) {
        if (at >= weights.size()) at = 0;
        const size_t len = std::min(count - i, weights.size() - at);
        float* xs = x + i;
        const float* ws = weights.data() + at;
        for (size_t k = 0; k < len; ++k) xs[k] = kScale * xs[k] + kOffset * ws[k];
        i += len;
        at += len;
      }
    }
    elements -= count;
  }
  const float checksum = x[0] + x[floats - 1];
  tl_sink = checksum;
  return checksum;
}

void fill_weights(std::span<float> weights) {
  for (size_t j = 0; j < weights.size(); ++j) weights[j] = synthetic_weight(j);
}

// Sleeps ms milliseconds in short steps; false if `stop` turned true first.
bool load_delay(uint32_t ms, const std::atomic<bool>* stop) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  for (;;) {
    if (stop != nullptr && stop->load(std::memory_order_relaxed)) return false;
    const auto now = std::chrono::steady_clock::now();
    if (now >= end) return true;
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(end - now, std::chrono::milliseconds(10)));
  }
}

class SyntheticModel final : public Model {
 public:
  SyntheticModel(const ModelOptions& options, const shm::ModelSpec& spec)
      : spec_(spec),
        flops_per_item_(options.flops_per_item),
        working_set_floats_(size_t{options.working_set_kb} * 1024 / sizeof(float)) {}

  // Loads weights_mb MiB of weights: mapped from (or published into) the store, else private.
  Status load_weights(uint32_t weights_mb, backends::WeightStore* store) {
    if (weights_mb == 0) return Status::ok();
    const size_t bytes = size_t{weights_mb} * kMiB;
    if (store == nullptr) {
      private_weights_.resize(bytes / sizeof(float));
      fill_weights(private_weights_);
      weights_ = private_weights_;
      usage_ = {bytes, bytes};
      return Status::ok();
    }
    ASSIGN_OR_RETURN(
        backends::WeightRegion region,
        store->get_or_create("synthetic", bytes, [](std::span<std::byte> out) {
          // The region's data is page-aligned.
          fill_weights({reinterpret_cast<float*>(out.data()), out.size() / sizeof(float)});
          return Status::ok();
        }));
    weights_ = {reinterpret_cast<const float*>(region.data), region.bytes / sizeof(float)};
    usage_ = {region.bytes, region.shared ? 0 : region.bytes};
    return Status::ok();
  }

  const shm::ModelSpec& spec() const override { return spec_; }
  WeightUsage weights() const override { return usage_; }

  Status warm_up(backends::ComputeContext& ctx) override {
    // One item split into concurrency() parts gives every compute thread a part, so each one
    // allocates its working set now rather than during the first real batch.
    ZeroItem zeros(spec_);
    const ItemIO item = zeros.item();
    return run({&item, 1}, ctx);
  }

  Status run(std::span<const ItemIO> batch, backends::ComputeContext& ctx) override {
    RETURN_IF_ERROR(check_batch(batch, spec_));
    const size_t parts = std::max(1u, ctx.concurrency());
    const double flops_per_part = flops_per_item_ / double(parts);
    const size_t elements_per_part = size_t(std::llround(flops_per_part / 2.0));
    ctx.parallel_for(batch.size() * parts, [&](size_t begin, size_t end) {
      for (size_t unit = begin; unit < end; ++unit) {
        const float checksum = burn(elements_per_part, working_set_floats_, weights_);
        if (unit % parts == 0) write_outputs(batch[unit / parts], checksum);
      }
    });
    return Status::ok();
  }

 private:
  void write_outputs(const ItemIO& item, float checksum) const {
    const shm::TensorSpec& input = spec_.inputs[0];
    const size_t n_in = input.element_count();
    // The checksum is never NaN (see burn), so this never changes the value, but the compiler
    // cannot know that: the arithmetic stays live.
    const bool impossible = std::isnan(checksum);
    for (uint32_t j = 0; j < spec_.n_outputs; ++j) {
      const shm::TensorSpec& output = spec_.outputs[j];
      const size_t n_out = output.element_count();
      for (size_t k = 0; k < n_out; ++k) {
        double value = 2.0 * load_element(input.dtype, item.inputs[0], k % n_in) + 1.0;
        if (impossible) value = double(checksum);
        store_element(output.dtype, item.outputs[j], k, value);
      }
    }
  }

  shm::ModelSpec spec_;
  double flops_per_item_;
  size_t working_set_floats_;
  std::vector<float> private_weights_;  // without a store
  std::span<const float> weights_;      // empty: no weights
  WeightUsage usage_;
};

}  // namespace

Result<std::unique_ptr<Model>> create_synthetic_model(const ModelOptions& options,
                                                      const shm::ModelSpec& spec,
                                                      backends::WeightStore* weights) {
  if (spec.n_inputs < 1 || spec.n_outputs < 1) {
    return Status(ErrorCode::kInvalidArgument,
                  "the synthetic model needs at least one input and one output");
  }
  if (!(options.flops_per_item >= 0.0 && options.flops_per_item <= kMaxFlopsPerItem)) {
    return Status(ErrorCode::kInvalidArgument,
                  "synthetic flops_per_item must be in [0, 1e15], got " +
                      std::to_string(options.flops_per_item));
  }
  if (options.working_set_kb < 1 || options.working_set_kb > kMaxWorkingSetKb) {
    return Status(ErrorCode::kInvalidArgument, "synthetic working_set_kb must be in [1, " +
                                                   std::to_string(kMaxWorkingSetKb) + "], got " +
                                                   std::to_string(options.working_set_kb));
  }
  if (options.weights_mb > kMaxWeightsMb) {
    return Status(ErrorCode::kInvalidArgument, "synthetic weights_mb must be at most " +
                                                   std::to_string(kMaxWeightsMb) + ", got " +
                                                   std::to_string(options.weights_mb));
  }
  if (options.load_delay_ms > kMaxLoadDelayMs) {
    return Status(ErrorCode::kInvalidArgument, "synthetic load_delay_ms must be at most " +
                                                   std::to_string(kMaxLoadDelayMs) + ", got " +
                                                   std::to_string(options.load_delay_ms));
  }
  auto model = std::make_unique<SyntheticModel>(options, spec);
  RETURN_IF_ERROR(model->load_weights(options.weights_mb, weights));
  if (!load_delay(options.load_delay_ms, options.stop)) {
    return Status(ErrorCode::kUnavailable, "model load stopped");
  }
  return std::unique_ptr<Model>(std::move(model));
}

float synthetic_weight(size_t j) {
  // splitmix64's finaliser: a fixed, well-mixed pattern; the top 24 bits map exactly onto
  // floats in [0, 1].
  uint64_t z = uint64_t(j) + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return float(z >> 40) * (1.0f / 16777215.0f);
}

}  // namespace sliceserve::worker
