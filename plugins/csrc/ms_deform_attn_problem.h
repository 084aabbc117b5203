// AuTR multi-scale deformable attention (MSDA): the problem sizes, shared by the CUDA kernels
// (ms_deform_attn.h) and the CPU kernel (ms_deform_attn_cpu.h). Plain C++, no dependencies.
#pragma once

#include <cstdint>

namespace autr
{
namespace msda
{

struct Problem
{
    int64_t N{0};  // batch
    int64_t S{0};  // flattened spatial size of all levels
    int64_t M{0};  // heads
    int64_t D{0};  // channels per head
    int64_t L{0};  // levels
    int64_t P{0};  // points per level
    int64_t Lq{0}; // queries
};

} // namespace msda
} // namespace autr
