// Did-you-mean for unknown recipe keys and sections.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace mpt::config {

// Optimal-string-alignment distance (adjacent swaps count 1), ignoring ASCII case.
size_t edit_distance(std::string_view a, std::string_view b);

// " (did you mean 'model.num_layers'?)", or "" when no known key is close. A key of the
// same name in another section is preferred: `train.lr` suggests 'optimizer.lr'.
std::string suggest_key(std::string_view unknown_full_name);

// " (did you mean 'model'?)", or "".
std::string suggest_section(std::string_view unknown_section);

}  // namespace mpt::config
