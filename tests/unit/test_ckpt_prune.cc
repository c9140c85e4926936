// checkpoint.most_recent_k: pruning a save directory of real checkpoints down to the newest
// ones, never the one the latest file names, and never anything that is not a checkpoint.
#include <gtest/gtest.h>

#include <grp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/checkpoint_prune.h"
#include "ckpt/file_io.h"
#include "core/error.h"
#include "test_errors.h"

namespace mpt::ckpt {
namespace {

namespace fs = std::filesystem;

void spit(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

class CkptPrune : public ::testing::Test {
 protected:
  // Checkpoints at iterations 10, 20, 30 and 40, each holding "w" = its iteration; the
  // latest file names 40.
  void SetUp() override {
    char tmpl[] = "/tmp/mpt_ckpt_prune_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    save_ = tmpl;
    for (int64_t it : {10, 20, 30, 40}) save(it);
  }
  void TearDown() override {
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(save_, ec))
      fs::permissions(e.path(), fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(save_, ec);
  }

  void save(int64_t iteration) {
    std::vector<float> w(6, static_cast<float>(iteration));
    save_checkpoint(save_, iteration, {{"w", DType::kF32, {2, 3}, {0, 0}, {2, 3}, w.data(), 0}},
                    {{"iteration", iteration}});
  }

  std::string dir(int64_t iteration) const { return join_path(save_, iteration_dir_name(iteration)); }

  // Every entry of the save directory, hidden ones included.
  std::set<std::string> entries() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(save_)) names.insert(e.path().filename().string());
    return names;
  }

  std::set<std::string> with_latest(std::set<std::string> names) const {
    names.insert(kLatestFile);
    return names;
  }

  // The checkpoint at `iteration` opens, verifies and holds its own values.
  void expect_intact(int64_t iteration) const {
    CheckpointReader r(dir(iteration));
    EXPECT_EQ(r.iteration(), iteration);
    std::vector<float> w(6, -1.0f);
    r.read("w", DType::kF32, {0, 0}, {2, 3}, w.data());
    EXPECT_EQ(w, std::vector<float>(6, static_cast<float>(iteration)));
  }

