// Sharded checkpoints: the whole API (save, load, latest) in one include.
#pragma once

#include "ckpt/checkpoint_reader.h"
#include "ckpt/checkpoint_writer.h"
