#include "sliceserve/controller/policy.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace sliceserve::controller {
namespace {

constexpr double kEps = 1e-6;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr uint32_t kMaxShrinkBackoff = 3;    // shrink_after at most x8
constexpr double kMaxShrinkFactor = 0.5;     // one shrink keeps at least half the slice
constexpr uint32_t kSteadyIntervals = 2;     // intervals without change before p99 calibrates
constexpr double kBatchKeepTolerance = 0.1;  // current batch kept within 10% of the target
constexpr double kBurstZ = 2.33;             // 99th percentile of a normal, for Poisson bursts
constexpr double kMaxGain = 0.95;
constexpr uint32_t kTrustSamples = 8;      // intervals measured before a size's own value rules
constexpr double kFloorLoadChange = 0.25;  // a failed-shrink floor holds while load is within 25%

bool finite_positive(double v) { return std::isfinite(v) && v > 0; }

// Execution time at 100% of the device per batch size: a least-squares line a + c*b over the
// learned sizes, weighted by how often each was measured; a size measured often enough is taken
// as learned (so a curve that is not a line is still right where it is used).
class ExecModel {
 public:
  // Tabulated for batch sizes up to `max_batch` + 1 (the sizing asks for them many times).
  ExecModel(const ModelMemory& mem, uint32_t max_batch)
      : known_(mem.exec_ms_full_device), samples_(mem.exec_samples) {
    fit();
    table_.resize(size_t(max_batch) + 2);
    for (uint32_t b = 0; b < table_.size(); ++b) table_[b] = compute(b);
  }

  double full_ms(uint32_t b) const { return b < table_.size() ? table_[b] : compute(b); }

 private:
  void fit() {
    if (known_.size() == 1) {
      single_ = true;
      b0_ = known_.begin()->first;
      e0_ = known_.begin()->second;
      return;
    }
    if (known_.size() < 2) return;
    double n = 0, sb = 0, se = 0, sbb = 0, sbe = 0;
    for (const auto& [b, e] : known_) {
      const double wt = std::clamp<double>(samples(b), 1, kTrustSamples);
      const double x = b;
      n += wt;
      sb += wt * x;
      se += wt * e;
      sbb += wt * x * x;
      sbe += wt * x * e;
    }
    const double den = n * sbb - sb * sb;
    c_ = den > 0 ? (n * sbe - sb * se) / den : 0;
    a_ = (se - c_ * sb) / n;
    if (c_ < 0) {  // noise made it decrease: flat at the largest measured
      c_ = 0;
      a_ = 0;
      for (const auto& [b, e] : known_) a_ = std::max(a_, e);
    } else if (a_ < 0) {  // through the origin
      a_ = 0;
      c_ = sbe / sbb;
    }
  }

  double compute(uint32_t b) const {
    if (auto it = known_.find(b); it != known_.end() && (single_ || samples(b) >= kTrustSamples)) {
      return it->second;
    }
    if (single_) return b >= b0_ ? e0_ * b / b0_ : e0_;
    return std::max(a_ + c_ * b, kEps);
  }
  uint32_t samples(uint32_t b) const {
    auto it = samples_.find(b);
    return it == samples_.end() ? 1 : it->second;
  }

