#include "cli/launcher.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string_view>
#include <utility>

#include "core/error.h"

extern char** environ;

namespace mpt::cli {
namespace {

using Clock = std::chrono::steady_clock;

// The signals the launcher handles while ranks run.
constexpr std::array<int, 3> kManagedSignals = {SIGINT, SIGTERM, SIGCHLD};

// The write end of the self-pipe: the signal handler's only state.
volatile std::sig_atomic_t g_signal_pipe = -1;

void on_signal(int signal_number) {
  const int saved_errno = errno;
  const unsigned char byte = static_cast<unsigned char>(signal_number);
  [[maybe_unused]] const ssize_t n = ::write(g_signal_pipe, &byte, 1);
  errno = saved_errno;
}

sigset_t managed_signal_set() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kManagedSignals) sigaddset(&set, s);
  return set;
}

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool open() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

struct Pipe {
  Fd read, write;
};

// A close-on-exec pipe whose ends are above 2, so that a child's dup2 onto its stdout or
// stderr never collides with them even when the launcher runs with those closed.
Pipe make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) fail(Status::kIoError, "launcher: pipe: ", std::strerror(errno));
  Pipe p{Fd(fds[0]), Fd(fds[1])};
  for (Fd* end : {&p.read, &p.write}) {
    if (end->get() > 2) continue;
    const int moved = ::fcntl(end->get(), F_DUPFD_CLOEXEC, 3);
    if (moved < 0) fail(Status::kIoError, "launcher: fcntl: ", std::strerror(errno));
    *end = Fd(moved);
  }
  return p;
}

void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
    fail(Status::kIoError, "launcher: fcntl: ", std::strerror(errno));
}

// Writes all of `data`; what cannot be written (a closed terminal or pipe) is dropped.
void write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, -1);
    } else {
      return;
    }
  }
}

void say(const std::string& message) { write_all(STDERR_FILENO, "mptrain: " + message + "\n"); }

// One output stream of one rank: the pipe's read end and the start of an unfinished line.
struct RankStream {
  Fd fd;
  int destination = -1;  // the launcher's STDOUT_FILENO or STDERR_FILENO
  std::string partial;
};

// Appends `data` and writes out every complete line with `prefix`, in one write per call
// so that another rank's bytes cannot land inside a line. A run of more than max_line
// bytes without a newline is written as a line of its own; at_end also writes the rest.
void write_lines(RankStream& s, const std::string& prefix, std::string_view data, bool at_end,
                 size_t max_line) {
  s.partial.append(data);
  std::string out;
  size_t begin = 0;
  while (begin < s.partial.size()) {
    const size_t newline = s.partial.find('\n', begin);
    const size_t length = (newline == std::string::npos ? s.partial.size() : newline) - begin;
    size_t take, next;
    if (length > max_line) {
      take = max_line;
      next = begin + max_line;
    } else if (newline != std::string::npos) {
      take = length;
      next = newline + 1;
    } else if (at_end) {
      take = length;
      next = s.partial.size();
    } else {
      break;
    }
    out.append(prefix).append(s.partial, begin, take).push_back('\n');
    begin = next;
  }
  s.partial.erase(0, begin);
  write_all(s.destination, out);
}

struct Rank {
  int index = 0;
  pid_t pid = -1;
  bool running = false;
  std::string prefix;  // "[rankK]: "
  RankStream out, err;
};

std::string describe_exit(int wait_status) {
  if (WIFEXITED(wait_status)) return str("exited with status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    std::string text = "was killed by signal " + signal_name(WTERMSIG(wait_status));
    if (WCOREDUMP(wait_status)) text += " (core dumped)";
    return text;
  }
  return str("ended with wait status ", wait_status);
}

bool succeeded(int wait_status) { return WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0; }

