// CRC-32C (Castagnoli), the checksum of checkpoint files and of TensorBoard's record framing.
// Uses the SSE4.2 instruction when the CPU has it, else a slice-by-8 table; both agree bit
// for bit.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mpt::ckpt {

// Extends `crc` (the value returned for the bytes before) over `size` more bytes.
// crc32c_extend(0, p, n) is the CRC of p[0..n); streaming in pieces gives the same value.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size);

inline uint32_t crc32c(const void* data, size_t size) { return crc32c_extend(0, data, size); }

// The portable table version, exposed so tests can check it against the hardware path.
uint32_t crc32c_extend_portable(uint32_t crc, const void* data, size_t size);

}  // namespace mpt::ckpt
