// AuTR multi-scale deformable attention (MSDA): the CPU kernel. Contract in ms_deform_attn_cpu.h.
//
// Memory layout drives the loop order. value is [N, S, M, D]: the D channels of one (position, head) are
// contiguous, so one bilinear corner is one contiguous row of D floats, and a sample is four
// "weight * row" multiply-adds into the D-float accumulator of its output row (n, q, m).
//
// Paths, fastest first (rowsAnyD picks one per call):
// - blocked (AVX2 only; D a multiple of 8 up to 64, M*L*P <= 512, value[n] < 2^31 floats): per row (n, q),
//   a first pass computes the corner weights and addresses of all M*L*P samples 8 at a time in vector
//   lanes, branch-free; a second pass, head by head, does the multiply-adds with the accumulator in
//   registers (the output row is written once).
// - one sample at a time, branch-free, accumulator in registers (D a multiple of 8 up to 64).
// - one sample at a time, corners outside skipped, accumulating in the output row (any D).
// Corners outside the map read a row of zeros instead of branching, so random locations near the borders
// cost no mispredictions. The vectors are GCC/Clang vector extensions: the same source becomes AVX2 + FMA
// code in the functions compiled with target("avx2,fma,f16c") and SSE2 code in the portable ones; which
// runs is decided at run time (detectIsa), so the library never executes an instruction the CPU lacks.
//
// Sampling matches the CUDA kernel (ms_deform_attn.cuh): h = y*H - 0.5, w = x*W - 0.5; a sample with
// h <= -1, w <= -1, h >= H or w >= W (or a NaN coordinate) contributes nothing; otherwise each of the four
// corners (floor(h) + {0,1}, floor(w) + {0,1}) that lies inside the map adds its bilinear weight times the
// attention weight. Summation order differs from the reference (float32 rounding only).
#include "ms_deform_attn_cpu.h"

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#define AUTR_MSDA_X86 1
#include <immintrin.h>
#else
#define AUTR_MSDA_X86 0
#endif

#define AUTR_MSDA_INLINE inline __attribute__((always_inline))

