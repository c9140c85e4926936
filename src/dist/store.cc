// The rendezvous store: a poll-loop server thread and a blocking client. The server parks a
// GET or WAIT until its keys exist; the client bounds every call by its timeout and, when
// the timeout passes, drops the connection (so that the late reply cannot be read as the
// answer to a later call) and reconnects on the next call.
#include "dist/store.h"

#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "dist/store_wire_internal.h"

namespace mpt::dist {

using namespace store_wire;
using Clock = std::chrono::steady_clock;

namespace {

std::string seconds_text(double s) {
  std::ostringstream os;
  os << s << " s";
  return os.str();
}

std::string quoted(const std::string& key) {
  constexpr size_t kShown = 200;
  return "'" + (key.size() <= kShown ? key : key.substr(0, kShown) + "...") + "'";
}

// Milliseconds left until `deadline`, rounded up so that a poll does not wake just early.
int ms_until(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<int64_t>((left + 999) / 1000, INT_MAX));
}

// The listed items, at most `shown` of them, then how many more.
std::string list_text(const std::vector<std::string>& items, size_t shown = 32) {
  std::string s;
  for (size_t i = 0; i < items.size() && i < shown; ++i) s += (i ? ", " : "") + items[i];
  if (items.size() > shown) s += str(" and ", items.size() - shown, " more");
  return s;
}

struct Client {
  int fd = -1;
  std::string peer;  // "host:port", for log lines
  std::string in;    // received bytes not yet parsed
  std::string out;   // replies not yet written
  bool waiting = false;  // a GET or WAIT parked until its keys exist
  uint8_t wait_op = 0;
  std::vector<std::string> wait_keys;
  bool dead = false;
};

}  // namespace

// ---------------------------------------------------------------------------------------
// Server

struct StoreServer::Impl {
  Logger log;
  int listen_fd = -1;
  int wake_read = -1;
  int wake_write = -1;
  int port = 0;
  std::thread thread;
  // Only the server thread touches these.
  std::unordered_map<std::string, std::string> data;
  std::vector<std::unique_ptr<Client>> clients;

  explicit Impl(Logger l) : log(std::move(l)) {}
  ~Impl() {
    for (auto& c : clients) ::close(c->fd);
    for (int fd : {listen_fd, wake_read, wake_write})
      if (fd >= 0) ::close(fd);
  }

  void listen_on(int requested_port);
  void run();
  void accept_clients();
  void read_from(Client& c);
  bool serve(Client& c);
  void handle(Client& c, const char* body, uint32_t size);
  void answer_all();
  void flush(Client& c);
  void drop(Client& c, const std::string& why) {
    log.warn(str("store server: dropping the connection from ", c.peer, ": ", why));
    c.dead = true;
  }
  bool all_present(const std::vector<std::string>& keys) const {
    for (const auto& k : keys)
      if (!data.count(k)) return false;
    return true;
  }
};

void StoreServer::Impl::listen_on(int requested_port) {
  MPT_CHECK(requested_port >= 0 && requested_port <= 65535, Status::kInvalidArgument, "store server: port ",
            requested_port, " is not in 0..65535");
  std::string why = "no address family available";
  // A dual-stack IPv6 socket serves IPv4 clients too; without IPv6, plain IPv4.
  for (int family : {AF_INET6, AF_INET}) {
    int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    int on = 1, off = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    sockaddr_storage addr{};
    socklen_t len = 0;
    if (family == AF_INET6) {
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
      auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
      a->sin6_family = AF_INET6;
      a->sin6_addr = in6addr_any;
      a->sin6_port = htons(static_cast<uint16_t>(requested_port));
      len = sizeof(sockaddr_in6);
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&addr);
      a->sin_family = AF_INET;
      a->sin_addr.s_addr = htonl(INADDR_ANY);
      a->sin_port = htons(static_cast<uint16_t>(requested_port));
      len = sizeof(sockaddr_in);
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(fd, 1024) != 0) {
      int err = errno;
      ::close(fd);
      why = std::strerror(err);
      if (err == EADDRINUSE) break;  // the other family would collide as well
      continue;
    }
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
      port = ntohs(family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                      : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    listen_fd = fd;
    return;
  }
  fail(Status::kDistributed, "store server: cannot listen on port ", requested_port, ": ", why,
       requested_port ? " (is another job using this MASTER_PORT?)" : "");
}