  std::string save_;
};

TEST_F(CkptPrune, KeepsTheNewestK) {
  prune_checkpoints(save_, 2);
  EXPECT_EQ(entries(), with_latest({"iter_0000030", "iter_0000040"}));
  expect_intact(30);
  expect_intact(40);
  CheckpointReader latest(save_);
  EXPECT_EQ(latest.iteration(), 40);
}

TEST_F(CkptPrune, KeepOneLeavesOnlyTheLatest) {
  prune_checkpoints(save_, 1);
  EXPECT_EQ(entries(), with_latest({"iter_0000040"}));
  expect_intact(40);
  // Pruning again, and after the next save, keeps exactly one.
  prune_checkpoints(save_, 1);
  EXPECT_EQ(entries(), with_latest({"iter_0000040"}));
  save(50);
  prune_checkpoints(save_, 1);
  EXPECT_EQ(entries(), with_latest({"iter_0000050"}));
  expect_intact(50);
}

TEST_F(CkptPrune, KeepMoreThanThereAreRemovesNothing) {
  prune_checkpoints(save_, 4);
  prune_checkpoints(save_, 100);
  EXPECT_EQ(entries(), with_latest({"iter_0000010", "iter_0000020", "iter_0000030", "iter_0000040"}));
  for (int64_t it : {10, 20, 30, 40}) expect_intact(it);
}

TEST_F(CkptPrune, NeverRemovesTheLatestEvenWhenOlder) {
  write_file_atomic(join_path(save_, kLatestFile), "20\n");
  prune_checkpoints(save_, 1);
  EXPECT_EQ(entries(), with_latest({"iter_0000020", "iter_0000040"}));
  expect_intact(20);
  expect_intact(40);
  CheckpointReader latest(save_);
  EXPECT_EQ(latest.iteration(), 20);
}

TEST_F(CkptPrune, OrdersByIterationNotByName) {
  // Iteration 100 sorts before 40 as text; it is the newest.
  save(100);
  prune_checkpoints(save_, 2);
  EXPECT_EQ(entries(), with_latest({"iter_0000040", "iter_0000100"}));
}

TEST_F(CkptPrune, WithoutALatestFileKeepsTheNewest) {
  fs::remove(join_path(save_, kLatestFile));
  prune_checkpoints(save_, 1);
  EXPECT_EQ(entries(), std::set<std::string>{"iter_0000040"});
}

TEST_F(CkptPrune, LeavesWhatIsNotACompleteCheckpoint) {
  // A save under way (or dead), an iteration directory without index.json, names that are
  // not iterations, a plain file with an iteration's name, and the writer's temporaries.
  const std::vector<std::string> dirs = {".tmp_iter_0000005_host_123", ".old_iter_0000006_host_123",
                                         "iter_0000001", "iter_12", "iter_abcdefg", "iteration_0000002",
                                         "notes"};
  for (const std::string& d : dirs) {
    fs::create_directories(join_path(save_, d));
    spit(join_path(save_, d + "/shard_00000.safetensors"), "x");
  }
  spit(join_path(save_, "iter_0000003"), "a file");
  spit(join_path(save_, ".latest_checkpointed_iteration.txt.tmp_host_1"), "7");
  std::set<std::string> before = entries();
  prune_checkpoints(save_, 1);
  std::set<std::string> want = before;
  for (const char* gone : {"iter_0000010", "iter_0000020", "iter_0000030"}) want.erase(gone);
  EXPECT_EQ(entries(), want);
  for (const std::string& d : dirs) EXPECT_TRUE(fs::exists(join_path(save_, d + "/shard_00000.safetensors"))) << d;
}

TEST_F(CkptPrune, RemovesLeftoverTrash) {
  // A prune that crashed part-way left a half-deleted directory under its hidden name.
  const std::string trash = join_path(save_, ".trash_iter_0000005");
  fs::create_directories(trash + "/nested/deeper");
  spit(trash + "/nested/deeper/shard_00000.safetensors", "half");
  spit(trash + "/index.json", "{}");
  prune_checkpoints(save_, 10);
  EXPECT_EQ(entries(), with_latest({"iter_0000010", "iter_0000020", "iter_0000030", "iter_0000040"}));

  // A trash name that collides with the next one to remove does not stop it either.
  fs::create_directories(join_path(save_, ".trash_iter_0000010/x"));
  prune_checkpoints(save_, 3);
  EXPECT_EQ(entries(), with_latest({"iter_0000020", "iter_0000030", "iter_0000040"}));
}

TEST_F(CkptPrune, RejectsKeepingNothing) {
  for (int64_t keep : {0, -1}) {
    Error e = error_of([&] { prune_checkpoints(save_, keep); });
    EXPECT_EQ(e.status(), Status::kInvalidArgument);
    EXPECT_TRUE(contains(e.what(), "most_recent_k = " + std::to_string(keep))) << e.what();
  }
  EXPECT_EQ(entries().size(), 5u);
}

TEST_F(CkptPrune, MalformedLatestFileRemovesNothing) {
  write_file_atomic(join_path(save_, kLatestFile), "forty");
  Error e = error_of([&] { prune_checkpoints(save_, 1); });
  EXPECT_EQ(e.status(), Status::kCorruptData);
  EXPECT_TRUE(contains(e.what(), kLatestFile)) << e.what();
  EXPECT_EQ(entries(), with_latest({"iter_0000010", "iter_0000020", "iter_0000030", "iter_0000040"}));
}

TEST_F(CkptPrune, MissingSaveDirectoryIsAnIoError) {
  Error e = error_of([&] { prune_checkpoints(save_ + "/nowhere", 1); });
  EXPECT_EQ(e.status(), Status::kIoError);
  EXPECT_TRUE(contains(e.what(), save_ + "/nowhere")) << e.what();
}

// Runs prune_checkpoints(save_dir, keep) in a child process without the right to write
// where `locked` says (root, which may write anywhere, drops to nobody first). Returns the
// child's error message, or "" when it succeeded; nullopt when the child could not drop
// its privileges.
std::optional<std::string> prune_without_permission(const std::string& save_dir, int64_t keep) {
  int fds[2];
  if (::pipe(fds) != 0) return std::nullopt;
  const pid_t pid = ::fork();
  if (pid < 0) return std::nullopt;
  if (pid == 0) {
    ::close(fds[0]);
    constexpr uid_t kNobody = 65534;
    if (::geteuid() == 0 && (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0))
      ::_exit(77);
    std::string message;
    try {
      prune_checkpoints(save_dir, keep);
    } catch (const Error& e) {
      message = std::string(e.status() == Status::kIoError ? "kIoError: " : "other status: ") + e.what();
    }
    const ssize_t n = ::write(fds[1], message.data(), message.size());
    ::_exit(n == static_cast<ssize_t>(message.size()) ? 0 : 1);
  }
  ::close(fds[1]);
  std::string message;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof(buf))) > 0;) message.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
  return message;
}

