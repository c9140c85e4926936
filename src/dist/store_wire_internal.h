// The rendezvous store's wire format (see store.h) and the socket helpers its server and
// client share. Frames: u32 little-endian length, then the body: u8 opcode (requests) or
// u8 status (replies), then the operands, strings as u32 length + bytes, integers LE.
#pragma once

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace mpt::dist::store_wire {

constexpr uint32_t kMaxFrameBytes = 64u << 20;

enum Opcode : uint8_t {
  kSet = 1,    // key, value            -> ok
  kGet = 2,    // key                   -> value, once the key exists
  kWait = 3,   // u32 n, n keys         -> ok, once every key exists
  kCheck = 4,  // u32 n, n keys         -> u8 all exist
  kAdd = 5,    // key, i64 delta        -> i64 new value (stored as decimal text)
};

enum ReplyStatus : uint8_t { kReplyOk = 0, kReplyFailed = 1 };  // failed: a message string follows

// Builds one frame: the body is appended, frame() prefixes its length.
class FrameWriter {
 public:
  FrameWriter& u8(uint8_t v) {
    body_.push_back(static_cast<char>(v));
    return *this;
  }
  FrameWriter& u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) body_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  FrameWriter& i64(int64_t v) {
    uint64_t u = static_cast<uint64_t>(v);
    for (int i = 0; i < 8; ++i) body_.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
    return *this;
  }
  FrameWriter& str(std::string_view s) {
    u32(static_cast<uint32_t>(s.size()));
    body_.append(s.data(), s.size());
    return *this;
  }
  size_t body_size() const { return body_.size(); }
  std::string frame() const {
    FrameWriter head;
    head.u32(static_cast<uint32_t>(body_.size()));
    return head.body_ + body_;
  }

 private:
  std::string body_;
};

inline uint32_t load_u32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

// Reads a frame body; every read checks the bounds and returns false past the end.
class FrameReader {
 public:
  FrameReader(const char* data, size_t size) : p_(data), left_(size) {}
  bool u8(uint8_t* v) {
    if (left_ < 1) return false;
    *v = static_cast<uint8_t>(*p_);
    advance(1);
    return true;
  }
  bool u32(uint32_t* v) {
    if (left_ < 4) return false;
    *v = load_u32(p_);
    advance(4);
    return true;
  }
  bool i64(int64_t* v) {
    if (left_ < 8) return false;
    uint64_t u = 0;
    for (int i = 0; i < 8; ++i) u |= static_cast<uint64_t>(static_cast<unsigned char>(p_[i])) << (8 * i);
    *v = static_cast<int64_t>(u);
    advance(8);
    return true;
  }
  bool str(std::string* s) {
    uint32_t n = 0;
    if (!u32(&n) || left_ < n) return false;
    s->assign(p_, n);
    advance(n);
    return true;
  }
  bool at_end() const { return left_ == 0; }
  size_t left() const { return left_; }

 private:
  void advance(size_t n) {
    p_ += n;
    left_ -= n;
  }
  const char* p_;
  size_t left_;
};

inline bool set_nonblocking(int fd) {
  int flags = fcntl(fd, F_GETFL, 0);
  return flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

// "127.0.0.1:5000" or "[::1]:5000".
inline std::string sockaddr_text(const sockaddr* sa) {
  char host[NI_MAXHOST] = "?";
  char serv[NI_MAXSERV] = "?";
  socklen_t len = sa->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  getnameinfo(sa, len, host, sizeof(host), serv, sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV);
  std::string h = host;
  if (h.rfind("::ffff:", 0) == 0) h = h.substr(7);  // IPv4 clients of a dual-stack listener
  if (h.find(':') != std::string::npos) h = "[" + h + "]";
  return h + ":" + serv;
}

}  // namespace mpt::dist::store_wire