// Installs the self-pipe handlers and unblocks their signals for the calling thread;
// restores both on destruction.
class SignalScope {
 public:
  SignalScope() {
    MPT_CHECK(g_signal_pipe < 0, Status::kInvalidArgument,
              "launch_local: a launch is already running in this process");
    Pipe p = make_pipe();
    set_nonblocking(p.read.get());
    set_nonblocking(p.write.get());
    pipe_ = std::move(p);
    g_signal_pipe = pipe_.write.get();
    struct sigaction action;
    std::memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < kManagedSignals.size(); ++i) {
      action.sa_flags = SA_RESTART | (kManagedSignals[i] == SIGCHLD ? SA_NOCLDSTOP : 0);
      ::sigaction(kManagedSignals[i], &action, &saved_actions_[i]);
    }
    const sigset_t set = managed_signal_set();
    ::pthread_sigmask(SIG_UNBLOCK, &set, &saved_mask_);
  }
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;
  ~SignalScope() {
    ::pthread_sigmask(SIG_SETMASK, &saved_mask_, nullptr);
    for (size_t i = 0; i < kManagedSignals.size(); ++i)
      ::sigaction(kManagedSignals[i], &saved_actions_[i], nullptr);
    g_signal_pipe = -1;
  }

  int read_fd() const { return pipe_.read.get(); }

  // The signals received since the last call, in order.
  std::vector<int> take() {
    std::vector<int> signals;
    unsigned char buffer[64];
    for (;;) {
      const ssize_t n = ::read(pipe_.read.get(), buffer, sizeof buffer);
      if (n > 0) {
        signals.insert(signals.end(), buffer, buffer + n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        return signals;
      }
    }
  }

  // Keeps the handlers from running in a child between fork and exec.
  void block() {
    const sigset_t set = managed_signal_set();
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  }
  void unblock() {
    const sigset_t set = managed_signal_set();
    ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  }

 private:
  Pipe pipe_;
  std::array<struct sigaction, kManagedSignals.size()> saved_actions_{};
  sigset_t saved_mask_{};
};

// The child side of fork: only async-signal-safe calls until exec. On failure the errno
// goes to status_fd and the child exits 127.
[[noreturn]] void exec_rank(char* const* argv, char* const* envp, int out_fd, int err_fd,
                            int status_fd, pid_t launcher) {
  struct sigaction default_action;
  std::memset(&default_action, 0, sizeof default_action);
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);
  for (int s : kManagedSignals) ::sigaction(s, &default_action, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  int error = 0;
  // The launcher may have died before PDEATHSIG was armed: then nobody would stop us.
  if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) error = errno;
  if (error == 0 && ::getppid() != launcher) ::_exit(127);
  if (error == 0 && out_fd >= 0 && ::dup2(out_fd, STDOUT_FILENO) < 0) error = errno;
  if (error == 0 && err_fd >= 0 && ::dup2(err_fd, STDERR_FILENO) < 0) error = errno;
  if (error == 0) {
    ::execve(argv[0], argv, envp);
    error = errno;
  }
  [[maybe_unused]] const ssize_t n = ::write(status_fd, &error, sizeof error);
  ::_exit(127);
}

// The launcher's environment with the rendezvous variables of one rank in place of any
// inherited ones.
std::vector<std::string> rank_environment(int rank, const LaunchOptions& o, int port) {
  const std::vector<std::pair<std::string, std::string>> own = {
      {"RANK", std::to_string(rank)},          {"LOCAL_RANK", std::to_string(rank)},
      {"WORLD_SIZE", std::to_string(o.nproc)}, {"LOCAL_WORLD_SIZE", std::to_string(o.nproc)},
      {"GROUP_RANK", "0"},                     {"GROUP_WORLD_SIZE", "1"},
      {"MASTER_ADDR", o.master_addr},          {"MASTER_PORT", std::to_string(port)},
  };
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('='));
    const bool replaced =
        std::any_of(own.begin(), own.end(), [&](const auto& kv) { return kv.first == name; });
    if (!replaced) env.emplace_back(entry);
  }
  for (const auto& [name, value] : own) env.push_back(name + "=" + value);
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

