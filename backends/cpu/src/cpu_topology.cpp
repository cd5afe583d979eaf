#include "sliceserve/backends/cpu/cpu_topology.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <memory>

#include "sliceserve/shm/check.h"

namespace sliceserve::backends {
namespace {

// A dynamically sized cpu_set_t (CPU_ALLOC), for machines with more than CPU_SETSIZE cpus.
class CpuSet {
 public:
  explicit CpuSet(unsigned ncpus) : ncpus_(ncpus), set_(CPU_ALLOC(ncpus)) {
    SS_CHECK(set_ != nullptr, "CPU_ALLOC failed");
    CPU_ZERO_S(bytes(), set_);
  }
  ~CpuSet() { CPU_FREE(set_); }
  CpuSet(const CpuSet&) = delete;
  CpuSet& operator=(const CpuSet&) = delete;

  size_t bytes() const { return CPU_ALLOC_SIZE(ncpus_); }
  cpu_set_t* get() { return set_; }
  void add(unsigned cpu) { CPU_SET_S(cpu, bytes(), set_); }
  std::vector<unsigned> cpus() const {
    std::vector<unsigned> out;
    // CPU_ALLOC rounds up to whole words; every bit of the allocation is meaningful.
    const unsigned bits = unsigned(bytes() * 8);
    for (unsigned cpu = 0; cpu < bits; ++cpu) {
      if (CPU_ISSET_S(cpu, bytes(), set_)) out.push_back(cpu);
    }
    return out;
  }

 private:
  unsigned ncpus_;
  cpu_set_t* set_;
};

Status invalid_list(std::string_view text, std::string_view why) {
  return Status(ErrorCode::kInvalidArgument,
                "bad cpu list \"" + std::string(text) + "\": " + std::string(why));
}

// Parses a decimal cpu id at text[pos...]; advances pos.
bool parse_id(std::string_view text, size_t& pos, unsigned& id) {
  size_t start = pos;
  unsigned long value = 0;
  while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
    value = value * 10 + unsigned(text[pos] - '0');
    if (value > kMaxCpuId) return false;
    ++pos;
  }
  if (pos == start) return false;
  id = unsigned(value);
  return true;
}

Result<std::vector<unsigned>> affinity_of(pid_t pid) {
  long configured = sysconf(_SC_NPROCESSORS_CONF);
  unsigned ncpus = std::max<unsigned>(CPU_SETSIZE, configured > 0 ? unsigned(configured) : 0);
  for (;;) {
    CpuSet set(ncpus);
    if (sched_getaffinity(pid, set.bytes(), set.get()) == 0) return set.cpus();
    // EINVAL: the kernel's mask is larger than ours; grow and retry.
    if (errno != EINVAL || ncpus > (1u << 20)) {
      return errno_status("sched_getaffinity", errno, __FILE__, __LINE__);
    }
    ncpus *= 2;
  }
}

}  // namespace

Result<std::vector<unsigned>> parse_cpu_list(std::string_view text) {
  const std::string_view original = text;
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  std::vector<unsigned> cpus;
  if (text.empty()) return cpus;
  size_t pos = 0;
  for (;;) {
    unsigned first = 0;
    if (!parse_id(text, pos, first)) {
      return invalid_list(original, "expected a cpu id (0-" + std::to_string(kMaxCpuId) +
                                        ") at offset " + std::to_string(pos));
    }
    unsigned last = first;
    if (pos < text.size() && text[pos] == '-') {
      ++pos;
      if (!parse_id(text, pos, last)) {
        return invalid_list(original,
                            "expected the end of a range at offset " + std::to_string(pos));
      }
      if (last < first) return invalid_list(original, "range end below its start");
    }
    for (unsigned cpu = first; cpu <= last; ++cpu) cpus.push_back(cpu);
    if (pos == text.size()) break;
    if (text[pos] != ',') {
      return invalid_list(original, "unexpected character at offset " + std::to_string(pos));
    }
    ++pos;
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::string format_cpu_list(std::span<const unsigned> cpus) {
  std::vector<unsigned> sorted(cpus.begin(), cpus.end());
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  std::string out;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j + 1 < sorted.size() && sorted[j + 1] == sorted[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(sorted[i]);
    if (j > i) out += '-' + std::to_string(sorted[j]);
    i = j + 1;
  }
  return out;
}

Result<std::vector<unsigned>> process_cpus() {
  static const Result<std::vector<unsigned>> cpus = affinity_of(getpid());  // thread-safe init
  return cpus;
}

Result<std::vector<unsigned>> current_thread_cpus() { return affinity_of(0); }

Status set_thread_cpus(pthread_t thread, std::span<const unsigned> cpus) {
  if (cpus.empty()) return Status(ErrorCode::kInvalidArgument, "empty cpu set");
  unsigned max_cpu = *std::max_element(cpus.begin(), cpus.end());
  CpuSet set(std::max<unsigned>(CPU_SETSIZE, max_cpu + 1));
  for (unsigned cpu : cpus) set.add(cpu);
  // pthread_*affinity_np return the error number instead of setting errno.
  int err = pthread_setaffinity_np(thread, set.bytes(), set.get());
  if (err != 0) {
    return errno_status("pthread_setaffinity_np", err, __FILE__, __LINE__)
        .with_context("pinning a thread to cpus " + format_cpu_list(cpus));
  }
  return Status::ok();
}

Status pin_thread(pthread_t thread, unsigned cpu) {
  const unsigned one[] = {cpu};
  return set_thread_cpus(thread, one);
}

}  // namespace sliceserve::backends
