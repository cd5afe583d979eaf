#include "sliceserve/shm/process_identity.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

namespace sliceserve::shm {
namespace {

// Field 22 of /proc/<pid>/stat: start time in clock ticks after boot. The command name (field 2)
// may contain spaces and parentheses, so parse after the last ')'.
uint64_t start_time_of(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", int(pid));
  FILE* f = std::fopen(path, "re");
  if (!f) return 0;
  char buf[1024];
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');
  if (!p) return 0;
  // After ") " come fields 3.. ; start time is field 22, i.e. the 20th after the ')'.
  int field = 2;
  for (const char* c = p + 1; *c; ++c) {
    if (*c == ' ') {
      ++field;
      if (field == 22) return std::strtoull(c + 1, nullptr, 10);
    }
  }
  return 0;
}

ProcessIdentity make_identity(pid_t pid, uint64_t start) {
  // Low 32 bits of the start time, plus one so that an identity is never 0 even for start 0.
  return (((start & 0xffffffffULL) | 1ULL << 31) << 32) | uint32_t(pid);
}

}  // namespace

ProcessIdentity self_identity() {
  // Cached per pid: a forked child must not inherit its parent's identity.
  thread_local pid_t cached_pid = 0;
  thread_local ProcessIdentity cached = 0;
  pid_t pid = getpid();
  if (pid != cached_pid) {
    cached = identity_of(pid);
    cached_pid = pid;
  }
  return cached;
}

ProcessIdentity identity_of(pid_t pid) {
  if (pid <= 0) return 0;
  uint64_t start = start_time_of(pid);
  if (start == 0 && kill(pid, 0) != 0) return 0;
  return make_identity(pid, start);
}

pid_t identity_pid(ProcessIdentity identity) { return pid_t(uint32_t(identity)); }

bool is_alive(ProcessIdentity identity) {
  if (identity == 0) return false;
  pid_t pid = identity_pid(identity);
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  // A zombie still has /proc/<pid>/stat; treat it as dead (state 'Z').
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", int(pid));
  FILE* f = std::fopen(path, "re");
  if (!f) return false;
  char buf[512];
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');
  if (p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X')) return false;
  return identity_of(pid) == identity;
}

}  // namespace sliceserve::shm