namespace autr
{
namespace msda
{
namespace cpu
{
namespace
{

// 8 floats; operations compile to one AVX instruction under target("avx2"), two SSE ones otherwise.
typedef float V8 __attribute__((vector_size(32)));
typedef float V4 __attribute__((vector_size(16)));

typedef int32_t V8i __attribute__((vector_size(32)));
typedef uint32_t V8u32 __attribute__((vector_size(32)));
typedef int64_t V8i64 __attribute__((vector_size(64)));
typedef uint64_t V8u64 __attribute__((vector_size(64)));

AUTR_MSDA_INLINE V8 load8(float const* p)
{
    V8 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

AUTR_MSDA_INLINE void store8(float* p, V8 v)
{
    std::memcpy(p, &v, sizeof(v));
}

template <class V, class T>
AUTR_MSDA_INLINE V loadAs(T const* p)
{
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

template <class V, class T>
AUTR_MSDA_INLINE void storeAs(T* p, V v)
{
    std::memcpy(p, &v, sizeof(v));
}

// Even / odd lanes of the 16 floats a:b, i.e. the x and y of 8 interleaved (x, y) locations.
AUTR_MSDA_INLINE V8 evenLanes(V8 a, V8 b)
{
#if defined(__clang__)
    return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
#else
    return __builtin_shuffle(a, b, V8i{0, 2, 4, 6, 8, 10, 12, 14});
#endif
}

AUTR_MSDA_INLINE V8 oddLanes(V8 a, V8 b)
{
#if defined(__clang__)
    return __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
#else
    return __builtin_shuffle(a, b, V8i{1, 3, 5, 7, 9, 11, 13, 15});
#endif
}

// Accumulator of one output row of D = 8*NV channels, held in vector registers: V8 (one AVX register)
// on the AVX2 path, V4 (one SSE register; GCC lowers 32-byte vectors badly without AVX) on the portable one.
// add4 takes the four corners of one sample at once: corners outside the map point at a row of zeros, so
// every sample costs the same branch-free sequence wherever it lands (random locations near the borders
// would otherwise mispredict a branch per corner).
template <int NV, class Vec = V8>
struct RegisterAcc
{
    static constexpr bool kBranchless = true;
    static constexpr int64_t kMaxD = 8 * NV;
    static constexpr int kLanes = static_cast<int>(sizeof(Vec) / sizeof(float));
    static constexpr int kVecs = 8 * NV / kLanes;

    Vec vec[kVecs];

    AUTR_MSDA_INLINE RegisterAcc(float* /*out*/, int64_t /*D*/)
    {
        for (int i = 0; i < kVecs; ++i)
        {
            vec[i] = Vec{};
        }
    }

    AUTR_MSDA_INLINE void add4(float w0, float const* __restrict r0, float w1, float const* __restrict r1, float w2,
        float const* __restrict r2, float w3, float const* __restrict r3)
    {
        Vec const v0 = Vec{} + w0;
        Vec const v1 = Vec{} + w1;
        Vec const v2 = Vec{} + w2;
        Vec const v3 = Vec{} + w3;
        for (int i = 0; i < kVecs; ++i)
        {
            // two independent sums per half: the accumulator's dependency chain is one add per sample
            Vec const top = v0 * loadAs<Vec>(r0 + kLanes * i) + v1 * loadAs<Vec>(r1 + kLanes * i);
            Vec const bottom = v2 * loadAs<Vec>(r2 + kLanes * i) + v3 * loadAs<Vec>(r3 + kLanes * i);
            vec[i] += top + bottom;
        }
    }

    AUTR_MSDA_INLINE void store(float* __restrict out) const
    {
        for (int i = 0; i < kVecs; ++i)
        {
            storeAs(out + kLanes * i, vec[i]);
        }
    }
};

// Any D: accumulates in the output row (zeroed first), one corner at a time, skipping corners outside.
template <class Vec>
struct MemoryAcc
{
    static constexpr bool kBranchless = false;
    static constexpr int64_t kMaxD = 0;
    static constexpr int64_t kLanes = static_cast<int64_t>(sizeof(Vec) / sizeof(float));

    float* out;
    int64_t D;

    AUTR_MSDA_INLINE MemoryAcc(float* o, int64_t d)
        : out(o)
        , D(d)
    {
        std::memset(out, 0, static_cast<size_t>(D) * sizeof(float));
    }

    AUTR_MSDA_INLINE void add(float w, float const* __restrict row)
    {
        Vec const wv = Vec{} + w;
        int64_t d = 0;
        for (; d + kLanes <= D; d += kLanes)
        {
            storeAs(out + d, loadAs<Vec>(out + d) + wv * loadAs<Vec>(row + d));
        }
        for (; d < D; ++d)
        {
            out[d] += w * row[d];
        }
    }

    AUTR_MSDA_INLINE void store(float* /*out*/) const {}
};

// Branch-free select of an address: `yes` when cond, else `no` (address arithmetic in uintptr_t, so a
// corner outside the map never forms an out-of-bounds pointer).
AUTR_MSDA_INLINE float const* pick(bool cond, uintptr_t yes, uintptr_t no)
{
    uintptr_t const mask = uintptr_t{0} - static_cast<uintptr_t>(cond);
    return reinterpret_cast<float const*>((yes & mask) | (no & ~mask));
}

AUTR_MSDA_INLINE int32_t floorToInt(float v)
{
    // Exact floor for |v| < 2^31: truncate towards zero, step down for negative non-integers.
    int32_t const t = static_cast<int32_t>(v);
    return t - (v < static_cast<float>(t) ? 1 : 0);
}

template <class Acc>
AUTR_MSDA_INLINE void rowsWith(Problem const& p, float const* __restrict value, int32_t const* __restrict shapes,
    int32_t const* __restrict starts, float const* __restrict loc, float const* __restrict attn,
    float* __restrict out, int64_t row0, int64_t rows)
{
    int64_t const M = p.M;
    int64_t const D = p.D;
    int64_t const L = p.L;
    int64_t const P = p.P;
    int64_t const stride = M * D; // floats between neighbouring spatial positions
    int64_t const samples = L * P;
    alignas(32) float zeroRow[Acc::kMaxD > 0 ? Acc::kMaxD : 1] = {};
    float const* zeros = zeroRow;
    // Hide the row's contents from the optimiser: knowing the loads give zeros, it would turn the pointer
    // selects below back into branches.
    __asm__("" : "+r"(zeros));
    for (int64_t r = 0; r < rows; ++r)
    {
        int64_t const n = (row0 + r) / p.Lq;
        float const* const valueN = value + n * p.S * stride;
        for (int64_t m = 0; m < M; ++m)
        {
            int64_t const rm = r * M + m;
            float const* sl = loc + rm * samples * 2;
            float const* aw = attn + rm * samples;
            float* const o = out + rm * D;
            float const* const valueM = valueN + m * D;
            Acc acc(o, D);
            for (int64_t l = 0; l < L; ++l)
            {
                int32_t const H = shapes[2 * l];
                int32_t const W = shapes[2 * l + 1];
                float const fH = static_cast<float>(H);
                float const fW = static_cast<float>(W);
                float const* const level = valueM + static_cast<int64_t>(starts[l]) * stride;
                for (int64_t k = 0; k < P; ++k, sl += 2, ++aw)
                {
                    float const a = *aw;
                    float w = sl[0] * fW - 0.5f;
                    float h = sl[1] * fH - 0.5f;
                    // & rather than &&: evaluated without branches
                    bool const inside = (h > -1.f) & (w > -1.f) & (h < fH) & (w < fW); // false for NaN too
                    if constexpr (!Acc::kBranchless)
                    {
                        if (!inside)
                        {
                            continue;
                        }
                    }
                    h = inside ? h : 0.f;
                    w = inside ? w : 0.f;
                    int32_t const h0 = floorToInt(h);
                    int32_t const w0 = floorToInt(w);
                    float const lh = h - static_cast<float>(h0);
                    float const lw = w - static_cast<float>(w0);
                    float const hh = 1.f - lh;
                    float const hw = 1.f - lw;
                    int64_t const pos = static_cast<int64_t>(h0) * W + w0; // only used for corners inside
                    bool const top = inside & (h0 >= 0);
                    bool const bottom = inside & (h0 + 1 < H);
                    bool const left = w0 >= 0;
                    bool const right = w0 + 1 < W;
                    if constexpr (Acc::kBranchless)
                    {
                        uintptr_t const base = reinterpret_cast<uintptr_t>(level);
                        uintptr_t const zero = reinterpret_cast<uintptr_t>(zeros);
                        uintptr_t const rowBytes = static_cast<uintptr_t>(stride) * sizeof(float);
                        uintptr_t const p00 = base + static_cast<uintptr_t>(pos) * rowBytes;
                        acc.add4(a * hh * hw, pick(top & left, p00, zero), a * hh * lw,
                            pick(top & right, p00 + rowBytes, zero), a * lh * hw,
                            pick(bottom & left, p00 + static_cast<uintptr_t>(W) * rowBytes, zero), a * lh * lw,
                            pick(bottom & right, p00 + static_cast<uintptr_t>(W + 1) * rowBytes, zero));
                    }
                    else
                    {
                        if (top && left)
                        {
                            acc.add(a * hh * hw, level + pos * stride);
                        }
                        if (top && right)
                        {
                            acc.add(a * hh * lw, level + (pos + 1) * stride);
                        }
                        if (bottom && left)
                        {
                            acc.add(a * lh * hw, level + (pos + W) * stride);
                        }
                        if (bottom && right)
                        {
                            acc.add(a * lh * lw, level + (pos + W + 1) * stride);
                        }
                    }
                }
            }
            acc.store(o);
        }
    }
}

// ---- the blocked path: D = 8*NV, at most kMaxSamples samples (M*L*P) per row, value[n] below 2^31 floats.
//
// A row's M*L*P samples are handled in two passes. The first computes, 8 samples at a time in vector
// lanes, the bilinear weights (times the attention weight) and the addresses of the four corners, an
// address of a zero row standing in for every corner outside the map. The second walks the samples
// head by head and adds weight * corner row for the four corners, with the head's accumulator in
// registers. Sample positions and weights are thus computed 8 at a time, without branches, and the
// second pass is nothing but loads and multiply-adds.

constexpr int64_t kMaxSamples = 512;

// What the first pass needs to know about sample k of a row; the same for every row.
struct SampleTable
{
    alignas(32) float fW[kMaxSamples];
    alignas(32) float fH[kMaxSamples];
    alignas(32) int32_t W[kMaxSamples];
    alignas(32) int32_t H[kMaxSamples];
    alignas(32) int32_t origin[kMaxSamples]; // offset in value[n] of (position 0 of the level, head m)
};

struct RowPlan
{
    alignas(32) float weight[4][kMaxSamples];
    alignas(32) uintptr_t address[4][kMaxSamples];
};

AUTR_MSDA_INLINE void buildTable(Problem const& p, int32_t const* shapes, int32_t const* starts, SampleTable& t)
{
    int64_t k = 0;
    for (int64_t m = 0; m < p.M; ++m)
    {
        for (int64_t l = 0; l < p.L; ++l)
        {
            for (int64_t pt = 0; pt < p.P; ++pt, ++k)
            {
                t.W[k] = shapes[2 * l + 1];
                t.H[k] = shapes[2 * l];
                t.fW[k] = static_cast<float>(t.W[k]);
                t.fH[k] = static_cast<float>(t.H[k]);
                t.origin[k] = static_cast<int32_t>(starts[l] * p.M * p.D + m * p.D);
            }
        }
    }
    for (; k % 8 != 0; ++k) // padding lanes: a 1x1 map at offset 0 (their results are never used)
    {
        t.W[k] = t.H[k] = 1;
        t.fW[k] = t.fH[k] = 1.f;
        t.origin[k] = 0;
    }
}

AUTR_MSDA_INLINE void planRow(SampleTable const& t, int64_t K, int32_t stride, float const* __restrict loc,
    float const* __restrict attn, uintptr_t valueAddr, uintptr_t zeroAddr, RowPlan& plan)
{
    V8u64 const zero = V8u64{} + static_cast<uint64_t>(zeroAddr);
    V8u64 const delta = V8u64{} + static_cast<uint64_t>(valueAddr - zeroAddr);
    V8u32 const strideV = V8u32{} + static_cast<uint32_t>(stride);
    for (int64_t j = 0; j < K; j += 8)
    {
        V8 xy0, xy1, a;
        if (j + 8 <= K)
        {
            xy0 = load8(loc + 2 * j);
            xy1 = load8(loc + 2 * j + 8);
            a = load8(attn + j);
        }
        else // the row's last, partial block: never read past the row
        {
            float xy[16] = {};
            float w[8] = {};
            std::memcpy(xy, loc + 2 * j, static_cast<size_t>(K - j) * 2 * sizeof(float));
            std::memcpy(w, attn + j, static_cast<size_t>(K - j) * sizeof(float));
            xy0 = load8(xy);
            xy1 = load8(xy + 8);
            a = load8(w);
        }
        V8 const fW = load8(t.fW + j);
        V8 const fH = load8(t.fH + j);
        V8i const W = loadAs<V8i>(t.W + j);
        V8i const H = loadAs<V8i>(t.H + j);
        V8 w = evenLanes(xy0, xy1) * fW - 0.5f;
        V8 h = oddLanes(xy0, xy1) * fH - 0.5f;
        V8i const inside = (h > -1.f) & (w > -1.f) & (h < fH) & (w < fW); // lanes: -1 / 0; 0 for NaN
        h = (V8)((V8i) h & inside);
        w = (V8)((V8i) w & inside);
        V8i h0 = __builtin_convertvector(h, V8i); // truncation, then floor: -1 where that rounded up
        V8i w0 = __builtin_convertvector(w, V8i);
        h0 += (V8i)(h < __builtin_convertvector(h0, V8));
        w0 += (V8i)(w < __builtin_convertvector(w0, V8));
        V8 const lh = h - __builtin_convertvector(h0, V8);
        V8 const lw = w - __builtin_convertvector(w0, V8);
        V8 const hh = 1.f - lh;
        V8 const hw = 1.f - lw;
        V8i const top = inside & (h0 >= 0);
        V8i const bottom = inside & (h0 + 1 < H);
        V8i const left = w0 >= 0;
        V8i const right = w0 + 1 < W;
        // element offsets in value[n] (unsigned: lanes of corners outside may wrap; they are masked below)
        V8u32 const pos = (V8u32) loadAs<V8i>(t.origin + j) + ((V8u32) h0 * (V8u32) W + (V8u32) w0) * strideV;
        V8u32 const offsets[4] = {pos, pos + strideV, pos + (V8u32) W * strideV, pos + ((V8u32) W + 1u) * strideV};
        V8i const valid[4] = {top & left, top & right, bottom & left, bottom & right};
        V8 const weights[4] = {a * hh * hw, a * hh * lw, a * lh * hw, a * lh * lw};
        for (int c = 0; c < 4; ++c)
        {
            V8u64 const mask = (V8u64) __builtin_convertvector(valid[c], V8i64);
            V8u64 const bytes = __builtin_convertvector(offsets[c], V8u64) * uint64_t{sizeof(float)};
            storeAs(plan.address[c] + j, zero + (mask & (delta + bytes)));
            store8(plan.weight[c] + j, weights[c]);
        }
    }
}

template <int NV>
AUTR_MSDA_INLINE void rowsBlocked(Problem const& p, float const* __restrict value, int32_t const* __restrict shapes,
    int32_t const* __restrict starts, float const* __restrict loc, float const* __restrict attn,
    float* __restrict out, int64_t row0, int64_t rows)
{
    int64_t const M = p.M;
    int64_t const samples = p.L * p.P; // per head
    int64_t const K = M * samples;     // per row
    int32_t const stride = static_cast<int32_t>(M * p.D);
    alignas(32) float const zeroRow[8 * NV] = {};
    SampleTable table;
    RowPlan plan;
    buildTable(p, shapes, starts, table);
    for (int64_t r = 0; r < rows; ++r)
    {
        int64_t const n = (row0 + r) / p.Lq;
        uintptr_t const valueAddr = reinterpret_cast<uintptr_t>(value + n * p.S * stride);
        planRow(table, K, stride, loc + r * K * 2, attn + r * K, valueAddr, reinterpret_cast<uintptr_t>(zeroRow),
            plan);
        for (int64_t m = 0; m < M; ++m)
        {
            RegisterAcc<NV> acc(nullptr, p.D);
            for (int64_t k = m * samples; k < (m + 1) * samples; ++k)
            {
                acc.add4(plan.weight[0][k], reinterpret_cast<float const*>(plan.address[0][k]), plan.weight[1][k],
                    reinterpret_cast<float const*>(plan.address[1][k]), plan.weight[2][k],
                    reinterpret_cast<float const*>(plan.address[2][k]), plan.weight[3][k],
                    reinterpret_cast<float const*>(plan.address[3][k]));
            }
            acc.store(out + (r * M + m) * p.D);
        }
    }
}

AUTR_MSDA_INLINE bool blockedFits(Problem const& p)
{
    return p.D % 8 == 0 && p.D <= 64 && p.M * p.L * p.P <= kMaxSamples && p.S * p.M * p.D < INT32_MAX;
}

template <bool kBlocked, class Vec>
AUTR_MSDA_INLINE void rowsAnyD(Problem const& p, float const* value, int32_t const* shapes, int32_t const* starts,
    float const* loc, float const* attn, float* out, int64_t row0, int64_t rows)
{
    if (kBlocked && blockedFits(p))
    {
        switch (p.D / 8)
        {
        case 1: rowsBlocked<1>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
        case 2: rowsBlocked<2>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
        case 3: rowsBlocked<3>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
        case 4: rowsBlocked<4>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
        case 5: rowsBlocked<5>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
        case 6: rowsBlocked<6>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
        case 7: rowsBlocked<7>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
        case 8: rowsBlocked<8>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
        default: break;
        }
    }
    // Otherwise one sample at a time: accumulators in registers for D = 8, 16, ..., 64, else in memory.
    switch (p.D % 8 == 0 ? p.D / 8 : 0)
    {
    case 1: rowsWith<RegisterAcc<1, Vec>>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
    case 2: rowsWith<RegisterAcc<2, Vec>>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
    case 3: rowsWith<RegisterAcc<3, Vec>>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
    case 4: rowsWith<RegisterAcc<4, Vec>>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
    case 5: rowsWith<RegisterAcc<5, Vec>>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
    case 6: rowsWith<RegisterAcc<6, Vec>>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
    case 7: rowsWith<RegisterAcc<7, Vec>>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
    case 8: rowsWith<RegisterAcc<8, Vec>>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
    default: rowsWith<MemoryAcc<Vec>>(p, value, shapes, starts, loc, attn, out, row0, rows); return;
    }
}

void rowsGeneric(Problem const& p, float const* value, int32_t const* shapes, int32_t const* starts,
    float const* loc, float const* attn, float* out, int64_t row0, int64_t rows)
{
    rowsAnyD<false, V4>(p, value, shapes, starts, loc, attn, out, row0, rows);
}

AUTR_MSDA_INLINE float halfBitsToFloat(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t const exp = (h >> 10) & 0x1fu;
    uint32_t const mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu)
    {
        bits = sign | 0x7f800000u | (mant << 13); // Inf / NaN (payload kept)
    }
    else if (exp != 0)
    {
        bits = sign | ((exp + 112u) << 23) | (mant << 13); // rebias 15 -> 127
    }
    else
    {
        float const magnitude = static_cast<float>(mant) * 5.9604644775390625e-8f; // subnormal: mant * 2^-24
        std::memcpy(&bits, &magnitude, sizeof(bits));
        bits |= sign;
    }
    float out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
}

AUTR_MSDA_INLINE uint16_t floatToHalfBits(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, sizeof(x));
    uint32_t const sign = (x >> 16) & 0x8000u;
    uint32_t const absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) // NaN: stays a (quiet) NaN
    {
        return static_cast<uint16_t>(sign | 0x7e00u | ((absx >> 13) & 0x3ffu));
    }
    if (absx >= 0x477ff000u) // >= 65520 (and Inf) rounds to Inf
    {
        return static_cast<uint16_t>(sign | 0x7c00u);
    }
    if (absx >= 0x38800000u) // >= 2^-14: a normal half
    {
        uint32_t const mant = absx & 0x7fffffu;
        uint32_t v = (((absx >> 23) - 112u) << 10) | (mant >> 13);
        uint32_t const rem = mant & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (v & 1u)))
        {
            ++v; // a carry into the exponent is the right result
        }
        return static_cast<uint16_t>(sign | v);
    }
    uint32_t const e = absx >> 23;
    if (e < 102u) // below 2^-25: rounds to zero
    {
        return static_cast<uint16_t>(sign);
    }
    uint32_t const m = (absx & 0x7fffffu) | 0x800000u;
    uint32_t const shift = 126u - e; // value / 2^-24 = m / 2^shift, shift in [14, 24]
    uint32_t v = m >> shift;
    uint32_t const rem = m & ((1u << shift) - 1u);
    uint32_t const halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (v & 1u)))
    {
        ++v;
    }
    return static_cast<uint16_t>(sign | v);
}

