#include "ckpt/checkpoint_prune.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "ckpt/checkpoint_index.h"
#include "ckpt/checkpoint_reader.h"
#include "ckpt/file_io.h"
#include "core/error.h"

namespace mpt::ckpt {
namespace {

constexpr char kTrashPrefix[] = ".trash_";

// Removes a tree; returns why it could not, or an empty string.
std::string remove_all_reason(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  return ec ? ec.message() : std::string();
}

std::string join_reasons(const std::vector<std::string>& reasons) {
  std::string out;
  for (const std::string& r : reasons) out += (out.empty() ? "" : "; ") + r;
  return out;
}

}  // namespace

void prune_checkpoints(const std::string& save_dir, int64_t keep) {
  MPT_CHECK(keep >= 1, Status::kInvalidArgument, "checkpoint.most_recent_k = ", keep, " for '", save_dir,
            "': at least one checkpoint must be kept");
  // Read before anything is touched: a malformed latest file stops the prune here.
  const std::optional<int64_t> latest = latest_iteration(save_dir);

  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(save_dir, ec))
    names.push_back(entry.path().filename().string());
  if (ec) fail(Status::kIoError, save_dir, ": cannot list directory: ", ec.message());

  const std::string what = str("checkpoint.most_recent_k = ", keep, ": ");
  std::vector<std::string> failures;
  for (const std::string& name : names) {
    if (name.rfind(kTrashPrefix, 0) != 0) continue;  // left by a prune that crashed
    const std::string path = join_path(save_dir, name);
    const std::string reason = remove_all_reason(path);
    if (!reason.empty()) failures.push_back(str(what, "cannot remove leftover ", path, ": ", reason));
  }

  std::vector<std::pair<int64_t, std::string>> complete;  // (iteration, directory name)
  for (const std::string& name : names) {
    const std::optional<int64_t> iteration = parse_iteration_dir_name(name);
    const std::string path = join_path(save_dir, name);
    if (iteration && is_directory(path) && path_exists(join_path(path, kIndexFile)))
      complete.emplace_back(*iteration, name);
  }
  std::sort(complete.begin(), complete.end(), std::greater<>());

  // Move every old checkpoint out of its name first, durably, then delete the files.
  std::vector<std::pair<std::string, std::string>> trash;  // (checkpoint, trash path)
  for (size_t i = static_cast<size_t>(keep); i < complete.size(); ++i) {
    const auto& [iteration, name] = complete[i];
    if (latest && iteration == *latest) continue;
    const std::string path = join_path(save_dir, name);
    const std::string aside = join_path(save_dir, kTrashPrefix + name);
    try {
      rename_path(path, aside);
      trash.emplace_back(path, aside);
    } catch (const Error& e) {
      failures.push_back(str(what, "cannot remove old checkpoint ", path, ": ", e.what()));
    }
  }
  if (!trash.empty()) {
    try {
      fsync_directory(save_dir);
    } catch (const Error& e) {
      // Deleting files of a directory whose rename may not survive a crash could leave a
      // damaged checkpoint under its name; the trash goes on the next prune instead.
      failures.push_back(str(what, e.what()));
      trash.clear();
    }
  }
  for (const auto& [path, aside] : trash) {
    const std::string reason = remove_all_reason(aside);
    if (!reason.empty())
      failures.push_back(str(what, "cannot remove old checkpoint ", path, " (moved to ", aside, "): ", reason));
  }
  MPT_CHECK(failures.empty(), Status::kIoError, join_reasons(failures));
}

}  // namespace mpt::ckpt