// One run of launch_local. The destructor kills and reaps any rank still running, so no
// path out of launch_local (an exception included) leaves one behind.
class Launch {
 public:
  Launch(const std::vector<std::string>& argv, const LaunchOptions& options, int port)
      : argv_(argv), options_(options), port_(port) {}
  Launch(const Launch&) = delete;
  Launch& operator=(const Launch&) = delete;
  ~Launch() {
    for (Rank& r : ranks_) {
      if (!r.running) continue;
      ::kill(r.pid, SIGKILL);
      int status;
      while (::waitpid(r.pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }

  int run() {
    std::fflush(stdout);
    std::fflush(stderr);
    for (int k = 0; k < options_.nproc; ++k) start(k);
    while (any_running()) {
      wait_for_events();
      handle_signals();
      read_output();
      reap();
      enforce_kill_deadline();
    }
    // Every byte a rank wrote is in its pipes now; its background children may hold the
    // pipes open, so read what is there rather than wait for the end.
    for (Rank& r : ranks_) {
      for (RankStream* s : {&r.out, &r.err}) {
        if (!s->fd.open()) continue;
        drain(r, *s);
        write_lines(*s, r.prefix, {}, true, options_.max_line_bytes);
        s->fd.reset();
      }
    }
    handle_signals();
    return outcome_.value_or(0);
  }

 private:
  void start(int k) {
    Rank& r = ranks_.emplace_back();
    r.index = k;
    r.prefix = str("[rank", k, "]: ");
    std::vector<std::string> args = argv_;
    std::vector<std::string> env = rank_environment(k, options_, port_);
    const std::vector<char*> arg_ptrs = c_strings(args);
    const std::vector<char*> env_ptrs = c_strings(env);
    Pipe out, err;
    if (options_.prefix_output) {
      out = make_pipe();
      err = make_pipe();
    }
    Pipe exec_status = make_pipe();
    const pid_t launcher = ::getpid();

    signals_.block();
    const pid_t pid = ::fork();
    if (pid == 0)
      exec_rank(arg_ptrs.data(), env_ptrs.data(), out.write.get(), err.write.get(),
                exec_status.write.get(), launcher);
    const int fork_errno = errno;
    signals_.unblock();
    out.write.reset();
    err.write.reset();
    exec_status.write.reset();
    if (pid < 0) fail(Status::kIoError, "cannot start rank ", k, ": fork: ", std::strerror(fork_errno));
    r.pid = pid;
    r.running = true;
    if (options_.prefix_output) {
      set_nonblocking(out.read.get());
      set_nonblocking(err.read.get());
      r.out = RankStream{std::move(out.read), STDOUT_FILENO, {}};
      r.err = RankStream{std::move(err.read), STDERR_FILENO, {}};
    }

    // The status pipe closes on a successful exec; otherwise it carries the child's errno.
    int child_errno = 0;
    ssize_t n;
    while ((n = ::read(exec_status.read.get(), &child_errno, sizeof child_errno)) < 0 && errno == EINTR) {
    }
    if (n == static_cast<ssize_t>(sizeof child_errno)) {
      int status;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      r.running = false;
      fail(Status::kIoError, "cannot start rank ", k, ": cannot execute '", argv_[0],
           "': ", std::strerror(child_errno));
    }
  }

  bool any_running() const {
    return std::any_of(ranks_.begin(), ranks_.end(), [](const Rank& r) { return r.running; });
  }

  void wait_for_events() {
    std::vector<pollfd> fds;
    fds.push_back({signals_.read_fd(), POLLIN, 0});
    for (const Rank& r : ranks_)
      for (const RankStream* s : {&r.out, &r.err})
        if (s->fd.open()) fds.push_back({s->fd.get(), POLLIN, 0});
    int timeout_ms = -1;
    if (kill_at_) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(*kill_at_ - Clock::now());
      timeout_ms = static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
    }
    if (::poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR)
      fail(Status::kIoError, "launcher: poll: ", std::strerror(errno));
  }

  void handle_signals() {
    for (int s : signals_.take()) {
      if (s != SIGINT && s != SIGTERM) continue;
      // Ranks that train stop after their current step with a checkpoint and exit 0 (the
      // recipe's checkpoint.exit_signal_handler); the launcher then exits 0 too. That may
      // take a while, so the first signal sets no SIGKILL deadline; a second one is passed
      // on too (it stops a rank at once) and sets it.
      const bool first = !signalled_;
      if (first) signalled_ = 128 + s;
      if (!any_running()) continue;
      if (first) {
        say(str("received ", signal_name(s), "; forwarding it to the ranks (they stop after their current step; "
                "send it again to stop them at once)"));
      } else {
        say(str("received ", signal_name(s), " again; forwarding it to the ranks (SIGKILL after ",
                options_.kill_grace_s, " s)"));
      }
      stop_ranks(s, !first);
    }
  }

  // Reads what is ready on every stream; closes a stream at its end.
  void read_output() {
    for (Rank& r : ranks_)
      for (RankStream* s : {&r.out, &r.err})
        if (s->fd.open()) drain(r, *s);
  }

  void drain(Rank& r, RankStream& s) {
    char buffer[64 * 1024];
    for (;;) {
      const ssize_t n = ::read(s.fd.get(), buffer, sizeof buffer);
      if (n > 0) {
        write_lines(s, r.prefix, std::string_view(buffer, static_cast<size_t>(n)), false,
                    options_.max_line_bytes);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return;
      } else {
        write_lines(s, r.prefix, {}, true, options_.max_line_bytes);
        s.fd.reset();
        return;
      }
    }
  }

  void reap() {
    for (Rank& r : ranks_) {
      if (!r.running) continue;
      int status = 0;
      const pid_t w = ::waitpid(r.pid, &status, WNOHANG);
      if (w == 0 || (w < 0 && errno == EINTR)) continue;
      r.running = false;
      // w < 0: reaped by someone else (SIGCHLD set to SIG_IGN by another thread, say).
      if (w < 0)
        rank_failed(str("rank ", r.index, " cannot be waited for: ", std::strerror(errno)));
      else if (!succeeded(status))
        rank_failed(str("rank ", r.index, " ", describe_exit(status)));
    }
  }

  // Reports the first failure and stops the other ranks; later ones are consequences.
  void rank_failed(const std::string& message) {
    if (outcome_) return;
    outcome_ = signalled_ ? *signalled_ : 1;  // after a forwarded signal: stopped by it
    say(message);
    if (!any_running()) return;
    say(str("stopping the other ranks (SIGTERM, then SIGKILL after ", options_.kill_grace_s, " s)"));
    stop_ranks(SIGTERM);
  }

  // Sends the signal to every running rank; with `deadline`, SIGKILL follows after the grace.
  void stop_ranks(int signal_number, bool deadline = true) {
    for (const Rank& r : ranks_)
      if (r.running) ::kill(r.pid, signal_number);
    if (deadline && !kill_at_)
      kill_at_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(options_.kill_grace_s));
  }

  void enforce_kill_deadline() {
    if (!kill_at_ || Clock::now() < *kill_at_) return;
    kill_at_.reset();
    for (const Rank& r : ranks_) {
      if (!r.running) continue;
      say(str("rank ", r.index, " is still running ", options_.kill_grace_s,
              " s after being stopped; sending SIGKILL"));
      ::kill(r.pid, SIGKILL);
    }
  }

  const std::vector<std::string>& argv_;
  const LaunchOptions& options_;
  const int port_;
  SignalScope signals_;
  std::vector<Rank> ranks_;
  std::optional<Clock::time_point> kill_at_;  // when ranks told to stop get SIGKILL
  std::optional<int> outcome_;                // the status to return, set by the first failure
  std::optional<int> signalled_;              // 128 + the first SIGINT / SIGTERM forwarded
};

}  // namespace

