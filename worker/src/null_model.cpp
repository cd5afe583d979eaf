#include "null_model.h"

#include <algorithm>
#include <cstring>

#include "batch_io.h"

namespace sliceserve::worker {
namespace {

class NullModel final : public Model {
 public:
  explicit NullModel(const shm::ModelSpec& spec) : spec_(spec) {}

  const shm::ModelSpec& spec() const override { return spec_; }

  Status warm_up(backends::ComputeContext& ctx) override {
    ZeroItem zeros(spec_);
    const ItemIO item = zeros.item();
    return run({&item, 1}, ctx);
  }

  Status run(std::span<const ItemIO> batch, backends::ComputeContext& /*ctx*/) override {
    RETURN_IF_ERROR(check_batch(batch, spec_));
    for (const ItemIO& item : batch) {
      for (uint32_t j = 0; j < spec_.n_outputs; ++j) {
        const size_t out_bytes = spec_.outputs[j].byte_size();
        size_t copied = 0;
        if (j == 0 && spec_.n_inputs > 0) {
          copied = std::min(out_bytes, spec_.inputs[0].byte_size());
          std::memcpy(item.outputs[0], item.inputs[0], copied);
        }
        std::memset(item.outputs[j] + copied, 0, out_bytes - copied);
      }
    }
    return Status::ok();
  }

 private:
  shm::ModelSpec spec_;
};

}  // namespace

Result<std::unique_ptr<Model>> create_null_model(const shm::ModelSpec& spec) {
  return std::unique_ptr<Model>(std::make_unique<NullModel>(spec));
}

}  // namespace sliceserve::worker
