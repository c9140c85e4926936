// The local launcher: /bin/sh ranks that report what they see, fail, ignore signals or get
// interrupted. Each launch runs in a forked child of the test whose stdout and stderr go to
// files, so that the test reads exactly what the launcher wrote and a launch that hangs
// fails the test instead of stalling it.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cli/launcher.h"
#include "core/error.h"
#include "test_errors.h"

namespace mpt::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A shell script run by every rank: argv for launch_local.
std::vector<std::string> shell(const std::string& script) { return {"/bin/sh", "-c", script}; }

bool wait_for_file(const fs::path& path, double timeout_s) {
  const auto start = Clock::now();
  while (!fs::exists(path)) {
    if (seconds_since(start) > timeout_s) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// True when the process is gone or a zombie.
bool is_dead(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(stat, text)) return true;
  const size_t close = text.rfind(')');
  return close != std::string::npos && close + 2 < text.size() && text[close + 2] == 'Z';
}

struct Outcome {
  int exit_code = -1;  // the launcher's exit status; 128 + signal if it was killed
  std::string out, err;
  double seconds = 0;
};

class LauncherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "mpt-launcher-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    if (launcher_ > 0) {
      ::kill(launcher_, SIGKILL);
      ::waitpid(launcher_, nullptr, 0);
    }
    fs::remove_all(dir_);
  }

  // Forks a child that sets `env`, points its stdout and stderr at files and returns
  // launch_local's result as its exit status (99 after printing an mpt::Error).
  void start(const std::vector<std::string>& argv, const LaunchOptions& options,
             const std::vector<std::pair<std::string, std::string>>& env = {}) {
    std::fflush(stdout);
    std::fflush(stderr);
    started_ = Clock::now();
    launcher_ = ::fork();
    ASSERT_GE(launcher_, 0);
    if (launcher_ != 0) return;
    const int out = ::open((dir_ / "launcher.out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = ::open((dir_ / "launcher.err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0 || err < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) ::_exit(98);
    for (const auto& [name, value] : env) ::setenv(name.c_str(), value.c_str(), 1);
    int code = 99;
    try {
      code = launch_local(argv, options);
    } catch (const Error& e) {
      const std::string text = std::string("error: ") + e.what() + "\n";
      [[maybe_unused]] const ssize_t n = ::write(2, text.data(), text.size());
    }
    ::_exit(code);
  }

  // Waits for the launcher (killing it after timeout_s) and collects what it wrote.
  Outcome finish(double timeout_s = 10) {
    Outcome o;
    int status = 0;
    for (;;) {
      const pid_t w = ::waitpid(launcher_, &status, WNOHANG);
      if (w == launcher_) break;
      if (seconds_since(started_) > timeout_s) {
        ADD_FAILURE() << "the launcher did not finish within " << timeout_s << " s";
        ::kill(launcher_, SIGKILL);
        ::waitpid(launcher_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    launcher_ = -1;
    o.seconds = seconds_since(started_);
    o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    o.out = read_text(dir_ / "launcher.out");
    o.err = read_text(dir_ / "launcher.err");
    return o;
  }

  Outcome run(const std::vector<std::string>& argv, const LaunchOptions& options,
              const std::vector<std::pair<std::string, std::string>>& env = {}) {
    start(argv, options, env);
    return finish();
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
  pid_t launcher_ = -1;
  Clock::time_point started_;
};

// --- the environment of each rank ---------------------------------------------------------

using LauncherEnvironment = LauncherTest;

TEST_F(LauncherEnvironment, EachRankSeesItsPlaceInTheJobAndInheritsTheRest) {
  LaunchOptions o;
  o.nproc = 3;
  const Outcome r = run(shell("echo \"$RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $GROUP_RANK "
                              "$GROUP_WORLD_SIZE $MASTER_ADDR $MASTER_PORT $MPT_LAUNCH_TEST\""),
                        o, {{"MPT_LAUNCH_TEST", "inherited"}, {"RANK", "7"}, {"WORLD_SIZE", "9"}});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  const std::regex line(R"(\[rank(\d)\]: (\d) (\d) 3 3 0 1 127\.0\.0\.1 (\d+) inherited)");
  std::set<int> ranks, ports;
  for (const std::string& l : lines_of(r.out)) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(l, m, line)) << "unexpected line '" << l << "'";
    EXPECT_EQ(m[1], m[2]) << l;  // the prefix names the rank that wrote the line
    EXPECT_EQ(m[2], m[3]) << l;  // one node: LOCAL_RANK = RANK
    ranks.insert(std::stoi(m[2]));
    ports.insert(std::stoi(m[4]));
  }
  EXPECT_EQ(ranks, (std::set<int>{0, 1, 2}));
  ASSERT_EQ(ports.size(), 1u) << "every rank must get the same MASTER_PORT";
  EXPECT_GE(*ports.begin(), 1);
  EXPECT_LE(*ports.begin(), 65535);
}

TEST_F(LauncherEnvironment, ExplicitAddressAndPortAreHandedToEveryRank) {
  LaunchOptions o;
  o.nproc = 2;
  o.master_addr = "10.1.2.3";
  o.master_port = 29613;
  const Outcome r = run(shell("echo \"$MASTER_ADDR:$MASTER_PORT\""), o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::multiset<std::string> got;
  for (const std::string& l : lines_of(r.out)) got.insert(l);
  EXPECT_EQ(got, (std::multiset<std::string>{"[rank0]: 10.1.2.3:29613", "[rank1]: 10.1.2.3:29613"}));
}

TEST(LauncherPort, FreePortCanBeBound) {
  const int port = pick_free_port();
  ASSERT_GE(port, 1);
  ASSERT_LE(port, 65535);
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(s, 0);
  sockaddr_in a;
  std::memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(static_cast<uint16_t>(port));
  EXPECT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  ::close(s);
}

// --- output -------------------------------------------------------------------------------

using LauncherOutput = LauncherTest;

// Per rank, the lines after "[rankK]: " in order; fails on any line another rank's bytes
// got into (its text names the rank that wrote it).
std::map<int, std::vector<std::string>> lines_by_rank(const std::string& text) {
  std::map<int, std::vector<std::string>> by_rank;
  for (const std::string& l : lines_of(text)) {
    // "[rankK]: rK ...", without std::regex, which recurses per character on long lines.
    const bool well_formed = l.size() >= 13 && l.compare(0, 5, "[rank") == 0 && std::isdigit(l[5]) &&
                             l.compare(6, 3, "]: ") == 0 && l[9] == 'r' && l[10] == l[5] && l[11] == ' ';
    if (!well_formed) {
      ADD_FAILURE() << "malformed or mixed line '" << l.substr(0, 200) << "'";
      continue;
    }
    by_rank[l[5] - '0'].push_back(l.substr(9));
  }
  return by_rank;
}

TEST_F(LauncherOutput, EveryLineIsPrefixedCompleteAndOnItsOwnStream) {
  LaunchOptions o;
  o.nproc = 2;
  const Outcome r = run(shell("i=0; while [ $i -lt 10000 ]; do echo \"r$RANK line $i\"; "
                              "[ $((i % 5)) = 0 ] && echo \"r$RANK err $i\" >&2; i=$((i+1)); done; "
                              "printf 'r%s partial' \"$RANK\""),
                        o);
  ASSERT_EQ(r.exit_code, 0) << r.err.substr(0, 2000);
  const auto out = lines_by_rank(r.out);
  const auto err = lines_by_rank(r.err);
  ASSERT_EQ(out.size(), 2u);
  ASSERT_EQ(err.size(), 2u);
  for (int rank = 0; rank < 2; ++rank) {
    const std::string tag = "r" + std::to_string(rank);
    std::vector<std::string> want_out, want_err;
    for (int i = 0; i < 10000; ++i) {
      want_out.push_back(tag + " line " + std::to_string(i));
      if (i % 5 == 0) want_err.push_back(tag + " err " + std::to_string(i));
    }
    want_out.push_back(tag + " partial");  // the final line without a newline gets one
    EXPECT_EQ(out.at(rank), want_out) << "stdout of rank " << rank;
    EXPECT_EQ(err.at(rank), want_err) << "stderr of rank " << rank;
  }
  EXPECT_EQ(r.out.back(), '\n');
}

TEST_F(LauncherOutput, LongLinesAreSplitIntoPrefixedPieces) {
  LaunchOptions o;
  o.nproc = 1;
  o.max_line_bytes = 1000;
  const Outcome r = run(shell("printf r0; head -c 2497 /dev/zero | tr '\\0' x; printf '\\nr0 after\\n'"), o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string p = "[rank0]: ";
  const std::string xs(2497, 'x');
  const std::string joined = "r0" + xs;
  EXPECT_EQ(lines_of(r.out), (std::vector<std::string>{p + joined.substr(0, 1000), p + joined.substr(1000, 1000),
                                                        p + joined.substr(2000), p + "r0 after"}));
}

TEST_F(LauncherOutput, LinesUpToTheLimitStayWhole) {
  LaunchOptions o;
  o.nproc = 2;
  const Outcome r = run(shell("printf \"r$RANK \"; head -c 60000 /dev/zero | tr '\\0' y; echo"), o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = lines_by_rank(r.out);
  for (int rank = 0; rank < 2; ++rank)
    EXPECT_EQ(out.at(rank), std::vector<std::string>{"r" + std::to_string(rank) + " " + std::string(60000, 'y')});
}

// A rank's background child inherits its pipes; the launch ends with the rank anyway.
TEST_F(LauncherOutput, BackgroundChildHoldingThePipeDoesNotDelayTheEnd) {
  LaunchOptions o;
  o.nproc = 1;
  const Outcome r = run(shell("echo r0 first; printf 'r0 partial'; sleep 5 & exit 0"), o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LT(r.seconds, 3.0) << "the launcher waited for the end of the rank's pipes";
  EXPECT_EQ(lines_by_rank(r.out)[0], (std::vector<std::string>{"r0 first", "r0 partial"}));
}

TEST_F(LauncherOutput, WithoutPrefixRanksWriteStraightThrough) {
  LaunchOptions o;
  o.nproc = 2;
  o.prefix_output = false;
  const Outcome r = run(shell("echo \"plain $RANK\"; echo \"oops $RANK\" >&2"), o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = lines_of(r.out), err = lines_of(r.err);
  EXPECT_EQ(std::multiset<std::string>(out.begin(), out.end()),
            (std::multiset<std::string>{"plain 0", "plain 1"}));
  EXPECT_EQ(std::multiset<std::string>(err.begin(), err.end()),
            (std::multiset<std::string>{"oops 0", "oops 1"}));
}

// --- failures -----------------------------------------------------------------------------

using LauncherFailure = LauncherTest;

TEST_F(LauncherFailure, FailingRankStopsTheOthersQuickly) {
  LaunchOptions o;
  o.nproc = 3;
  const Outcome r = run(shell("if [ \"$RANK\" = 1 ]; then echo dying; exit 3; fi; exec sleep 30"), o);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_LT(r.seconds, 3.0) << "the sleeping ranks were not stopped";
  EXPECT_TRUE(contains(r.err, "mptrain: rank 1 exited with status 3\n")) << r.err;
  EXPECT_FALSE(contains(r.err, "rank 0 ")) << "a stopped rank was reported as a failure: " << r.err;
  EXPECT_FALSE(contains(r.err, "SIGKILL\n")) << "sleep stops on SIGTERM: " << r.err;
  EXPECT_EQ(r.out, "[rank1]: dying\n");
}

TEST_F(LauncherFailure, RankKilledBySignalIsReportedAsSuch) {
  LaunchOptions o;
  o.nproc = 2;
  const Outcome r = run(shell("if [ \"$RANK\" = 0 ]; then kill -KILL $$; fi; exec sleep 30"), o);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_LT(r.seconds, 3.0);
  EXPECT_TRUE(contains(r.err, "mptrain: rank 0 was killed by signal SIGKILL\n")) << r.err;
}

TEST_F(LauncherFailure, RankIgnoringSigtermIsKilledAfterTheGrace) {
  LaunchOptions o;
  o.nproc = 2;
  o.kill_grace_s = 0.5;
  const std::string ready = path("ready");
  const Outcome r = run(shell("if [ \"$RANK\" = 0 ]; then trap '' TERM; : > '" + ready +
                              "'; exec sleep 30; fi; "
                              "while [ ! -e '" + ready + "' ]; do sleep 0.01; done; exit 2"),
                        o);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_GE(r.seconds, 0.5) << "SIGKILL came before the grace period ended";
  EXPECT_LT(r.seconds, 4.0);
  EXPECT_TRUE(contains(r.err, "mptrain: rank 1 exited with status 2\n")) << r.err;
  EXPECT_TRUE(contains(r.err, "rank 0 is still running 0.5 s after being stopped; sending SIGKILL")) << r.err;
}

TEST_F(LauncherFailure, ProgramThatCannotStartIsAnError) {
  LaunchOptions o;
  o.nproc = 2;
  const Outcome r = run({"/nonexistent/mpt-launcher-test"}, o);
  EXPECT_EQ(r.exit_code, 99);
  EXPECT_TRUE(contains(r.err, "cannot start rank 0: cannot execute '/nonexistent/mpt-launcher-test': "
                              "No such file or directory")) << r.err;
}

TEST(LauncherOptions, InvalidOptionsAreRejected) {
  LaunchOptions o;
  o.nproc = 0;
  EXPECT_TRUE(contains(error_of([&] { launch_local({"/bin/true"}, o); }).what(), "nproc must be at least 1, got 0"));
  o = LaunchOptions{};
  o.master_port = 70000;
  EXPECT_TRUE(contains(error_of([&] { launch_local({"/bin/true"}, o); }).what(), "master_port"));
  o = LaunchOptions{};
  o.kill_grace_s = -1;
  EXPECT_TRUE(contains(error_of([&] { launch_local({"/bin/true"}, o); }).what(), "kill_grace_s"));
  EXPECT_TRUE(contains(error_of([&] { launch_local({}, LaunchOptions{}); }).what(), "argv is empty"));
}

TEST(LauncherOptions, SignalNames) {
  EXPECT_EQ(signal_name(SIGKILL), "SIGKILL");
  EXPECT_EQ(signal_name(SIGSEGV), "SIGSEGV");
  EXPECT_EQ(signal_name(SIGRTMIN + 3), "signal " + std::to_string(SIGRTMIN + 3));
}

// --- signals ------------------------------------------------------------------------------

class LauncherSignals : public LauncherTest, public ::testing::WithParamInterface<int> {};

TEST_P(LauncherSignals, SignalToTheLauncherReachesEveryRank) {
  const int sig = GetParam();
  const std::string name = sig == SIGINT ? "INT" : "TERM";
  LaunchOptions o;
  o.nproc = 2;
  start(shell("sleep 30 & p=$!; trap 'echo $RANK > \"" + path("got.") + "$RANK\"; kill $p; exit 0' " + name +
              "; : > \"" + path("ready.") + "$RANK\"; wait $p"),
        o);
  ASSERT_TRUE(wait_for_file(path("ready.0"), 5) && wait_for_file(path("ready.1"), 5)) << "ranks did not start";
  ASSERT_EQ(::kill(launcher_, sig), 0);
  const Outcome r = finish();
  // Every rank stopped cleanly on it (as training does: the step, a checkpoint, status 0).
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LT(r.seconds, 4.0);
  EXPECT_EQ(read_text(path("got.0")), "0\n") << "rank 0 did not get the signal";
  EXPECT_EQ(read_text(path("got.1")), "1\n") << "rank 1 did not get the signal";
  EXPECT_TRUE(contains(r.err, "received " + signal_name(sig))) << r.err;
}

// A rank that does not end cleanly after the forwarded signal: the launcher reports the
// signal, 128 + S.
TEST_P(LauncherSignals, RankFailingAfterTheSignalGives128PlusIt) {
  const int sig = GetParam();
  const std::string name = sig == SIGINT ? "INT" : "TERM";
  LaunchOptions o;
  o.nproc = 2;
  start(shell("sleep 30 & p=$!; trap 'kill $p; exit 3' " + name + "; : > \"" + path("ready.") + "$RANK\"; wait $p"), o);
  ASSERT_TRUE(wait_for_file(path("ready.0"), 5) && wait_for_file(path("ready.1"), 5)) << "ranks did not start";
  ASSERT_EQ(::kill(launcher_, sig), 0);
  const Outcome r = finish();
  EXPECT_EQ(r.exit_code, 128 + sig) << r.err;
  EXPECT_TRUE(contains(r.err, "exited with status 3") || contains(r.err, "status 3")) << r.err;
}

INSTANTIATE_TEST_SUITE_P(IntAndTerm, LauncherSignals, ::testing::Values(SIGINT, SIGTERM),
                         [](const auto& info) { return signal_name(info.param).substr(3); });

using LauncherOrphans = LauncherTest;

TEST_F(LauncherOrphans, KilledLauncherTakesItsRanksDown) {
  LaunchOptions o;
  o.nproc = 2;
  start(shell("echo $$ > \"" + path("pid.") + "$RANK.tmp\"; mv \"" + path("pid.") + "$RANK.tmp\" \"" +
              path("pid.") + "$RANK\"; exec sleep 30"),
        o);
  ASSERT_TRUE(wait_for_file(path("pid.0"), 5) && wait_for_file(path("pid.1"), 5)) << "ranks did not start";
  const pid_t rank_pids[] = {std::stoi(read_text(path("pid.0"))), std::stoi(read_text(path("pid.1")))};
  ASSERT_EQ(::kill(launcher_, SIGKILL), 0);
  finish();
  for (pid_t pid : rank_pids) {
    const auto t = Clock::now();
    while (!is_dead(pid) && seconds_since(t) < 3) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    EXPECT_TRUE(is_dead(pid)) << "rank process " << pid << " outlived its launcher";
    if (!is_dead(pid)) ::kill(pid, SIGKILL);
  }
}

// In the calling process: the handlers it had before are back afterwards.
void test_handler(int) {}

TEST(LauncherInProcess, ReturnsZeroAndRestoresSignalHandlers) {
  struct sigaction mine, before_chld, after;
  std::memset(&mine, 0, sizeof mine);
  mine.sa_handler = test_handler;
  sigemptyset(&mine.sa_mask);
  struct sigaction before_int;
  ASSERT_EQ(::sigaction(SIGINT, &mine, &before_int), 0);
  ::sigaction(SIGCHLD, nullptr, &before_chld);

  LaunchOptions o;
  o.nproc = 2;
  EXPECT_EQ(launch_local(shell("exit 0"), o), 0);
  o.nproc = 1;
  EXPECT_EQ(launch_local(shell("exit 4"), o), 1);

  ::sigaction(SIGINT, nullptr, &after);
  EXPECT_EQ(after.sa_handler, &test_handler);
  ::sigaction(SIGCHLD, nullptr, &after);
  EXPECT_EQ(after.sa_handler, before_chld.sa_handler);
  ::sigaction(SIGINT, &before_int, nullptr);
}

}  // namespace
}  // namespace mpt::cli