#if AUTR_MSDA_X86

__attribute__((target("avx2,fma,f16c"))) void rowsAvx2(Problem const& p, float const* value, int32_t const* shapes,
    int32_t const* starts, float const* loc, float const* attn, float* out, int64_t row0, int64_t rows)
{
    rowsAnyD<true, V8>(p, value, shapes, starts, loc, attn, out, row0, rows);
}

__attribute__((target("avx2,fma,f16c"))) void halfToFloatF16c(uint16_t const* src, float* dst, int64_t count)
{
    int64_t i = 0;
    for (; i + 8 <= count; i += 8)
    {
        __m128i const h = _mm_loadu_si128(reinterpret_cast<__m128i const*>(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < count; ++i)
    {
        dst[i] = halfBitsToFloat(src[i]);
    }
}

__attribute__((target("avx2,fma,f16c"))) void floatToHalfF16c(float const* src, uint16_t* dst, int64_t count)
{
    int64_t i = 0;
    for (; i + 8 <= count; i += 8)
    {
        __m128i const h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
    }
    for (; i < count; ++i)
    {
        dst[i] = floatToHalfBits(src[i]);
    }
}

#endif // AUTR_MSDA_X86

bool mulOk(int64_t a, int64_t b, int64_t* out)
{
    return !__builtin_mul_overflow(a, b, out);
}

} // namespace

Isa detectIsa()
{
#if AUTR_MSDA_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    {
        return Isa::kAvx2;
    }
#endif
    return Isa::kGeneric;
}