std::string signal_name(int signal_number) {
  static const std::pair<int, const char*> kNames[] = {
      {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
      {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
      {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
      {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGCHLD, "SIGCHLD"},
      {SIGXCPU, "SIGXCPU"}, {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"},
  };
  for (const auto& [number, name] : kNames)
    if (number == signal_number) return name;
  return str("signal ", signal_number);
}

int pick_free_port() {
  const Fd socket_fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!socket_fd.open())
    fail(Status::kDistributed, "cannot pick a free port for MASTER_PORT: socket: ", std::strerror(errno));
  sockaddr_in address;
  std::memset(&address, 0, sizeof address);
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (::bind(socket_fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(socket_fd.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0)
    fail(Status::kDistributed, "cannot pick a free port for MASTER_PORT: ", std::strerror(errno));
  return ntohs(address.sin_port);
}

int launch_local(const std::vector<std::string>& argv, const LaunchOptions& options) {
  MPT_CHECK(options.nproc >= 1, Status::kInvalidArgument,
            "launch_local: nproc must be at least 1, got ", options.nproc);
  MPT_CHECK(!argv.empty() && !argv[0].empty(), Status::kInvalidArgument,
            "launch_local: no program to run (argv is empty)");
  MPT_CHECK(options.master_port >= 0 && options.master_port <= 65535, Status::kInvalidArgument,
            "launch_local: master_port must be in 0..65535, got ", options.master_port);
  MPT_CHECK(!options.master_addr.empty(), Status::kInvalidArgument, "launch_local: master_addr is empty");
  MPT_CHECK(std::isfinite(options.kill_grace_s) && options.kill_grace_s >= 0 &&
                options.kill_grace_s <= 86400,
            Status::kInvalidArgument, "launch_local: kill_grace_s must be in 0..86400 seconds, got ",
            options.kill_grace_s);
  MPT_CHECK(options.max_line_bytes >= 1, Status::kInvalidArgument,
            "launch_local: max_line_bytes must be at least 1");
  const int port = options.master_port != 0 ? options.master_port : pick_free_port();
  Launch launch(argv, options, port);
  return launch.run();
}

}  // namespace mpt::cli
