#pragma once
// posix_spawn attributes for a child that starts clean: default signal dispositions and an empty
// signal mask, whatever its parent blocked for its own signal handling; optionally in a process
// group of its own (so that a hung child is killed with everything it started).

#include <signal.h>
#include <spawn.h>

namespace sliceserve::shm {

class CleanSpawnAttributes {
 public:
  explicit CleanSpawnAttributes(bool own_process_group = false) {
    posix_spawnattr_init(&attr_);
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr_, &all);
    posix_spawnattr_setsigmask(&attr_, &none);
    short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
    if (own_process_group) {
      posix_spawnattr_setpgroup(&attr_, 0);
      flags |= POSIX_SPAWN_SETPGROUP;
    }
    posix_spawnattr_setflags(&attr_, flags);
  }
  ~CleanSpawnAttributes() { posix_spawnattr_destroy(&attr_); }
  CleanSpawnAttributes(const CleanSpawnAttributes&) = delete;
  CleanSpawnAttributes& operator=(const CleanSpawnAttributes&) = delete;

  const posix_spawnattr_t* get() const { return &attr_; }

 private:
  posix_spawnattr_t attr_;
};

}  // namespace sliceserve::shm