Isa selectIsa()
{
    char const* env = std::getenv("AUTR_MSDA_CPU_ISA");
    if (env != nullptr && std::strcmp(env, "generic") == 0)
    {
        return Isa::kGeneric;
    }
    return detectIsa();
}

char const* isaName(Isa isa)
{
    return isa == Isa::kAvx2 ? "avx2" : "generic";
}

std::string checkProblem(Problem const& p)
{
    if (p.N < 0 || p.S < 0 || p.Lq < 0 || p.M < 1 || p.D < 1 || p.L < 1 || p.P < 1)
    {
        return "sizes must be N, S, Lq >= 0 and M, D, L, P >= 1 (got N=" + std::to_string(p.N) + " S="
            + std::to_string(p.S) + " M=" + std::to_string(p.M) + " D=" + std::to_string(p.D) + " L="
            + std::to_string(p.L) + " P=" + std::to_string(p.P) + " Lq=" + std::to_string(p.Lq) + ")";
    }
    int64_t t = 0;
    bool ok = mulOk(p.N, p.S, &t) && mulOk(t, p.M, &t) && mulOk(t, p.D, &t) && mulOk(t, 4, &t);
    ok = ok && mulOk(p.N, p.Lq, &t) && mulOk(t, p.M, &t) && mulOk(t, p.L, &t) && mulOk(t, p.P, &t)
        && mulOk(t, 8, &t);
    ok = ok && mulOk(p.N, p.Lq, &t) && mulOk(t, p.M, &t) && mulOk(t, p.D, &t) && mulOk(t, 4, &t);
    if (!ok)
    {
        return "tensors too large for 64-bit indexing";
    }
    return {};
}

