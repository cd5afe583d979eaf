#include "sliceserve/backends/cpu/duty_cycle_throttle.h"

#include <algorithm>

namespace sliceserve::backends {
namespace {

constexpr double kAverageWeight = 1.0 / 8;  // of the newest batch in the moving average

double nanos(DutyCycleThrottle::Clock::duration d) {
  return double(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

}  // namespace

void DutyCycleThrottle::set_duty(double duty) {
  duty_ = (duty >= 1.0 - 1e-9 || !(duty > 0.0)) ? 1.0 : duty;
  idle_per_busy_ = (1.0 - duty_) / duty_;
  owed_ns_ = 0.0;
  average_debt_ns_ = 0.0;
  ended_once_ = false;
}

void DutyCycleThrottle::begin(Clock::time_point now) {
  batch_start_ = now;
  if (!active() || !ended_once_) return;
  const double max_credit = nanos(kBurst) * idle_per_busy_;
  owed_ns_ = std::max(owed_ns_ - nanos(now - last_end_), -max_credit);
}

DutyCycleThrottle::Duration DutyCycleThrottle::end(Clock::time_point now) {
  last_end_ = now;
  ended_once_ = true;
  if (!active()) return Duration::zero();
  const double debt = std::max(0.0, nanos(now - batch_start_)) * idle_per_busy_;
  owed_ns_ += debt;
  // The cap uses the average *before* this batch, so a single outlier cannot raise its own cap.
  const double cap = std::max(nanos(kMinStallCap), 2.0 * average_debt_ns_);
  average_debt_ns_ += kAverageWeight * (debt - average_debt_ns_);
  const double sleep = std::clamp(owed_ns_, 0.0, cap);
  return Duration(static_cast<Duration::rep>(sleep));
}

}  // namespace sliceserve::backends