  const std::map<uint32_t, double>& known_;
  const std::map<uint32_t, uint32_t>& samples_;
  bool single_ = false;
  uint32_t b0_ = 1;
  double e0_ = 0;
  double a_ = 0, c_ = 0;
  std::vector<double> table_;
};

// Everything the latency and throughput model needs about one model in this interval.
//
// The p99 model of a greedy batch server (take up to b queued requests whenever free): in steady
// state a batch holds about the requests that arrived while the previous one ran, the fixed point
// n = min(b, lambda * exec(n)); the arrivals during one execution are Poisson and a larger batch
// runs longer and gathers a larger next one (feedback gain g = lambda * d exec / dn), so the
// 99th-percentile queue at a batch start is n99 = n + z * sqrt(n / (1 - g)) + 1. A request waits
// for the batch in progress, then for the batches ahead of it in the queue, then its own:
//   p99 ~ scale * (fill + exec(m) * (1 + n99 / m)),  m = min(b, n99),
//   fill = min((b - 1) / lambda, queue delay)
// where `scale` is the learned correction. Separately, a full batch of b must finish within the
// grow threshold even behind another full one: fill + 2 * exec(b) <= grow fraction * SLO.
struct Sizing {
  const ExecModel* exec = nullptr;
  double lambda_per_ms = 0;   // arrivals
  double queue_delay_ms = 0;  // 0: bounded by the batch's execution
  double target_ms = 0;       // p99 aimed at
  double batch_bound_ms = 0;  // a full batch behind a full batch finishes within this
  double utilization = 0.8;
  double scale = 1;        // learned latency correction
  double search_hi = 1e4;  // no slice beyond this is considered (percent)

