#pragma once
// HTTP/1.1 as bytes on a plain socket, for tests of sliceserved's HTTP front-end: what a test
// sends is exactly what goes on the wire (malformed, truncated and pipelined requests included),
// and what comes back is read until the server closes the connection.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace sliceserve::testing {

struct HttpReply {
  int status = 0;  // 0: no reply
  std::string head;
  std::string body;
};

// A connection to 127.0.0.1:port; -1 when nothing listens.
inline int connect_loopback(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
  if (fd >= 0) close(fd);
  return -1;
}

// The first reply in what was read (the status 0 when there is none).
inline HttpReply parse_http_reply(const std::string& in) {
  HttpReply r;
  const size_t end = in.find("\r\n\r\n");
  if (in.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) return r;
  r.status = std::stoi(in.substr(9, 3));
  r.head = in.substr(0, end);
  r.body = in.substr(end + 4);
  return r;
}

// Everything the server sends on `fd` until it closes or is silent for `timeout`.
inline std::string read_until_closed(int fd, std::chrono::milliseconds timeout) {
  std::string in;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, int(timeout.count())) <= 0) break;
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    in.append(buf, size_t(n));
  }
  return in;
}

// Sends `raw` on a fresh connection and reads until the server closes it (requests carry
// "Connection: close") or is silent for `timeout`.
inline HttpReply http_round_trip(uint16_t port, const std::string& raw,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  const int fd = connect_loopback(port);
  if (fd < 0) return {};
  send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  std::string in = read_until_closed(fd, timeout);
  close(fd);
  return parse_http_reply(in);
}

// A header's value in a reply's head ("" when absent).
inline std::string http_header(const HttpReply& r, const std::string& name) {
  std::istringstream in(r.head);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > name.size() + 1 &&
        strncasecmp(line.c_str(), name.c_str(), name.size()) == 0 && line[name.size()] == ':') {
      return line.substr(name.size() + 2);
    }
  }
  return "";
}

// The replies one after another in what http_round_trip read as one (keep-alive, pipelined).
inline std::vector<HttpReply> split_http_replies(const HttpReply& all) {
  std::vector<HttpReply> out;
  std::string in = all.status == 0 ? "" : all.head + "\r\n\r\n" + all.body;
  while (in.rfind("HTTP/1.1 ", 0) == 0) {
    HttpReply r = parse_http_reply(in);
    if (r.status == 0) break;
    const std::string length = http_header(r, "Content-Length");
    const size_t n = length.empty() ? 0 : std::stoul(length);
    r.body.resize(std::min(r.body.size(), n));
    in.erase(0, std::min(in.size(), r.head.size() + 4 + n));
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace sliceserve::testing
