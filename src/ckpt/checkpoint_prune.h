// Keeping only the most recent checkpoints of a save directory (checkpoint.most_recent_k).
#pragma once

#include <cstdint>
#include <string>

namespace mpt::ckpt {

// Keeps the `keep` newest complete checkpoints of SAVE_DIR (iter_XXXXXXX directories that
// hold index.json, ordered by iteration) and removes the older ones. The iteration that
// latest_checkpointed_iteration.txt names is never removed, even when older. Staging
// directories, iteration directories without index.json and any other entry are left
// alone. Each directory is first renamed to a hidden SAVE_DIR/.trash_iter_XXXXXXX (and
// the rename made durable) before its files are deleted, so a crash part-way never leaves
// a half-removed directory under a checkpoint's name; trash left by an earlier crash is
// removed on the next call. Call it after a save has committed, with no other save or
// prune of the same directory under way.
// Errors: kInvalidArgument (keep < 1); kCorruptData (a malformed latest file, before
// anything is removed); kIoError (SAVE_DIR cannot be listed, or a directory could not be
// renamed or removed, naming each; the others are still removed and the kept checkpoints
// are untouched).
void prune_checkpoints(const std::string& save_dir, int64_t keep);

}  // namespace mpt::ckpt