  // Execution time at `slice` of a batch of (possibly fractional, >= 1) size n.
  double batch_ms(double n, double slice) const {
    n = std::max(n, 1.0);
    const auto lo = static_cast<uint32_t>(std::floor(n));
    const double frac = n - lo;
    double full = exec->full_ms(lo);
    if (frac > kEps) full += frac * (exec->full_ms(lo + 1) - full);
    return full * 100 / slice;
  }
  double fill_ms(uint32_t b, double exec_ms) const {
    if (b <= 1) return 0;
    const double fill_rate = lambda_per_ms > 0 ? (b - 1) / lambda_per_ms : kInf;
    return std::min(fill_rate, queue_delay_ms > 0 ? queue_delay_ms : exec_ms);
  }
  // b / exec_b(slice) >= lambda / utilization
  bool sustains(uint32_t b, double slice) const {
    return b / batch_ms(b, slice) >= lambda_per_ms / utilization - kEps;
  }
  double tput_slice(uint32_t b) const {  // smallest slice that sustains, closed form
    return exec->full_ms(b) * 100 * lambda_per_ms / (utilization * b);
  }
  double full_batch_ms(uint32_t b, double slice) const {
    const double e = batch_ms(b, slice);
    return fill_ms(b, e) + 2 * e;
  }
  bool batch_ok(uint32_t b, double slice, double tolerance = 0) const {
    return sustains(b, slice) && full_batch_ms(b, slice) <= batch_bound_ms * (1 + tolerance);
  }
  double p99_unscaled(uint32_t b, double slice) const {
    double n = 1;
    if (lambda_per_ms > 0) {
      n = std::min<double>(b, lambda_per_ms * batch_ms(1, slice));
      for (int i = 0; i < 60; ++i) {
        const double next = std::min<double>(b, lambda_per_ms * batch_ms(n, slice));
        const bool done = std::fabs(next - n) < 1e-4;
        n = next;
        if (done) break;
      }
    }
    const double gain =
        std::clamp(lambda_per_ms * (batch_ms(n + 1, slice) - batch_ms(n, slice)), 0.0, kMaxGain);
    const double n99 = n + kBurstZ * std::sqrt(n / (1 - gain)) + 1;
    const double m = std::min<double>(b, n99);
    const double e = batch_ms(m, slice);
    return fill_ms(b, e) + e * (1 + n99 / m);
  }
  double p99(uint32_t b, double slice) const { return scale * p99_unscaled(b, slice); }
  // Batch limit b at `slice` sustains the arrivals, meets the p99 target and the batch bound.
  bool fits(uint32_t b, double slice) const {
    return batch_ok(b, slice) && p99(b, slice) <= target_ms;
  }
  // Smallest slice at which batch limit b fits (every condition only gets easier with slice).
  double need(uint32_t b) const {
    double lo = std::max(tput_slice(b), 1e-3);
    if (fits(b, lo)) return lo;
    double hi = lo;
    do {  // bracket, then bisect to 0.01 percent points
      lo = hi;
      hi *= 2;
      if (hi > search_hi) return kInf;
    } while (!fits(b, hi));
    while (hi - lo > 0.01) {
      const double mid = (lo + hi) / 2;
      (fits(b, mid) ? hi : lo) = mid;
    }
    return hi;
  }
};

struct Work {
  const ModelObservation* obs = nullptr;
  ModelMemory* mem = nullptr;
  std::optional<ExecModel> exec;
  Sizing sizing;
  double slice = 0;    // current, sanitised
  uint32_t batch = 1;  // current, within [1, cap]
  uint32_t cap = 1;
  double need = 0;   // by the model (min_slice at least); 0 without a model
  double keep = 0;   // the least a shrink or a shortage may leave it (exec model only)
  double want = 0;   // before the device is considered
  double claim = 0;  // first-round share in a shortage
  double alloc = 0;
  double tightness = 0;
  bool short_tput = false;
  bool p99_high = false;
  bool violated = false;
  bool headroom = false;
  bool grow = false;
  bool shrink = false;
  std::string hold_why;  // why an indicated change was not made
  bool is_short = false;
  double deficit = 0;
};

std::string fmt_num(double v) {
  if (!std::isfinite(v)) return "inf";
  if (std::fabs(v - std::round(v)) < 0.05) return fmt::format("{:.0f}", v);
  return fmt::format("{:.1f}", v);
}

void learn_exec(const PolicyConfig& config, const ModelObservation& obs, double slice,
                ModelMemory& mem) {
  for (const auto& [b, ms] : obs.exec_ms_by_batch) {
    if (b == 0 || !finite_positive(ms)) continue;
    const double full = ms * slice / 100;
    auto [it, inserted] = mem.exec_ms_full_device.try_emplace(b, full);
    if (!inserted) it->second += config.exec_ema_alpha * (full - it->second);
    uint32_t& samples = mem.exec_samples[b];
    samples = std::min(samples + 1, kTrustSamples);
  }
}

// The smallest slice over all batch limits up to `cap` (possibly infinite).
double least_need(const Sizing& sizing, uint32_t cap) {
  double need = kInf;
  for (uint32_t b = 1; b <= cap; ++b) need = std::min(need, sizing.need(b));
  return need;
}

// The batch limit at `slice`: the largest that sustains the arrivals and whose full batch meets
// the batch bound (a larger limit only helps the p99 of a greedy batcher, so the bound is what
// limits it), with a band of +-kBatchKeepTolerance around the bound against back and forth.
uint32_t choose_batch(const Work& w, double slice) {
  const Sizing& sz = w.sizing;
  for (uint32_t b = w.cap; b > w.batch; --b) {
    if (sz.batch_ok(b, slice, -kBatchKeepTolerance)) return b;  // clearly fits: go up
  }
  if (sz.batch_ok(w.batch, slice, kBatchKeepTolerance)) return w.batch;
  for (uint32_t b = w.cap; b >= 1; --b) {
    if (sz.batch_ok(b, slice)) return b;
  }
  // Nothing meets the bound (the device is short): the smallest batch that keeps up, else the
  // largest (throughput first).
  for (uint32_t b = 1; b <= w.cap; ++b) {
    if (sz.sustains(b, slice)) return b;
  }
  return w.cap;
}

}  // namespace

std::optional<double> predicted_exec_ms(const ModelMemory& memory, uint32_t batch, double slice) {
  if (memory.exec_ms_full_device.empty() || batch == 0 || !finite_positive(slice)) {
    return std::nullopt;
  }
  const ExecModel exec(memory, batch);
  return exec.full_ms(batch) * 100 / slice;
}

