#pragma once
// A front-end I/O thread's loop (the TCP front-end's standalone Asio, the HTTP front-end's
// Boost.Asio). While requests of the thread are with the workers, it looks for their answers
// itself between socket events, for up to `poll` after the last thing it did: an answer then
// costs no completion-thread wake-up and no post across threads (the answer's handler is queued
// and run by the thread's next poll). Past that (a slow model) it sleeps in the reactor, and the
// completion threads post the answers, as they do with `poll` 0.

#include <chrono>
#include <cstdint>

namespace sliceserve::controller {

// `with_workers`: the thread's requests whose answer handler has not run yet (touched on the
// thread only). `each_client(f)` calls f(client::Client&) for every client the thread submits to.
template <typename IoContext, typename EachClient>
void run_polling(IoContext& ioc, std::chrono::microseconds poll, const uint32_t& with_workers,
                 EachClient each_client) {
  using Clock = std::chrono::steady_clock;
  while (!ioc.stopped()) {
    if (with_workers == 0 || poll.count() == 0) {
      ioc.run_one();
      continue;
    }
    each_client([](auto& client) { client.set_polling(true); });
    for (auto idle_since = Clock::now(); with_workers > 0 && !ioc.stopped();) {
      size_t progress = ioc.poll();
      each_client([&](auto& client) { progress += client.poll_completions(); });
      if (progress > 0) {
        idle_since = Clock::now();
      } else if (Clock::now() - idle_since >= poll) {
        break;
      }
    }
    each_client([](auto& client) { client.set_polling(false); });
    if (with_workers > 0) ioc.run_one();
  }
}

}  // namespace sliceserve::controller
