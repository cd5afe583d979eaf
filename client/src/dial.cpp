#include "dial.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sliceserve/shm/check.h"

namespace sliceserve::client {

Status gone(const std::string& address, const std::string& why) {
  return Status(ErrorCode::kServerGone, "sliceserved at " + address + ": " + why);
}

Result<int> dial(const std::string& host, uint16_t port, const std::string& address) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
  if (rc != 0) {
    return Status(ErrorCode::kInvalidArgument,
                  "cannot resolve " + address + ": " + std::string(gai_strerror(rc)));
  }
  Status last = gone(address, "no address to connect to");
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last = errno_status("socket", errno, __FILE__, __LINE__);
      continue;
    }
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      last = gone(address, std::string("connect: ") + strerror(errno));
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) return last;
  const int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    Status s = errno_status("setsockopt(TCP_NODELAY)", errno, __FILE__, __LINE__);
    close(fd);
    return s;
  }
  return fd;
}

}  // namespace sliceserve::client