std::string checkLevels(Problem const& p, int32_t const* spatialShapes, int32_t const* levelStartIndex)
{
    int64_t total = 0;
    for (int64_t l = 0; l < p.L; ++l)
    {
        int64_t const H = spatialShapes[2 * l];
        int64_t const W = spatialShapes[2 * l + 1];
        if (H < 1 || W < 1)
        {
            return "spatial_shapes[" + std::to_string(l) + "] = (" + std::to_string(H) + ", " + std::to_string(W)
                + "): every level needs H, W >= 1";
        }
        if (levelStartIndex[l] != total)
        {
            return "level_start_index[" + std::to_string(l) + "] = " + std::to_string(levelStartIndex[l])
                + " but the levels before it hold " + std::to_string(total)
                + " positions (level_start_index must be the running sum of H*W)";
        }
        total += H * W;
        if (total > p.S)
        {
            break;
        }
    }
    if (total != p.S)
    {
        return "value has S=" + std::to_string(p.S) + " positions but spatial_shapes sum to "
            + (total > p.S ? "more" : std::to_string(total));
    }
    return {};
}

int64_t rowsPerTask(Problem const& p)
{
    int64_t const perRow = p.M * p.L * p.P * (4 * p.D + 16);
    int64_t const rows = perRow > 0 ? (int64_t{1} << 16) / perRow : 1;
    return rows < 1 ? 1 : rows;
}