PolicyResult decide(const PolicyConfig& config, std::span<const ModelObservation> models,
                    PolicyMemory& memory) {
  PolicyResult result;
  const double min_slice = std::max(config.min_slice, kEps);
  const double min_step = std::max(config.min_step, 0.0);
  std::vector<Work> work(models.size());

  // Per model: learn, size, apply the triggers and the hysteresis.
  for (size_t i = 0; i < models.size(); ++i) {
    const ModelObservation& obs = models[i];
    Work& w = work[i];
    w.obs = &obs;
    w.mem = &memory.models[obs.name];
    ModelMemory& mem = *w.mem;
    w.slice = finite_positive(obs.slice) ? obs.slice : min_slice;
    w.cap = std::max<uint32_t>(obs.max_batch_cap, 1);
    w.batch = std::clamp<uint32_t>(obs.max_batch, 1, w.cap);
    const double slo = finite_positive(obs.slo_ms) ? obs.slo_ms : kInf;
    const double arrivals = std::isfinite(obs.arrival_rps) ? std::max(obs.arrival_rps, 0.0) : 0;
    const double completions =
        std::isfinite(obs.completion_rps) ? std::max(obs.completion_rps, 0.0) : 0;
    const double p99 = std::isfinite(obs.p99_ms) ? std::max(obs.p99_ms, 0.0) : 0;

    learn_exec(config, obs, w.slice, mem);
    if (!mem.exec_ms_full_device.empty()) w.exec.emplace(mem, w.cap);

    w.sizing.exec = w.exec ? &*w.exec : nullptr;
    w.sizing.search_hi = std::max({config.device_capacity, w.slice, 1.0}) * 64;
    w.sizing.lambda_per_ms = arrivals / 1000;
    w.sizing.queue_delay_ms = finite_positive(obs.max_queue_delay_ms) ? obs.max_queue_delay_ms : 0;
    w.sizing.target_ms = config.target_p99_fraction * slo;
    w.sizing.batch_bound_ms = config.grow_p99_fraction * slo;
    w.sizing.utilization = std::clamp(config.target_utilization, 0.05, 1.0);

    w.short_tput = arrivals - completions > std::max(config.throughput_slack * arrivals, 1.0);
    mem.short_streak = w.short_tput ? mem.short_streak + 1 : 0;
    mem.keep_up_streak = w.short_tput ? 0 : mem.keep_up_streak + 1;
    w.p99_high = p99 > config.grow_p99_fraction * slo || (arrivals > 0 && completions <= 0);
    mem.high_streak = w.p99_high ? mem.high_streak + 1 : 0;
    w.violated = p99 > slo || (arrivals > 0 && completions <= 0);
    w.headroom = !w.short_tput && !w.p99_high && p99 < config.shrink_p99_fraction * slo &&
                 (completions > 0 || arrivals <= 0);

    // Calibrate the p99 model against a steady interval: no change for a while, throughput
    // keeping up for a while (no backlog draining), p99 not far off.
    if (w.exec && !obs.pinned && mem.stable_intervals >= kSteadyIntervals &&
        mem.keep_up_streak > kSteadyIntervals && p99 > 0 && p99 <= 2 * slo && completions > 0) {
      const double modelled = w.sizing.p99_unscaled(w.batch, w.slice);
      if (finite_positive(modelled)) {
        const double ratio =
            std::clamp(p99 / modelled, config.latency_scale_min, config.latency_scale_max);
        mem.latency_scale += config.exec_ema_alpha * (ratio - mem.latency_scale);
      }
    }
    w.sizing.scale = mem.latency_scale;

    if (w.exec) {
      w.need = std::max(least_need(w.sizing, w.cap), min_slice);
    }
    w.tightness = std::max(std::isfinite(slo) ? p99 / slo : 0.0, w.need / w.slice);
    if (w.violated && !std::isfinite(w.tightness)) w.tightness = 1e9;

    if (mem.since_shrink != UINT32_MAX) ++mem.since_shrink;
    w.want = w.slice;
    if (obs.pinned) {
      mem.headroom_streak = 0;
      continue;
    }
    mem.headroom_streak = w.headroom ? mem.headroom_streak + 1 : 0;
    // The arrivals of the last 2 x shrink_after intervals: a shrink is sized for the busiest.
    mem.recent_arrival_rps.push_back(arrivals);
    while (mem.recent_arrival_rps.size() > 2 * std::max<size_t>(config.shrink_after, 1)) {
      mem.recent_arrival_rps.erase(mem.recent_arrival_rps.begin());
    }
    // What a shrink (or a shortage) may take it down to: the need at the busiest recent
    // interval plus the margin, and never back to a slice whose shrink had to be undone.
    if (w.exec) {
      Sizing peak = w.sizing;
      peak.lambda_per_ms =
          *std::max_element(mem.recent_arrival_rps.begin(), mem.recent_arrival_rps.end()) / 1000;
      w.keep = std::max(least_need(peak, w.cap), min_slice) * (1 + config.shrink_margin);
      if (mem.shrink_floor > 0) {
        if (arrivals < mem.shrink_floor_rps * (1 - kFloorLoadChange)) {
          mem.shrink_floor = 0;  // the load fell: the old failure says nothing any more
        } else {
          w.keep = std::max(w.keep, mem.shrink_floor + min_step);
        }
      }
    }
    const bool cooling = mem.cooldown_left > 0;
    const bool model_agrees = w.exec && w.need >= w.slice + min_step - kEps;

    if (w.short_tput || w.p99_high) {
      if (model_agrees) {
        // The model says the slice is clearly short: straight to the need. Violation overrides
        // the cooldown (a backlog left from before the last change does not count: there the
        // model says the new slice suffices).
        if (cooling && !w.violated) {
          w.hold_why = fmt::format("cooldown {}", mem.cooldown_left);
        } else {
          w.grow = true;
          w.want = std::max(w.need * (1 + config.grow_margin), w.slice + min_step);
        }
      } else if (w.violated || mem.high_streak >= 2 || mem.short_streak >= 2) {
        if (cooling) {
          w.hold_why = fmt::format("cooldown {}, model says {}% suffices", mem.cooldown_left,
                                   fmt_num(w.need));
        } else {
          // The measurement disagrees with the model (or the model sees less than min_step
          // missing), and not just once: grow by the measured ratio; the model's correction
          // catches up by itself.
          double factor = 1;
          if (p99 > 0 && std::isfinite(slo)) {
            factor = std::max(factor, p99 / (config.grow_p99_fraction * slo));
          }
          if (arrivals > 0) factor = std::max(factor, completions > 0 ? arrivals / completions : 2);
          factor = std::min(factor, 2.0);
          w.grow = true;
          w.want = std::max(w.slice * factor, w.slice + min_step);
          if (w.exec) w.want = std::max(w.want, w.need * (1 + config.grow_margin));
        }
      } else {
        w.hold_why = fmt::format("{} once, model says {}% suffices",
                                 w.p99_high ? "p99 high" : "throughput short", fmt_num(w.need));
      }
    } else if (w.headroom) {
      const uint32_t needed_streak = config.shrink_after
                                     << std::min(mem.shrink_backoff, kMaxShrinkBackoff);
      if (mem.headroom_streak < needed_streak) {
        w.hold_why = fmt::format("headroom {}/{}", mem.headroom_streak, needed_streak);
      } else if (cooling) {
        w.hold_why = fmt::format("cooldown {}", mem.cooldown_left);
      } else {
        double target = w.keep;
        if (!w.exec) target = arrivals > 0 ? w.slice : min_slice;  // idle: give it back
        // At most halve per step: the exec model may be wrong at a slice it has not seen, and a
        // shrink that overshoots costs the SLO until the next grow.
        target = std::max(target, w.slice * kMaxShrinkFactor);
        if (w.slice - target >= min_step - kEps) {
          w.shrink = true;
          w.want = target;
        } else {
          w.hold_why = fmt::format("headroom, shrink to {}% below min step", fmt_num(target));
        }
      }
    }
  }

  // The device: the sum of slices stays within the capacity; tightest margins win a shortage.
  double pinned_sum = 0;
  double want_sum = 0;
  std::vector<size_t> free_models;
  for (size_t i = 0; i < work.size(); ++i) {
    Work& w = work[i];
    if (w.obs->pinned) {
      pinned_sum += w.slice;
      w.alloc = w.slice;
    } else {
      want_sum += w.want;
      free_models.push_back(i);
    }
  }
  const double capacity = config.device_capacity;
  const bool shortage = pinned_sum + want_sum > capacity + kEps;
  std::vector<size_t> order;  // priority in a shortage
  if (!shortage) {
    for (size_t i : free_models) work[i].alloc = work[i].want;
  } else {
    double left = std::max(capacity - pinned_sum, 0.0);
    const double base =
        free_models.empty() ? 0 : std::min(min_slice, left / double(free_models.size()));
    for (size_t i : free_models) {
      Work& w = work[i];
      w.alloc = base;
      left -= base;
      // A grow claims what it asked for; any other model what a shrink would leave it, or its
      // slice when that would take less than min_step.
      double claim = w.want;
      if (w.exec && !w.grow) claim = w.keep > w.slice - min_step ? w.slice : w.keep;
      w.claim = std::max(base, std::min(claim, w.want));
    }
    order = free_models;
    std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
      const Work& a = work[x];
      const Work& b = work[y];
      if (a.mem->shortage_rank != b.mem->shortage_rank) {
        return a.mem->shortage_rank < b.mem->shortage_rank;
      }
      if (a.tightness != b.tightness) return a.tightness > b.tightness;
      return a.obs->name < b.obs->name;
    });
    for (size_t i : order) {
      Work& w = work[i];
      const double add = std::clamp(w.claim - w.alloc, 0.0, left);
      w.alloc += add;
      left -= add;
    }
    for (size_t i : order) {
      Work& w = work[i];
      const double add = std::clamp(w.want - w.alloc, 0.0, left);
      w.alloc += add;
      left -= add;
    }
    // Changes below min_step are not made where the device allows: first undo the small
    // increases (they free room), then the small decreases.
    double used = pinned_sum;
    for (size_t i : free_models) used += work[i].alloc;
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t i : order) {
        Work& w = work[i];
        const double delta = w.alloc - w.slice;
        if (std::fabs(delta) < kEps || std::fabs(delta) >= min_step - kEps) continue;
        if ((pass == 0) != (delta > 0)) continue;
        if (used - delta <= capacity + kEps) {
          used -= delta;
          w.alloc = w.slice;
        }
      }
    }
    for (size_t i : free_models) {
      Work& w = work[i];
      w.deficit = std::max((w.exec ? std::min(w.need, w.claim) : w.claim) - w.alloc, 0.0);
      w.is_short = w.deficit > kEps;
    }
  }
  if (pinned_sum > capacity + kEps) result.shortfall += pinned_sum - capacity;

  // Shortage priority memory: who was served keeps being served until the shortage is over.
  if (shortage) {
    memory.intervals_without_shortage = 0;
    for (size_t rank = 0; rank < order.size(); ++rank) {
      work[order[rank]].mem->shortage_rank = static_cast<uint32_t>(rank);
    }
  } else if (++memory.intervals_without_shortage >= std::max<uint32_t>(config.shrink_after, 1)) {
    for (size_t i : free_models) work[i].mem->shortage_rank = UINT32_MAX;
  }

  // Batches, reasons, memory.
  result.decisions.reserve(work.size());
  for (Work& w : work) {
    const ModelObservation& obs = *w.obs;
    ModelMemory& mem = *w.mem;
    Decision d;
    d.model = obs.name;
    d.needed_slice = w.exec ? w.need : 0;
    d.short_of_device = w.is_short;
    if (obs.pinned) {
      d.slice = obs.slice;
      d.max_batch = obs.max_batch;
    } else {
      d.slice = w.alloc;
      d.max_batch = w.exec ? choose_batch(w, w.alloc) : w.batch;
      d.slice_changed = std::fabs(d.slice - obs.slice) > kEps;
      d.batch_changed = d.max_batch != obs.max_batch;
    }
    if (w.is_short) {
      result.shortfall += w.deficit;
      result.short_models.push_back(obs.name);
    }

    // The reason line.
    std::string action;
    if (obs.pinned) {
      action = fmt::format("pinned {}", fmt_num(obs.slice));
    } else if (!d.slice_changed) {
      action = fmt::format("hold {}", fmt_num(obs.slice));
    } else {
      const bool up = d.slice > obs.slice;
      const char* verb = up ? "grow" : "shrink";
      if (shortage && !(w.grow && up) && !(w.shrink && !up)) verb = up ? "grant" : "yield";
      action = fmt::format("{} {}->{}", verb, fmt_num(obs.slice), fmt_num(d.slice));
    }
    const double slo = obs.slo_ms;
    const char* p99_cmp = "<=";
    double p99_ref = config.grow_p99_fraction;
    if (w.p99_high) {
      p99_cmp = ">";
    } else if (w.headroom) {
      p99_cmp = "<";
      p99_ref = config.shrink_p99_fraction;
    }
    std::string exec_text = "exec unknown";
    if (auto it = obs.exec_ms_by_batch.find(w.batch);
        it != obs.exec_ms_by_batch.end() && finite_positive(it->second)) {
      exec_text = fmt::format("exec {}ms@{}%", fmt_num(it->second), fmt_num(w.slice));
    } else if (w.exec) {
      exec_text = fmt::format("exec ~{}ms@{}%", fmt_num(w.exec->full_ms(w.batch) * 100 / w.slice),
                              fmt_num(w.slice));
    }
    std::string batch_text = fmt::format("batch {}", obs.max_batch);
    if (d.batch_changed) batch_text += fmt::format("->{}", d.max_batch);
    d.reason = fmt::format(
        "{}: p99 {}ms {} {}*{}ms, arrivals {}/s {} completions {}/s, busy {}%, {} {}, need {}%",
        action, fmt_num(obs.p99_ms), p99_cmp, fmt_num(p99_ref), fmt_num(slo),
        fmt_num(obs.arrival_rps), w.short_tput ? ">" : "~", fmt_num(obs.completion_rps),
        fmt_num(obs.busy_fraction * 100), batch_text, exec_text,
        w.exec ? fmt_num(w.need) : std::string("unknown"));
    if (w.exec && std::fabs(mem.latency_scale - 1) > 0.05) {
      d.reason += fmt::format(" (p99 model x{:.2f})", mem.latency_scale);
    }
    if (w.is_short) d.reason += fmt::format(", short {}% of the device", fmt_num(w.deficit));
    if (!d.slice_changed && !w.hold_why.empty()) d.reason += ", " + w.hold_why;

    // Memory for the next interval.
    if (d.slice_changed) {
      const bool grew = d.slice > obs.slice;
      if (grew && mem.since_shrink <= 2 * std::max<uint32_t>(config.shrink_after, 1)) {
        // The last shrink had to be undone: shrink more reluctantly, and never to that slice
        // again while the load stays about the same.
        mem.shrink_backoff = std::min(mem.shrink_backoff + 1, kMaxShrinkBackoff);
        mem.since_shrink = UINT32_MAX;
        mem.shrink_floor = obs.slice;
        mem.shrink_floor_rps = obs.arrival_rps;
      }
      if (w.shrink && !grew) mem.since_shrink = 0;
      mem.cooldown_left = config.cooldown;
      mem.headroom_streak = 0;
    } else if (mem.cooldown_left > 0) {
      --mem.cooldown_left;
    }
    if (mem.shrink_backoff > 0 &&
        mem.since_shrink == 4 * std::max<uint32_t>(config.shrink_after, 1)) {
      --mem.shrink_backoff;  // the last shrink held: trust shrinking a little more again
    }
    mem.stable_intervals = d.slice_changed || d.batch_changed ? 0 : mem.stable_intervals + 1;
    result.decisions.push_back(std::move(d));
  }
  return result;
}

}  // namespace sliceserve::controller