void StoreServer::Impl::run() {
  std::vector<pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back({wake_read, POLLIN, 0});
    fds.push_back({listen_fd, POLLIN, 0});
    for (auto& c : clients) fds.push_back({c->fd, static_cast<short>(POLLIN | (c->out.empty() ? 0 : POLLOUT)), 0});
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      log.error(str("store server: poll failed: ", std::strerror(errno), "; the server stops"));
      return;
    }
    if (fds[0].revents) return;  // the destructor asks to stop
    for (size_t i = 2; i < fds.size(); ++i) {
      Client& c = *clients[i - 2];
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) read_from(c);
      if (!c.dead && (fds[i].revents & POLLOUT)) flush(c);
    }
    if (fds[1].revents & POLLIN) accept_clients();
    answer_all();
    for (auto& c : clients)
      if (c->dead) ::close(c->fd);
    clients.erase(std::remove_if(clients.begin(), clients.end(), [](const auto& c) { return c->dead; }),
                  clients.end());
  }
}

void StoreServer::Impl::accept_clients() {
  for (;;) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        log.warn(str("store server: accept failed: ", std::strerror(errno)));
      return;
    }
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    auto c = std::make_unique<Client>();
    c->fd = fd;
    c->peer = sockaddr_text(reinterpret_cast<sockaddr*>(&addr));
    clients.push_back(std::move(c));
  }
}

void StoreServer::Impl::read_from(Client& c) {
  char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      c.in.append(buf, static_cast<size_t>(n));
      // A parked client may send on, but not without bound.
      if (c.in.size() > 2 * (size_t{kMaxFrameBytes} + 4)) {
        drop(c, str(c.in.size(), " bytes sent without waiting for replies"));
        return;
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    // End of stream or a reset: the client is gone. Unparsed bytes mean it quit mid-frame.
    serve(c);
    if (!c.dead && !c.in.empty() && !c.waiting)
      drop(c, str("connection closed inside a frame (", c.in.size(), " bytes of a truncated frame)"));
    c.dead = true;
    return;
  }
}

bool StoreServer::Impl::serve(Client& c) {
  bool handled = false;
  size_t used = 0;
  while (!c.dead && !c.waiting && c.in.size() - used >= 4) {
    uint32_t size = load_u32(c.in.data() + used);
    if (size == 0 || size > kMaxFrameBytes) {
      drop(c, size == 0 ? std::string("empty frame") : str("frame of ", size, " bytes exceeds the 64 MiB limit"));
      break;
    }
    if (c.in.size() - used - 4 < size) break;
    handle(c, c.in.data() + used + 4, size);
    used += 4 + size;
    handled = true;
  }
  c.in.erase(0, used);
  return handled;
}

void StoreServer::Impl::handle(Client& c, const char* body, uint32_t size) {
  FrameReader r(body, size);
  uint8_t op = 0;
  r.u8(&op);
  FrameWriter reply;
  auto malformed = [&] {
    drop(c, str("opcode ", int(op), ": operands do not fill the frame of ", size, " bytes exactly"));
  };
  auto read_keys = [&](std::vector<std::string>* keys) {
    uint32_t n = 0;
    if (!r.u32(&n) || n > r.left() / 4) return false;  // each key takes at least its length
    keys->resize(n);
    for (auto& k : *keys)
      if (!r.str(&k)) return false;
    return r.at_end();
  };
  switch (op) {
    case kSet: {
      std::string key, value;
      if (!r.str(&key) || !r.str(&value) || !r.at_end()) return malformed();
      data[key] = std::move(value);
      reply.u8(kReplyOk);
      break;
    }
    case kGet: {
      std::string key;
      if (!r.str(&key) || !r.at_end()) return malformed();
      auto it = data.find(key);
      if (it == data.end()) {
        c.waiting = true;
        c.wait_op = kGet;
        c.wait_keys = {key};
        return;
      }
      reply.u8(kReplyOk).str(it->second);
      break;
    }
    case kWait:
    case kCheck: {
      std::vector<std::string> keys;
      if (!read_keys(&keys)) return malformed();
      bool present = all_present(keys);
      if (op == kWait && !present) {
        c.waiting = true;
        c.wait_op = kWait;
        c.wait_keys = std::move(keys);
        return;
      }
      reply.u8(kReplyOk);
      if (op == kCheck) reply.u8(present ? 1 : 0);
      break;
    }
    case kAdd: {
      std::string key;
      int64_t delta = 0;
      if (!r.str(&key) || !r.i64(&delta) || !r.at_end()) return malformed();
      int64_t value = 0;
      auto it = data.find(key);
      if (it != data.end()) {
        const std::string& text = it->second;
        errno = 0;
        char* end = nullptr;
        long long v = std::strtoll(text.c_str(), &end, 10);
        if (text.empty() || errno != 0 || end != text.c_str() + text.size()) {
          reply.u8(kReplyFailed).str(str("add to key ", quoted(key), ": its value ", quoted(text),
                                         " is not a decimal integer"));
          break;
        }
        value = v;
      }
      if (__builtin_add_overflow(value, delta, &value)) {
        reply.u8(kReplyFailed).str(str("add ", delta, " to key ", quoted(key), " overflows 64 bits"));
        break;
      }
      data[key] = std::to_string(value);
      reply.u8(kReplyOk).i64(value);
      break;
    }
    default:
      drop(c, str("unknown opcode ", int(op), " in a frame of ", size, " bytes"));
      return;
  }
  c.out += reply.frame();
}

