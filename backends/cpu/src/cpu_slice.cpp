#include "sliceserve/backends/cpu/cpu_slice.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "pinned_pool.h"
#include "sliceserve/backends/cpu/cpu_topology.h"
#include "sliceserve/backends/cpu/duty_cycle_throttle.h"

namespace sliceserve::backends {
namespace {

constexpr double kWholeCoreSlack = 1e-9;  // 33.3333...% of 3 cores is one core, not two

Status check_percent(double percent) {
  if (!(percent > 0.0 && percent <= 100.0)) {  // also rejects NaN
    return Status(ErrorCode::kInvalidArgument,
                  "cpu slice percent must be in (0, 100], got " + std::to_string(percent));
  }
  return Status::ok();
}

std::string format_percent(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4g%%", value);
  return text;
}

class CpuSlice final : public Slice {
 public:
  CpuSlice(CpuSliceOptions options, std::vector<unsigned> machine, CpuSharePlan plan,
           std::unique_ptr<PinnedPool> pool)
      : options_(std::move(options)),
        machine_(std::move(machine)),
        plan_(plan),
        pool_(std::move(pool)),
        throttle_(plan.duty) {}

  unsigned concurrency() const override { return pool_->size(); }

  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) override {
    pool_->run(n, fn);
  }

  SliceInfo info() const override {
    SliceInfo info;
    info.backend = "cpu";
    info.mode = options_.mode;
    info.percent = options_.percent;
    info.threads = pool_->size();
    info.placement = "cores " + format_cpu_list(pool_->cpus()) + ", " +
                     (throttle_.active() ? "quota " + format_percent(100.0 * plan_.duty)
                                         : std::string("no quota"));
    return info;
  }

  void begin_batch() override {
    if (throttle_.active()) throttle_.begin(DutyCycleThrottle::Clock::now());
  }

  void end_batch() override {
    if (!throttle_.active()) return;
    const DutyCycleThrottle::Duration sleep = throttle_.end(DutyCycleThrottle::Clock::now());
    if (sleep > DutyCycleThrottle::Duration::zero()) std::this_thread::sleep_for(sleep);
  }

  Status resize(double percent) override {
    if (options_.mode != "affinity") {
      return Status(ErrorCode::kUnavailable,
                    "cpu mode=" + options_.mode + " changes its share by shadow resize");
    }
    ASSIGN_OR_RETURN(CpuSharePlan plan, plan_cpu_share(percent, options_.machine_cores));
    RETURN_IF_ERROR(pool_->repin(
        pick_cpus(machine_, options_.machine_cores, options_.first_core, plan.threads)));
    options_.percent = percent;
    plan_ = plan;
    throttle_.set_duty(plan.duty);
    return Status::ok();
  }

  // Thread i runs on logical core (first_core + i) mod machine_cores, i.e. on the cpu at that
  // position of the process's cpu list (modulo its length when machine_cores is simulated).
  static std::vector<unsigned> pick_cpus(const std::vector<unsigned>& machine,
                                         unsigned machine_cores, unsigned first_core,
                                         unsigned threads) {
    std::vector<unsigned> cpus;
    for (unsigned i = 0; i < threads; ++i) {
      cpus.push_back(machine[((first_core + i) % machine_cores) % machine.size()]);
    }
    return cpus;
  }

 private:
  CpuSliceOptions options_;
  std::vector<unsigned> machine_;  // cpus this process may run on, ascending
  CpuSharePlan plan_;
  std::unique_ptr<PinnedPool> pool_;
  DutyCycleThrottle throttle_;
};

}  // namespace

Result<CpuSharePlan> plan_cpu_share(double percent, unsigned machine_cores) {
  RETURN_IF_ERROR(check_percent(percent));
  if (machine_cores == 0) {
    return Status(ErrorCode::kInvalidArgument, "cpu slice needs a machine with cores");
  }
  CpuSharePlan plan;
  plan.share_cores = percent / 100.0 * machine_cores;
  plan.threads = std::max(1u, unsigned(std::ceil(plan.share_cores - kWholeCoreSlack)));
  plan.duty = plan.share_cores / plan.threads;
  if (plan.duty >= 1.0 - kWholeCoreSlack) plan.duty = 1.0;
  return plan;
}

Result<std::unique_ptr<Slice>> create_cpu_slice(const CpuSliceOptions& options) {
  RETURN_IF_ERROR(check_percent(options.percent));
  if (options.mode != "process" && options.mode != "affinity") {
    return Status(ErrorCode::kInvalidArgument,
                  "unknown cpu slice mode \"" + options.mode + "\" (process|affinity)");
  }
  ASSIGN_OR_RETURN(std::vector<unsigned> machine, process_cpus());
  if (machine.empty()) return Status(ErrorCode::kUnavailable, "this process may run on no cpu");
  CpuSliceOptions resolved = options;
  if (resolved.machine_cores == 0) resolved.machine_cores = unsigned(machine.size());
  if (resolved.first_core >= resolved.machine_cores) {
    return Status(ErrorCode::kInvalidArgument,
                  "cpu slice first_core " + std::to_string(resolved.first_core) +
                      " is not below the machine's " + std::to_string(resolved.machine_cores) +
                      " cores");
  }
  ASSIGN_OR_RETURN(CpuSharePlan plan, plan_cpu_share(resolved.percent, resolved.machine_cores));
  ASSIGN_OR_RETURN(std::unique_ptr<PinnedPool> pool,
                   PinnedPool::create(CpuSlice::pick_cpus(machine, resolved.machine_cores,
                                                          resolved.first_core, plan.threads)));
  return std::unique_ptr<Slice>(
      std::make_unique<CpuSlice>(std::move(resolved), std::move(machine), plan, std::move(pool)));
}

}  // namespace sliceserve::backends
