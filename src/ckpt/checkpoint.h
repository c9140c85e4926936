// Sharded checkpoints: the whole API (save, load, latest, pruning) in one include.
#pragma once

#include "ckpt/checkpoint_prune.h"
#include "ckpt/checkpoint_reader.h"
#include "ckpt/checkpoint_writer.h"