// Serves every complete frame and every parked request whose keys now exist, until a pass
// changes nothing (a SET may release a request parked earlier in the list).
void StoreServer::Impl::answer_all() {
  bool progress = true;
  while (progress) {
    progress = false;
    for (auto& c : clients) {
      if (c->dead) continue;
      if (c->waiting && all_present(c->wait_keys)) {
        FrameWriter reply;
        reply.u8(kReplyOk);
        if (c->wait_op == kGet) reply.str(data[c->wait_keys[0]]);
        c->out += reply.frame();
        c->waiting = false;
        c->wait_keys.clear();
        progress = true;
      }
      if (serve(*c)) progress = true;
    }
  }
  for (auto& c : clients)
    if (!c->dead && !c->out.empty()) flush(*c);
}

void StoreServer::Impl::flush(Client& c) {
  size_t sent = 0;
  while (sent < c.out.size()) {
    ssize_t n = ::send(c.fd, c.out.data() + sent, c.out.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    c.dead = true;  // the client went away; nothing to report
    return;
  }
  c.out.erase(0, sent);
  if (c.out.size() > 4 * (size_t{kMaxFrameBytes} + 4)) drop(c, str(c.out.size(), " bytes of replies left unread"));
}

StoreServer::StoreServer(int port, Logger log) : impl_(std::make_unique<Impl>(std::move(log))) {
  impl_->listen_on(port);
  int pipe_fds[2];
  MPT_CHECK(::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) == 0, Status::kDistributed,
            "store server: cannot create its wake-up pipe: ", std::strerror(errno));
  impl_->wake_read = pipe_fds[0];
  impl_->wake_write = pipe_fds[1];
  impl_->thread = std::thread([impl = impl_.get()] { impl->run(); });
}

StoreServer::~StoreServer() {
  char byte = 1;
  while (::write(impl_->wake_write, &byte, 1) < 0 && errno == EINTR) {
  }
  impl_->thread.join();
}

int StoreServer::port() const { return impl_->port; }

// ---------------------------------------------------------------------------------------
// Client

struct Store::Impl {
  std::string host;
  int port;
  double timeout_s;
  int64_t rank;
  std::mutex mu;  // serialises calls
  int fd = -1;
  std::string lost;  // why the server connection was lost; every later call fails with it

  ~Impl() { close_fd(); }

  std::string where() const { return str("store ", host, ":", port, ": rank ", rank); }
  Clock::time_point deadline() const {
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  }
  void close_fd() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  [[noreturn]] void lose(const std::string& what, const std::string& why) {
    close_fd();
    lost = why;
    fail(Status::kDistributed, where(), ": ", what, ": lost the connection to the store server (", why, ")");
  }

  int try_connect(Clock::time_point deadline, std::string* why);
  void connect(Clock::time_point deadline, const std::string& what);
  bool wait_ready(short events, Clock::time_point deadline);
  bool send_all(const std::string& bytes, Clock::time_point deadline, const std::string& what);
  bool recv_exact(char* p, size_t n, Clock::time_point deadline, const std::string& what);
  bool exchange(const FrameWriter& request, std::string* reply, Clock::time_point deadline, const std::string& what);
  std::string call(const FrameWriter& request, const std::string& what) {
    std::string reply;
    if (!exchange(request, &reply, deadline(), what))
      fail(Status::kDistributed, where(), ": ", what, ": no reply from the store server within ", seconds_text(timeout_s));
    return reply;
  }
  std::vector<std::string> missing(const std::vector<std::string>& keys, const std::string& what);
};