// Hands the save directory to nobody when running as root, so that only the modes the
// test sets stand in the child's way.
void give_to_nobody(const std::string& save_dir) {
  if (::geteuid() != 0) return;
  ASSERT_EQ(::chown(save_dir.c_str(), 65534, 65534), 0);
  for (const auto& e : fs::recursive_directory_iterator(save_dir))
    ASSERT_EQ(::lchown(e.path().c_str(), 65534, 65534), 0) << e.path();
}

TEST_F(CkptPrune, UnremovableDirectoryIsReportedAndTheRestPruned) {
  // iter_0000010 holds a directory whose files cannot be deleted.
  const std::string locked = dir(10) + "/locked";
  fs::create_directories(locked);
  spit(locked + "/file", "x");
  give_to_nobody(save_);
  ASSERT_EQ(::chmod(locked.c_str(), 0555), 0);
  std::optional<std::string> message = prune_without_permission(save_, 1);
  if (!message) GTEST_SKIP() << "cannot run a process without write permission here";
  const std::string trash = join_path(save_, ".trash_iter_0000010");
  EXPECT_TRUE(contains(*message, "kIoError: ")) << *message;
  EXPECT_TRUE(contains(*message, "most_recent_k = 1")) << *message;
  EXPECT_TRUE(contains(*message, dir(10))) << *message;
  EXPECT_TRUE(contains(*message, trash)) << *message;
  EXPECT_TRUE(contains(*message, "ermission denied")) << *message;
  // The others are gone, the kept checkpoint is intact, and no directory that is partly
  // deleted keeps a checkpoint's name.
  EXPECT_EQ(entries(), with_latest({".trash_iter_0000010", "iter_0000040"}));
  expect_intact(40);

  // Once it can be deleted, the next prune clears the trash.
  ASSERT_EQ(::chmod((trash + "/locked").c_str(), 0755), 0);
  prune_checkpoints(save_, 1);
  EXPECT_EQ(entries(), with_latest({"iter_0000040"}));
}

TEST_F(CkptPrune, UnrenamableDirectoryIsReportedAndNothingIsLost) {
  give_to_nobody(save_);
  ASSERT_EQ(::chmod(save_.c_str(), 0555), 0);
  std::optional<std::string> message = prune_without_permission(save_, 2);
  ASSERT_EQ(::chmod(save_.c_str(), 0755), 0);
  if (!message) GTEST_SKIP() << "cannot run a process without write permission here";
  EXPECT_TRUE(contains(*message, "kIoError: ")) << *message;
  EXPECT_TRUE(contains(*message, dir(10))) << *message;
  EXPECT_TRUE(contains(*message, dir(20))) << *message;
  EXPECT_FALSE(contains(*message, dir(30))) << *message;
  EXPECT_EQ(entries(), with_latest({"iter_0000010", "iter_0000020", "iter_0000030", "iter_0000040"}));
  for (int64_t it : {10, 20, 30, 40}) expect_intact(it);
}

}  // namespace
}  // namespace mpt::ckpt
