// AuTR multi-scale deformable attention (MSDA): the CPU kernel (float32), used by the ONNX Runtime
// custom-op library (plugins/ort/autr_ort_ops.cpp).
//
// Plain C++17, no dependencies. Semantics are those of ms_deform_attn.h / DESIGN.md "MSDA op contract":
//   value               [N, S, M, D]        S = sum_l H_l * W_l
//   spatial_shapes      [L, 2]   int32      (H_l, W_l)
//   level_start_index   [L]      int32      offset of level l along S
//   sampling_locations  [N, Lq, M, L, P, 2] (x, y), normalised to [0, 1]
//   attention_weights   [N, Lq, M, L, P]
//   output              [N, Lq, M * D]
// out[n, q, m*D + d] = sum_{l,p} w[n,q,m,l,p] * bilinear(value[n, level l, m, d], x*W_l - 0.5, y*H_l - 0.5),
// corners outside the level contribute zero (grid_sample, align_corners=False, padding_mode="zeros").
//
// Work is split into "rows": row = n * Lq + q, one query of one batch item (all its heads). A caller
// (ONNX Runtime's intra-op thread pool) runs disjoint row ranges concurrently; the kernel itself never
// starts a thread. The SIMD path (AVX2 + FMA + F16C) is chosen at run time, so the same build runs on any
// x86-64 CPU (and compiles elsewhere with the portable path only).
#pragma once

#include "ms_deform_attn_problem.h"

#include <cstdint>
#include <string>

namespace autr
{
namespace msda
{
namespace cpu
{

using msda::Problem; // ms_deform_attn_problem.h

enum class Isa : int32_t
{
    kGeneric = 0, // portable C++ (the compiler's baseline vector ISA, SSE2 on x86-64)
    kAvx2 = 1,    // AVX2 + FMA + F16C, x86-64 only
};

// Best path this CPU (and OS) supports.
Isa detectIsa();
// Best path, unless $AUTR_MSDA_CPU_ISA says "generic" (forces the portable path; "avx2" asks for AVX2 and
// falls back to generic where the CPU lacks it). Read on every call, so a new kernel can be forced.
Isa selectIsa();
char const* isaName(Isa isa);

// "" when the sizes are usable (positive sizes, every tensor below 2^62 bytes), else the reason.
std::string checkProblem(Problem const& p);
// "" when spatial_shapes / level_start_index (host memory, L entries) describe S positions, else the reason.
// The kernel reads value only at offsets these two tensors produce, so this check keeps it inside value.
std::string checkLevels(Problem const& p, int32_t const* spatialShapes, int32_t const* levelStartIndex);

// Rows per parallel task: enough work per task (~64k multiply-adds) to amortise the scheduling.
int64_t rowsPerTask(Problem const& p);

// Compute rows [row0, row0 + rows). `value`, `spatialShapes`, `levelStartIndex` are the whole tensors;
// `samplingLocations`, `attentionWeights` and `output` point at row `row0` (so a caller may pass a slice).
void forwardRows(Isa isa, Problem const& p, float const* value, int32_t const* spatialShapes,
    int32_t const* levelStartIndex, float const* samplingLocations, float const* attentionWeights, float* output,
    int64_t row0, int64_t rows);

// IEEE binary16 <-> binary32, round to nearest even (NaN/Inf preserved). `half` holds the raw bits.
void halfToFloat(Isa isa, uint16_t const* src, float* dst, int64_t count);
void floatToHalf(Isa isa, float const* src, uint16_t* dst, int64_t count);

} // namespace cpu
} // namespace msda
} // namespace autr