int Store::Impl::try_connect(Clock::time_point deadline, std::string* why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* list = nullptr;
  int rv = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &list);
  if (rv != 0) {
    *why = str("cannot resolve ", host, ": ", gai_strerror(rv));
    return -1;
  }
  int result = -1;
  for (addrinfo* ai = list; ai != nullptr && result < 0; ai = ai->ai_next) {
    int s = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (s < 0) {
      *why = std::strerror(errno);
      continue;
    }
    int err = 0;
    if (::connect(s, ai->ai_addr, ai->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{s, POLLOUT, 0};
        int n = ::poll(&p, 1, std::min(ms_until(deadline), 2000));
        socklen_t len = sizeof(err);
        if (n <= 0) err = ETIMEDOUT;
        else if (getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      }
    }
    if (err != 0) {
      *why = std::strerror(err);
      ::close(s);
      continue;
    }
    int on = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    result = s;
  }
  freeaddrinfo(list);
  return result;
}

// Retries until the deadline: rank 0's server may start after the other ranks.
void Store::Impl::connect(Clock::time_point deadline, const std::string& what) {
  std::string why = "not tried";
  auto pause = std::chrono::milliseconds(10);
  for (;;) {
    fd = try_connect(deadline, &why);
    if (fd >= 0) return;
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - Clock::now()));
    pause = std::min(pause * 2, std::chrono::milliseconds(250));
  }
  fail(Status::kDistributed, where(), ": ", what, ": no store server answered within ", seconds_text(timeout_s), " (",
       why, ")");
}

bool Store::Impl::wait_ready(short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, ms_until(deadline));
    if (n > 0) return true;  // ready, or an error the next send/recv reports
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || Clock::now() >= deadline) return false;
  }
}

bool Store::Impl::send_all(const std::string& bytes, Clock::time_point deadline, const std::string& what) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_ready(POLLOUT, deadline)) return false;
    } else {
      lose(what, std::strerror(errno));
    }
  }
  return true;
}

bool Store::Impl::recv_exact(char* p, size_t n, Clock::time_point deadline, const std::string& what) {
  size_t got = 0;
  while (got < n) {
    ssize_t k = ::recv(fd, p + got, n - got, 0);
    if (k > 0) {
      got += static_cast<size_t>(k);
    } else if (k == 0) {
      lose(what, "the server closed the connection");
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(POLLIN, deadline)) return false;
    } else {
      lose(what, std::strerror(errno));
    }
  }
  return true;
}

// Sends `request` and reads the reply's operands into *reply. Returns false when the
// deadline passes first; the connection is then dropped and the next call reconnects.
bool Store::Impl::exchange(const FrameWriter& request, std::string* reply, Clock::time_point deadline,
                           const std::string& what) {
  if (!lost.empty())
    fail(Status::kDistributed, where(), ": ", what, ": the connection to the store server was lost earlier (", lost,
         ")");
  MPT_CHECK(request.body_size() <= kMaxFrameBytes, Status::kInvalidArgument, where(), ": ", what, ": request of ",
            request.body_size(), " bytes exceeds the store's 64 MiB frame limit");
  if (fd < 0) connect(deadline, what);
  char head[4];
  if (!send_all(request.frame(), deadline, what) || !recv_exact(head, 4, deadline, what)) {
    close_fd();
    return false;
  }
  uint32_t size = load_u32(head);
  if (size == 0 || size > kMaxFrameBytes) lose(what, str("malformed reply of ", size, " bytes"));
  std::string body(size, '\0');
  if (!recv_exact(body.data(), size, deadline, what)) {
    close_fd();
    return false;
  }
  if (static_cast<uint8_t>(body[0]) == kReplyFailed) {
    FrameReader r(body.data() + 1, body.size() - 1);
    std::string message;
    if (!r.str(&message)) lose(what, "malformed error reply");
    fail(Status::kInvalidArgument, where(), ": ", message);
  }
  if (static_cast<uint8_t>(body[0]) != kReplyOk) lose(what, str("reply with unknown status ", int(body[0])));
  reply->assign(body, 1);
  return true;
}

// Which of `keys` are absent now (asked one by one, after a wait for them timed out).
std::vector<std::string> Store::Impl::missing(const std::vector<std::string>& keys, const std::string& what) {
  std::vector<std::string> absent;
  for (const auto& key : keys) {
    FrameWriter w;
    w.u8(kCheck).u32(1).str(key);
    std::string reply = call(w, what);
    if (reply.size() != 1) lose(what, "malformed reply to a check");
    if (reply[0] == 0) absent.push_back(key);
  }
  return absent;
}

