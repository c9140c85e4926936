// Saving and loading sharded checkpoints: round trips, regions assembled across shards,
// the latest pointer, atomic replacement and what a crashed save leaves behind.
#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/file_io.h"
#include "ckpt/safetensors.h"
#include "core/error.h"

namespace mpt::ckpt {
namespace {

namespace fs = std::filesystem;

class CkptRoundTrip : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mpt_ckpt_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    save_ = root_ + "/save";
  }
  void TearDown() override { fs::remove_all(root_); }

  std::vector<std::string> hidden_entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(save_))
      if (e.path().filename().string()[0] == '.') out.push_back(e.path().filename().string());
    return out;
  }

  std::string root_;
  std::string save_;
};

TensorSlice slice(const std::string& name, DType dtype, std::vector<int64_t> global,
                  std::vector<int64_t> offset, std::vector<int64_t> shape, const void* data,
                  int64_t file = 0) {
  return TensorSlice{name, dtype, std::move(global), std::move(offset), std::move(shape), data, file};
}

// A pid that certainly belonged to a process that has exited.
int64_t dead_pid() {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

template <typename T>
Status status_of(T&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.status();
  }
  return Status::kOk;
}

TEST_F(CkptRoundTrip, RoundTripSeveralDtypesAndShards) {
  // w: F32 [4, 6] saved as two row halves in two files.
  std::vector<float> w(24);
  for (int i = 0; i < 24; ++i) w[i] = 0.5f * i - 3.0f;
  std::vector<int32_t> b = {1, -2, 3, -4, 5};
  int64_t step = int64_t{1} << 40;
  std::vector<uint16_t> half = {0x3f80, 0xbf80, 0x0001};
  std::vector<uint8_t> bytes = {1, 2, 3, 4, 5, 6, 7};
  std::vector<TensorSlice> slices = {
      slice("w", DType::kF32, {4, 6}, {0, 0}, {2, 6}, w.data(), 0),
      slice("w", DType::kF32, {4, 6}, {2, 0}, {2, 6}, w.data() + 12, 1),
      slice("b", DType::kI32, {5}, {0}, {5}, b.data(), 0),
      slice("step", DType::kI64, {}, {}, {}, &step, 1),
      slice("half", DType::kBF16, {3}, {0}, {3}, half.data(), 0),
      slice("bytes", DType::kU8, {7}, {0}, {7}, bytes.data(), 1),
  };
  nlohmann::json meta = {{"consumed_samples", 1234}, {"recipe", "[model]\nnum_layers = 2\n"}};
  std::string dir = save_checkpoint(save_, 7, slices, meta);

  EXPECT_EQ(dir, save_ + "/iter_0000007");
  EXPECT_TRUE(fs::exists(dir + "/index.json"));
  EXPECT_TRUE(fs::exists(dir + "/shard_00000.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/shard_00001.safetensors"));
  EXPECT_TRUE(hidden_entries().empty());
  EXPECT_EQ(latest_iteration(save_), 7);

  // Shard files are plain safetensors with an 8-byte aligned data section.
  MappedFile shard(dir + "/shard_00001.safetensors");
  SafetensorsHeader h = parse_safetensors(shard.data(), shard.size(), shard.path());
  EXPECT_EQ(h.data_start % 8, 0u);
  EXPECT_NE(h.find("w@2,0"), nullptr);
  EXPECT_NE(h.find("step"), nullptr);

  CheckpointReader r(save_);
  EXPECT_EQ(r.iteration(), 7);
  EXPECT_EQ(r.directory(), dir);
  EXPECT_EQ(r.meta(), meta);
  EXPECT_EQ(r.tensor_names(), (std::vector<std::string>{"b", "bytes", "half", "step", "w"}));
  EXPECT_TRUE(r.has("w"));
  EXPECT_FALSE(r.has("x"));
  EXPECT_EQ(r.global_shape("w"), (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(r.dtype("half"), DType::kBF16);

  std::vector<float> w_back(24, 0);
  r.read("w", DType::kF32, {0, 0}, {4, 6}, w_back.data());
  EXPECT_EQ(w_back, w);
  // Rows 1-2, columns 2-4: one row from each file.
  std::vector<float> region(6, 0);
  r.read("w", DType::kF32, {1, 2}, {2, 3}, region.data());
  EXPECT_EQ(region, (std::vector<float>{w[8], w[9], w[10], w[14], w[15], w[16]}));
  std::vector<int32_t> b_back(3);
  r.read("b", DType::kI32, {1}, {3}, b_back.data());
  EXPECT_EQ(b_back, (std::vector<int32_t>{-2, 3, -4}));
  int64_t step_back = 0;
  r.read("step", DType::kI64, {}, {}, &step_back);
  EXPECT_EQ(step_back, step);
  std::vector<uint16_t> half_back(3);
  r.read("half", DType::kBF16, {0}, {3}, half_back.data());
  EXPECT_EQ(half_back, half);
  std::vector<uint8_t> bytes_back(7);
  r.read("bytes", DType::kU8, {0}, {7}, bytes_back.data());
  EXPECT_EQ(bytes_back, bytes);
}

TEST_F(CkptRoundTrip, AnyRegionOfAGridShardedTensorMatches) {
  // A [5, 7, 6] tensor cut into uneven blocks along all three axes, spread over 3 files.
  const std::vector<int64_t> g = {5, 7, 6};
  std::vector<int32_t> full(5 * 7 * 6);
  for (size_t i = 0; i < full.size(); ++i) full[i] = static_cast<int32_t>(i * 7 + 1);
  const std::vector<std::vector<int64_t>> cuts = {{0, 2, 5}, {0, 3, 4, 7}, {0, 1, 6}};
  std::vector<std::vector<int32_t>> blocks;
  std::vector<TensorSlice> slices;
  int64_t file = 0;
  for (size_t a = 0; a + 1 < cuts[0].size(); ++a)
    for (size_t b = 0; b + 1 < cuts[1].size(); ++b)
      for (size_t c = 0; c + 1 < cuts[2].size(); ++c) {
        std::vector<int64_t> off = {cuts[0][a], cuts[1][b], cuts[2][c]};
        std::vector<int64_t> shp = {cuts[0][a + 1] - off[0], cuts[1][b + 1] - off[1], cuts[2][c + 1] - off[2]};
        std::vector<int32_t> block;
        for (int64_t i = 0; i < shp[0]; ++i)
          for (int64_t j = 0; j < shp[1]; ++j)
            for (int64_t k = 0; k < shp[2]; ++k)
              block.push_back(full[((off[0] + i) * 7 + off[1] + j) * 6 + off[2] + k]);
        blocks.push_back(std::move(block));
        slices.push_back(slice("t", DType::kI32, g, off, shp, nullptr, file++ % 3));
      }
  for (size_t i = 0; i < slices.size(); ++i) slices[i].data = blocks[i].data();
  save_checkpoint(save_, 1, slices, nlohmann::json::object());

  CheckpointReader r(save_ + "/iter_0000001");
  std::mt19937 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int64_t> off(3), shp(3);
    for (int d = 0; d < 3; ++d) {
      off[d] = std::uniform_int_distribution<int64_t>(0, g[d] - 1)(rng);
      shp[d] = std::uniform_int_distribution<int64_t>(1, g[d] - off[d])(rng);
    }
    std::vector<int32_t> got(shp[0] * shp[1] * shp[2], -1), want;
    for (int64_t i = 0; i < shp[0]; ++i)
      for (int64_t j = 0; j < shp[1]; ++j)
        for (int64_t k = 0; k < shp[2]; ++k) want.push_back(full[((off[0] + i) * 7 + off[1] + j) * 6 + off[2] + k]);
    r.read("t", DType::kI32, off, shp, got.data());
    ASSERT_EQ(got, want) << "offset " << off[0] << "," << off[1] << "," << off[2];
  }
}

TEST_F(CkptRoundTrip, LatestFollowsTheNewestAndReplaceIsAtomic) {
  EXPECT_FALSE(latest_iteration(save_).has_value());
  std::vector<float> a = {1, 2, 3}, b = {4, 5, 6}, c = {7, 8, 9};
  save_checkpoint(save_, 10, {slice("x", DType::kF32, {3}, {0}, {3}, a.data())}, {{"tag", "a"}});
  save_checkpoint(save_, 20, {slice("x", DType::kF32, {3}, {0}, {3}, b.data())}, {{"tag", "b"}});
  EXPECT_EQ(latest_iteration(save_), 20);
  std::ifstream latest(save_ + "/latest_checkpointed_iteration.txt");
  std::string text((std::istreambuf_iterator<char>(latest)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "20");

  // Replacing iteration 20 in place.
  save_checkpoint(save_, 20, {slice("x", DType::kF32, {3}, {0}, {3}, c.data())}, {{"tag", "c"}});
  CheckpointReader r(save_);
  EXPECT_EQ(r.iteration(), 20);
  EXPECT_EQ(r.meta()["tag"], "c");
  std::vector<float> got(3);
  r.read("x", DType::kF32, {0}, {3}, got.data());
  EXPECT_EQ(got, c);
  EXPECT_TRUE(hidden_entries().empty());

  // The older checkpoint is still there and readable by its own directory.
  CheckpointReader old(save_ + "/iter_0000010");
  old.read("x", DType::kF32, {0}, {3}, got.data());
  EXPECT_EQ(got, a);
}

TEST_F(CkptRoundTrip, CrashedSaveIsIgnoredAndCleanedUp) {
  std::vector<float> a = {1, 2};
  save_checkpoint(save_, 5, {slice("x", DType::kF32, {2}, {0}, {2}, a.data())}, {});
  // A save of iteration 6 that died before its rename, one of 5 that died mid-write, and
  // one still running in a live process.
  const std::string host = host_name();
  const std::string dead6 = save_ + "/.tmp_iter_0000006_" + host + "_" + std::to_string(dead_pid());
  const std::string dead5 = save_ + "/.tmp_iter_0000005_" + host + "_" + std::to_string(dead_pid());
  const std::string live = save_ + "/.tmp_iter_0000007_" + host + "_" + std::to_string(::getppid());
  const std::string dead_latest =
      save_ + "/.latest_checkpointed_iteration.txt.tmp_" + host + "_" + std::to_string(dead_pid());
  std::ofstream(dead_latest) << "6";
  for (const std::string& d : {dead6, dead5, live}) {
    fs::create_directories(d);
    std::ofstream(d + "/shard_00000.safetensors") << "partial";
    std::ofstream(d + "/index.json") << "{\"format\": ";
  }
  EXPECT_EQ(latest_iteration(save_), 5);
  CheckpointReader r(save_);
  EXPECT_EQ(r.iteration(), 5);
  std::vector<float> got(2);
  r.read("x", DType::kF32, {0}, {2}, got.data());
  EXPECT_EQ(got, a);

  save_checkpoint(save_, 8, {slice("x", DType::kF32, {2}, {0}, {2}, a.data())}, {});
  EXPECT_FALSE(fs::exists(dead6));
  EXPECT_FALSE(fs::exists(dead5));
  EXPECT_FALSE(fs::exists(dead_latest));
  EXPECT_TRUE(fs::exists(live));  // its owner may still finish
  EXPECT_TRUE(fs::exists(save_ + "/iter_0000005/index.json"));
}

TEST_F(CkptRoundTrip, ReplaceInterruptedBetweenRenamesIsRecovered) {
  std::vector<float> a = {1, 2};
  save_checkpoint(save_, 4, {slice("x", DType::kF32, {2}, {0}, {2}, a.data())}, {});
  // As if a process set iteration 4 aside to replace it and died before moving the new one in.
  const std::string aside = save_ + "/.old_iter_0000004_" + host_name() + "_" + std::to_string(dead_pid());
  fs::rename(save_ + "/iter_0000004", aside);
  EXPECT_EQ(status_of([&] { CheckpointReader r(save_); }), Status::kCorruptData);

  save_checkpoint(save_, 9, {slice("x", DType::kF32, {2}, {0}, {2}, a.data())}, {});
  EXPECT_FALSE(fs::exists(aside));
  CheckpointReader r(save_ + "/iter_0000004");
  EXPECT_EQ(r.iteration(), 4);
}

TEST_F(CkptRoundTrip, WriteFailureLeavesThePreviousCheckpoint) {
  std::vector<float> a = {1, 2, 3};
  save_checkpoint(save_, 3, {slice("x", DType::kF32, {3}, {0}, {3}, a.data())}, {});

  // A file-size limit makes write() fail with EFBIG part way through the shard.
  std::vector<float> big(1 << 16, 1.0f);
  struct rlimit old_limit;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit small = old_limit;
  small.rlim_cur = 4096;
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  Status st = Status::kOk;
  std::string message;
  try {
    save_checkpoint(save_, 3, {slice("x", DType::kF32, {65536}, {0}, {65536}, big.data())}, {});
  } catch (const Error& e) {
    st = e.status();
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  ::signal(SIGXFSZ, old_handler);

  EXPECT_EQ(st, Status::kIoError);
  EXPECT_NE(message.find("shard_00000.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find(std::strerror(EFBIG)), std::string::npos) << message;
  EXPECT_TRUE(hidden_entries().empty());
  CheckpointReader r(save_);
  std::vector<float> got(3);
  r.read("x", DType::kF32, {0}, {3}, got.data());
  EXPECT_EQ(got, a);
}

TEST_F(CkptRoundTrip, UnwritableSaveDirectoryIsAnIoError) {
  fs::create_directories(root_);
  std::ofstream(root_ + "/file") << "x";
  float v = 1;
  try {
    save_checkpoint(root_ + "/file/save", 1, {slice("x", DType::kF32, {1}, {0}, {1}, &v)}, {});
    FAIL() << "saved under a regular file";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kIoError);
    EXPECT_NE(std::string(e.what()).find(root_ + "/file"), std::string::npos) << e.what();
  }
}

TEST_F(CkptRoundTrip, BadSlicesAreRejectedBeforeAnyWrite) {
  std::vector<float> d(8, 0);
  auto rejected = [&](std::vector<TensorSlice> slices, const std::string& needle) {
    try {
      save_checkpoint(save_, 1, slices, {});
      ADD_FAILURE() << "accepted; expected " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), Status::kInvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(save_ + "/iter_0000001"));
  };
  rejected({slice("x", DType::kF32, {4}, {0}, {2}, d.data())}, "cover 2 of the 4 elements");
  rejected({slice("x", DType::kF32, {4}, {0}, {3}, d.data()), slice("x", DType::kF32, {4}, {2}, {2}, d.data(), 1)},
           "overlap");
  rejected({slice("x", DType::kF32, {4}, {2}, {3}, d.data())}, "outside global_shape");
  rejected({slice("x", DType::kF32, {4}, {0}, {2}, d.data()), slice("x", DType::kF32, {5}, {2}, {2}, d.data())},
           "is saved as F32 [4] and as F32 [5]");
  rejected({slice("x", DType::kF32, {4, 1}, {0}, {4}, d.data())}, "must have 2 axes");
  rejected({slice("x", DType::kF32, {4}, {0}, {4}, nullptr)}, "data is null");
  rejected({slice("", DType::kF32, {4}, {0}, {4}, d.data())}, "empty name");
  rejected({slice("x", DType::kF32, {4}, {0}, {4}, d.data(), -1)}, "negative");
  EXPECT_EQ(status_of([&] { save_checkpoint(save_, -1, {}, {}); }), Status::kInvalidArgument);
  // Found only after the shards are written: the staging directory must go too.
  EXPECT_EQ(status_of([&] {
              save_checkpoint(save_, 1, {slice("x", DType::kF32, {4}, {0}, {4}, d.data())}, {{"k", "\xff"}});
            }),
            Status::kInvalidArgument);
  EXPECT_FALSE(fs::exists(save_ + "/iter_0000001"));
  EXPECT_TRUE(hidden_entries().empty());
  nlohmann::json deep = 1;
  for (int i = 0; i < 300; ++i) deep = nlohmann::json::array({deep});
  EXPECT_EQ(status_of([&] {
              save_checkpoint(save_, 1, {slice("x", DType::kF32, {4}, {0}, {4}, d.data())}, {{"deep", deep}});
            }),
            Status::kInvalidArgument);
  EXPECT_FALSE(fs::exists(save_ + "/iter_0000001"));
}

TEST_F(CkptRoundTrip, BadReadRequestsAreInvalidArguments) {
  std::vector<float> d(6, 0);
  save_checkpoint(save_, 2, {slice("x", DType::kF32, {2, 3}, {0, 0}, {2, 3}, d.data())}, {});
  CheckpointReader r(save_);
  std::vector<float> out(6);
  EXPECT_EQ(status_of([&] { r.read("y", DType::kF32, {0, 0}, {1, 1}, out.data()); }), Status::kInvalidArgument);
  EXPECT_EQ(status_of([&] { r.read("x", DType::kI32, {0, 0}, {1, 1}, out.data()); }), Status::kInvalidArgument);
  EXPECT_EQ(status_of([&] { r.read("x", DType::kF32, {1, 1}, {2, 1}, out.data()); }), Status::kInvalidArgument);
  EXPECT_EQ(status_of([&] { r.read("x", DType::kF32, {0}, {2}, out.data()); }), Status::kInvalidArgument);
  EXPECT_EQ(status_of([&] { r.global_shape("y"); }), Status::kInvalidArgument);
  r.read("x", DType::kF32, {1, 3}, {1, 0}, nullptr);  // an empty region reads nothing
}

}  // namespace
}  // namespace mpt::ckpt
