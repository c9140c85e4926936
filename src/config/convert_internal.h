// TOML values to recipe values, with the type checks shared by files and overrides.
#pragma once

#include <optional>
#include <string>

#include <toml++/toml.h>

#include "config/schema_internal.h"

namespace mpt::config {

// The node as the key's type: integers are accepted for float keys and a string for a
// list of strings; anything else that does not match returns nullopt and sets `error`
// to e.g. "expected an integer, got string \"four\"".
std::optional<Value> convert_node(const toml::node& node, const KeySpec& spec, std::string& error);

// "string \"four\"", "float 4.0", "array [1, 2]", "table".
std::string describe_node(const toml::node& node);

}  // namespace mpt::config