void forwardRows(Isa isa, Problem const& p, float const* value, int32_t const* spatialShapes,
    int32_t const* levelStartIndex, float const* samplingLocations, float const* attentionWeights, float* output,
    int64_t row0, int64_t rows)
{
    if (rows <= 0)
    {
        return;
    }
#if AUTR_MSDA_X86
    if (isa == Isa::kAvx2)
    {
        rowsAvx2(p, value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights, output, row0, rows);
        return;
    }
#endif
    (void) isa;
    rowsGeneric(p, value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights, output, row0, rows);
}

void halfToFloat(Isa isa, uint16_t const* src, float* dst, int64_t count)
{
#if AUTR_MSDA_X86
    if (isa == Isa::kAvx2)
    {
        halfToFloatF16c(src, dst, count);
        return;
    }
#endif
    (void) isa;
    for (int64_t i = 0; i < count; ++i)
    {
        dst[i] = halfBitsToFloat(src[i]);
    }
}

void floatToHalf(Isa isa, float const* src, uint16_t* dst, int64_t count)
{
#if AUTR_MSDA_X86
    if (isa == Isa::kAvx2)
    {
        floatToHalfF16c(src, dst, count);
        return;
    }
#endif
    (void) isa;
    for (int64_t i = 0; i < count; ++i)
    {
        dst[i] = floatToHalfBits(src[i]);
    }
}

} // namespace cpu
} // namespace msda
} // namespace autr