Store::Store(const std::string& host, int port, double timeout_s, int64_t rank) : impl_(std::make_unique<Impl>()) {
  MPT_CHECK(!host.empty(), Status::kInvalidArgument, "store: the server host is empty");
  MPT_CHECK(port >= 1 && port <= 65535, Status::kInvalidArgument, "store ", host, ": port ", port,
            " is not in 1..65535");
  MPT_CHECK(timeout_s > 0, Status::kInvalidArgument, "store ", host, ":", port, ": timeout ", timeout_s,
            " s is not positive");
  MPT_CHECK(rank >= 0, Status::kInvalidArgument, "store ", host, ":", port, ": rank ", rank, " is negative");
  impl_->host = host;
  impl_->port = port;
  impl_->timeout_s = timeout_s;
  impl_->rank = rank;
  impl_->connect(impl_->deadline(), "connect");
}

Store::~Store() = default;

void Store::set(const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FrameWriter w;
  w.u8(kSet).str(key).str(value);
  impl_->call(w, "set " + quoted(key));
}

std::string Store::get(const std::string& key) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FrameWriter w;
  w.u8(kGet).str(key);
  std::string what = "get " + quoted(key);
  std::string reply;
  if (!impl_->exchange(w, &reply, impl_->deadline(), what))
    fail(Status::kDistributed, impl_->where(), ": ", what, ": the key was not set within ",
         seconds_text(impl_->timeout_s));
  FrameReader r(reply.data(), reply.size());
  std::string value;
  if (!r.str(&value) || !r.at_end()) impl_->lose(what, "malformed reply");
  return value;
}

void Store::wait(const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FrameWriter w;
  w.u8(kWait).u32(static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) w.str(k);
  std::string what = keys.size() == 1 ? "wait for " + quoted(keys[0]) : str("wait for ", keys.size(), " keys");
  std::string reply;
  if (impl_->exchange(w, &reply, impl_->deadline(), what)) return;
  std::vector<std::string> absent;
  for (const auto& k : impl_->missing(keys, what)) absent.push_back(quoted(k));
  fail(Status::kDistributed, impl_->where(), ": ", what, ": timed out after ", seconds_text(impl_->timeout_s),
       "; never set: ", list_text(absent));
}

bool Store::check(const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FrameWriter w;
  w.u8(kCheck).u32(static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) w.str(k);
  std::string reply = impl_->call(w, "check");
  if (reply.size() != 1) impl_->lose("check", "malformed reply");
  return reply[0] != 0;
}

int64_t Store::add(const std::string& key, int64_t delta) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FrameWriter w;
  w.u8(kAdd).str(key).i64(delta);
  std::string what = "add to " + quoted(key);
  std::string reply = impl_->call(w, what);
  FrameReader r(reply.data(), reply.size());
  int64_t value = 0;
  if (!r.i64(&value) || !r.at_end()) impl_->lose(what, "malformed reply");
  return value;
}

void Store::wait_ranks(const std::string& prefix, int64_t rank, int64_t world, const std::string& value) {
  MPT_CHECK(world >= 1 && rank >= 0 && rank < world, Status::kInvalidArgument, impl_->where(), ": wait_ranks ",
            quoted(prefix), ": rank ", rank, " is outside a world of size ", world);
  set(prefix + "/" + std::to_string(rank), value);
  std::vector<std::string> keys;
  for (int64_t r = 0; r < world; ++r) keys.push_back(prefix + "/" + std::to_string(r));
  std::lock_guard<std::mutex> lock(impl_->mu);
  FrameWriter w;
  w.u8(kWait).u32(static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) w.str(k);
  std::string what = "wait_ranks " + quoted(prefix);
  std::string reply;
  if (impl_->exchange(w, &reply, impl_->deadline(), what)) return;
  std::vector<std::string> absent = impl_->missing(keys, what);
  std::vector<std::string> ranks;
  for (const auto& k : absent) ranks.push_back(k.substr(prefix.size() + 1));
  fail(Status::kDistributed, impl_->where(), ": ", what, ": ", ranks.size() == 1 ? "rank " : "ranks ",
       list_text(ranks), " never arrived within ",
       seconds_text(impl_->timeout_s), " (", world - static_cast<int64_t>(ranks.size()), " of ", world,
       " arrived)");
}

double Store::timeout_s() const { return impl_->timeout_s; }
int64_t Store::rank() const { return impl_->rank; }
const std::string& Store::host() const { return impl_->host; }

}  // namespace mpt::dist
