// AuTR multi-scale deformable attention (MSDA): CUDA kernels.
//
// The one kernel source of the project: the PyTorch extension and the TensorRT plugin both compile
// ms_deform_attn.cu, which includes this file. Semantics: see ms_deform_attn.h.
//
// ---------------------------------------------------------------------------------------------------
// Design from memory traffic
// ---------------------------------------------------------------------------------------------------
// MSDA is a gather. For one output row (n, q, m) of D channels with element size B bytes:
//   value       4 corners * L * P * D * B   (bilinear: 4 rows of D contiguous channels per sample)
//   locations   2 * L * P * B
//   weights     L * P * B
//   output      D * B                        (written once)
// AuTR's encoder/decoder use L = 3, P = 4, M = 8, D = 32. In fp16 that is 4*12*32*2 = 3072 bytes of
// value reads against 72 bytes of locations/weights and 64 bytes of output per (n, q, m): ~95 % of
// the traffic is the value gather, at ~1 FMA per byte loaded, so the kernel is bound by load
// throughput (L2: one 224x224 frame's value tensor, S = 28^2+14^2+7^2 = 1029 rows of 256 channels,
// is 0.5 MB in fp16 and stays L2-resident; DRAM sees roughly value + locations + weights + output
// once). What matters is therefore:
//   * coalescing the gather: value[n, s, m, :] is D contiguous elements, so the threads of one
//     (n, q, m) take consecutive channel chunks and one corner read of a warp touches whole 32-byte
//     sectors (D * B = 64 bytes in fp16, 128 bytes in fp32 for D = 32);
//   * wide loads: each thread owns VEC contiguous channels (16-byte loads: 4 x fp32 or 8 x fp16 when
//     D and the base pointers allow; 8-byte half2 pairs / float2, or scalars otherwise), so the
//     per-thread overhead (coordinate math, location/weight loads, bounds tests) is paid once per
//     VEC channels instead of once per channel, and there are fewer load instructions in flight
//     per byte;
//   * no shared memory, no atomics, no workspace in the forward: one thread per (n, q, m, chunk),
//     loop over L * P samples, accumulate in fp32 (fp64 for double), one (vector) store;
//   * the model's (L, P) combinations compiled with constant trip counts (dispatchLevelsPoints): the
//     sample loop is fully unrolled, so the loads of all L * P samples can be in flight together
//     instead of each sample waiting for its own.
// Types: fp32, fp16, bf16 (both accumulated in fp32), fp64. Index tensors int32 or int64. Every level's
// (H, W, start) is checked against S on the device; a level that does not fit is skipped (reads nothing).
// Locations / weights / level shapes are read by all threads of one (n, q, m) chunk group at the
// same address (broadcast, L1-resident), so they cost one transaction per warp, not per thread.
//
// Backward: one warp per (n, q, m). Lanes stride over the D channels; for every sample (l, p) each
// lane accumulates its channels' contributions to dL/dw, dL/dx, dL/dy, which a warp shuffle reduction
// turns into the three scalars that lane 0 writes (no atomics on those). dL/dvalue is scattered with
// atomicAdd into the 4 corners (lanes hit consecutive addresses, so the atomics coalesce). This is
// only used for training / gradcheck, in fp32 and fp64.
// ---------------------------------------------------------------------------------------------------
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <type_traits>
#ifndef AUTR_MSDA_HOST_EMULATION
#include <cuda_runtime.h>
#endif
// AUTR_MSDA_HOST_EMULATION: set only by emulation/msda_host_emulation.cpp, which compiles these very
// kernels with the host compiler (lanes as threads) so that their logic is tested on CPU-only machines.

namespace autr
{
namespace msda
{
namespace detail
{

constexpr int kBlockThreads = 256;

template <typename T>
struct AccType
{
    using type = float;
};
template <>
struct AccType<double>
{
    using type = double;
};

__device__ __forceinline__ float toAcc(float v)
{
    return v;
}
__device__ __forceinline__ float toAcc(__half v)
{
    return __half2float(v);
}
__device__ __forceinline__ float toAcc(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}
__device__ __forceinline__ double toAcc(double v)
{
    return v;
}

template <typename T>
__device__ __forceinline__ T fromAcc(typename AccType<T>::type v);
template <>
__device__ __forceinline__ float fromAcc<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromAcc<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromAcc<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ double fromAcc<double>(double v)
{
    return v;
}

// VEC contiguous elements, aligned to their total size so that a load/store of a Pack is a single
// 2/4/8/16-byte memory instruction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack
{
    T v[VEC];
};

// Adds weight * value[row, chunk] (VEC channels) to acc.
template <typename T, int VEC>
__device__ __forceinline__ void accumulateCorner(
    T const* __restrict__ ptr, typename AccType<T>::type weight, typename AccType<T>::type (&acc)[VEC])
{
    Pack<T, VEC> const pack = *reinterpret_cast<Pack<T, VEC> const*>(ptr);
#pragma unroll
    for (int i = 0; i < VEC; ++i)
    {
        acc[i] += weight * toAcc(pack.v[i]);
    }
}

// fp16 specialisation for pairs: convert two halves at once (one cvt of a half2 register).
template <>
__device__ __forceinline__ void accumulateCorner<__half, 2>(
    __half const* __restrict__ ptr, float weight, float (&acc)[2])
{
    float2 const f = __half22float2(*reinterpret_cast<__half2 const*>(ptr));
    acc[0] += weight * f.x;
    acc[1] += weight * f.y;
}

template <>
__device__ __forceinline__ void accumulateCorner<__half, 8>(
    __half const* __restrict__ ptr, float weight, float (&acc)[8])
{
    // One 16-byte load (ld.global.nc.v4), then four half2 -> float2 conversions.
    union
    {
        uint4 raw;
        __half2 h2[4];
    } pack;
    pack.raw = __ldg(reinterpret_cast<uint4 const*>(ptr));
#pragma unroll
    for (int i = 0; i < 4; ++i)
    {
        float2 const f = __half22float2(pack.h2[i]);
        acc[2 * i] += weight * f.x;
        acc[2 * i + 1] += weight * f.y;
    }
}

// Writes VEC accumulated channels with one (vector) store.
template <typename T, int VEC>
__device__ __forceinline__ void storeChunk(T* __restrict__ ptr, typename AccType<T>::type const (&acc)[VEC])
{
    Pack<T, VEC> result;
#pragma unroll
    for (int i = 0; i < VEC; ++i)
    {
        result.v[i] = fromAcc<T>(acc[i]);
    }
    *reinterpret_cast<Pack<T, VEC>*>(ptr) = result;
}

template <>
__device__ __forceinline__ void storeChunk<__half, 8>(__half* __restrict__ ptr, float const (&acc)[8])
{
    union
    {
        uint4 raw;
        __half2 h2[4];
    } pack;
#pragma unroll
    for (int i = 0; i < 4; ++i)
    {
        pack.h2[i] = __floats2half2_rn(acc[2 * i], acc[2 * i + 1]);
    }
    *reinterpret_cast<uint4*>(ptr) = pack.raw;
}

// Index tensors (spatial_shapes, level_start_index) are int32 (TensorRT, ONNX Runtime) or int64 (PyTorch);
// `wide` says which, so the PyTorch binding passes its tensors as they are (no conversion kernels per call).
__device__ __forceinline__ int64_t loadIndex(void const* p, int32_t i, bool wide)
{
    return wide ? static_cast<int64_t>(__ldg(static_cast<long long const*>(p) + i))
                : static_cast<int64_t>(__ldg(static_cast<int32_t const*>(p) + i));
}

// One level's geometry, read from the device index tensors and checked against S: a level whose H, W or
// start is not positive / does not fit inside [0, S) is skipped (ok = false), so that no value of the index
// tensors (e.g. TensorRT timing the plugin on synthetic inputs) can make the kernel read outside `value`.
struct Level
{
    int32_t H, W;
    int64_t start;
    bool ok;
};

__device__ __forceinline__ Level loadLevel(void const* shapes, void const* starts, int32_t l, bool wide, int32_t S)
{
    int64_t const h = loadIndex(shapes, 2 * l, wide);
    int64_t const w = loadIndex(shapes, 2 * l + 1, wide);
    int64_t const start = loadIndex(starts, l, wide);
    bool const ok = h > 0 && w > 0 && h <= S && w <= S && start >= 0 && start + h * w <= S;
    return {ok ? static_cast<int32_t>(h) : 0, ok ? static_cast<int32_t>(w) : 0, ok ? start : 0, ok};
}

// (L, P) combinations compiled with constant trip counts (fully unrolled sample loops, so the loads of
// consecutive samples are in flight together): AuTR (3 levels, 4 points; the tiny preset 3 x 2) and
// Deformable-DETR (4 x 4). Any other (L, P) runs the generic kernel (LS = PS = 0: run-time counts).
// dispatchLevelsPoints calls f(std::integral_constant<int, LS>, std::integral_constant<int, PS>) for the
// specialisation matching (L, P); the launcher and the host emulation both use it.
template <typename F>
inline auto dispatchLevelsPoints(int64_t L, int64_t P, bool specialise, F&& f)
{
    using std::integral_constant;
    if (specialise && L == 3 && P == 4)
    {
        return f(integral_constant<int, 3>{}, integral_constant<int, 4>{});
    }
    if (specialise && L == 3 && P == 2)
    {
        return f(integral_constant<int, 3>{}, integral_constant<int, 2>{});
    }
    if (specialise && L == 4 && P == 4)
    {
        return f(integral_constant<int, 4>{}, integral_constant<int, 4>{});
    }
    return f(integral_constant<int, 0>{}, integral_constant<int, 0>{});
}

// Adds the VEC channels of one bilinear sample (x, y) of one level to acc (grid_sample, align_corners=False,
// zeros padding: pixel coordinate = normalised * size - 0.5, corners outside the map contribute nothing).
template <typename T, int VEC>
__device__ __forceinline__ void accumulateSample(T const* __restrict__ levelBase, Level const& lv, int32_t rowStride,
    typename AccType<T>::type x, typename AccType<T>::type y, typename AccType<T>::type w,
    typename AccType<T>::type (&acc)[VEC])
{
    using acc_t = typename AccType<T>::type;
    acc_t const fH = static_cast<acc_t>(lv.H);
    acc_t const fW = static_cast<acc_t>(lv.W);
    acc_t const hIm = y * fH - acc_t(0.5);
    acc_t const wIm = x * fW - acc_t(0.5);
    if (!(hIm > acc_t(-1) && wIm > acc_t(-1) && hIm < fH && wIm < fW))
    {
        return; // all four corners outside (also skips NaN, and every sample of a skipped level: H = W = 0)
    }
    int32_t const h0 = static_cast<int32_t>(floor(hIm));
    int32_t const w0 = static_cast<int32_t>(floor(wIm));
    int32_t const h1 = h0 + 1;
    int32_t const w1 = w0 + 1;
    acc_t const lh = hIm - h0;
    acc_t const lw = wIm - w0;
    acc_t const hh = acc_t(1) - lh;
    acc_t const hw = acc_t(1) - lw;

    bool const top = h0 >= 0;
    bool const bottom = h1 <= lv.H - 1;
    bool const left = w0 >= 0;
    bool const right = w1 <= lv.W - 1;
    int64_t const rowTop = static_cast<int64_t>(h0) * lv.W;
    int64_t const rowBottom = rowTop + lv.W;
    if (top && left)
    {
        accumulateCorner<T, VEC>(levelBase + (rowTop + w0) * rowStride, w * hh * hw, acc);
    }
    if (top && right)
    {
        accumulateCorner<T, VEC>(levelBase + (rowTop + w1) * rowStride, w * hh * lw, acc);
    }
    if (bottom && left)
    {
        accumulateCorner<T, VEC>(levelBase + (rowBottom + w0) * rowStride, w * lh * hw, acc);
    }
    if (bottom && right)
    {
        accumulateCorner<T, VEC>(levelBase + (rowBottom + w1) * rowStride, w * lh * lw, acc);
    }
}

// Forward. One thread per (n, q, m, chunk of VEC channels); grid-stride loop.
//   total = N * Lq * M * (D / VEC)  (< 2^31, checked by the launcher)
// LS, PS > 0: compiled for exactly LS levels and PS points (the launcher only picks it when L == LS, P == PS);
// 0: the run-time L, P.
template <typename T, int VEC, int LS = 0, int PS = 0>
__global__ void msdaForwardKernel(T const* __restrict__ value, void const* __restrict__ spatialShapes,
    void const* __restrict__ levelStartIndex, bool wideIndex, T const* __restrict__ samplingLocations,
    T const* __restrict__ attentionWeights, T* __restrict__ output, int32_t total, int32_t Lq, int32_t S, int32_t M,
    int32_t D, int32_t L, int32_t P)
{
    using acc_t = typename AccType<T>::type;
    int32_t const nL = LS > 0 ? LS : L;
    int32_t const nP = PS > 0 ? PS : P;
    int32_t const chunks = D / VEC;
    int32_t const rowStride = M * D; // elements between two consecutive spatial positions
    int32_t const LP = nL * nP;

    // 64-bit loop counter so that the grid-stride increment cannot wrap; the body works in 32 bits.
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    {
        int32_t const idx = static_cast<int32_t>(i);
        int32_t const chunk = idx % chunks;
        int32_t const nqm = idx / chunks; // ((n * Lq) + q) * M + m
        int32_t const n = nqm / (M * Lq);
        int32_t const m = nqm % M;

        T const* const valueBase = value + static_cast<int64_t>(n) * S * rowStride + m * D + chunk * VEC;
        T const* const loc = samplingLocations + static_cast<int64_t>(nqm) * LP * 2;
        T const* const attn = attentionWeights + static_cast<int64_t>(nqm) * LP;

        acc_t acc[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j)
        {
            acc[j] = acc_t(0);
        }

#pragma unroll
        for (int32_t l = 0; l < nL; ++l)
        {
            Level const lv = loadLevel(spatialShapes, levelStartIndex, l, wideIndex, S);
            T const* const levelBase = valueBase + lv.start * rowStride;
#pragma unroll
            for (int32_t p = 0; p < nP; ++p)
            {
                int32_t const lp = l * nP + p;
                accumulateSample<T, VEC>(levelBase, lv, rowStride, toAcc(loc[2 * lp]), toAcc(loc[2 * lp + 1]),
                    toAcc(attn[lp]), acc);
            }
        }

        storeChunk<T, VEC>(output + static_cast<int64_t>(nqm) * D + chunk * VEC, acc);
    }
}

// The research baseline that `gpu_check` times the kernel against: Deformable-DETR's
// ms_deformable_im2col_gpu_kernel layout -- one thread per output channel (n, q, m, d), scalar loads, every
// thread reads the locations / weights / level shapes itself, run-time L and P, 1024 threads per block.
// Accumulates in float (fp64 for double) like the kernel above, so the two differ only in how they are
// organised. Same level checks, so it is safe on the same inputs. Not used by the model.
constexpr int kBaselineBlockThreads = 1024;

template <typename T>
__global__ void msdaForwardBaselineKernel(T const* __restrict__ value, void const* __restrict__ spatialShapes,
    void const* __restrict__ levelStartIndex, bool wideIndex, T const* __restrict__ samplingLocations,
    T const* __restrict__ attentionWeights, T* __restrict__ output, int32_t total, int32_t Lq, int32_t S, int32_t M,
    int32_t D, int32_t L, int32_t P)
{
    using acc_t = typename AccType<T>::type;
    int32_t const rowStride = M * D;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    {
        int32_t const idx = static_cast<int32_t>(i);
        int32_t const d = idx % D;
        int32_t const nqm = idx / D;
        int32_t const n = nqm / (M * Lq);
        int32_t const m = nqm % M;
        T const* const valueBase = value + static_cast<int64_t>(n) * S * rowStride + m * D + d;
        int64_t lp = static_cast<int64_t>(nqm) * L * P;
        acc_t acc[1] = {acc_t(0)};
        for (int32_t l = 0; l < L; ++l)
        {
            Level const lv = loadLevel(spatialShapes, levelStartIndex, l, wideIndex, S);
            for (int32_t p = 0; p < P; ++p, ++lp)
            {
                accumulateSample<T, 1>(valueBase + lv.start * rowStride, lv, rowStride,
                    toAcc(samplingLocations[2 * lp]), toAcc(samplingLocations[2 * lp + 1]), toAcc(attentionWeights[lp]),
                    acc);
            }
        }
        output[static_cast<int64_t>(nqm) * D + d] = fromAcc<T>(acc[0]);
    }
}

template <typename T>
__device__ __forceinline__ T warpSum(T v)
{
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
    {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Backward. One warp per (n, q, m); grid-stride loop over warps (uniform per warp, so the whole warp
// always takes the same branches and the full-mask shuffles are legal).
//   totalWarps = N * Lq * M
template <typename T>
__global__ void msdaBackwardKernel(T const* __restrict__ value,
    void const* __restrict__ spatialShapes, void const* __restrict__ levelStartIndex, bool wideIndex,
    T const* __restrict__ samplingLocations, T const* __restrict__ attentionWeights, T const* __restrict__ gradOutput,
    T* __restrict__ gradValue, T* __restrict__ gradLocations, T* __restrict__ gradWeights, int32_t totalWarps,
    int32_t Lq, int32_t S, int32_t M, int32_t D, int32_t L, int32_t P)
{
    int32_t const lane = threadIdx.x & 31;
    int32_t const warpsPerBlock = blockDim.x >> 5;
    int32_t const rowStride = M * D;
    int32_t const LP = L * P;

    int64_t const stride = static_cast<int64_t>(gridDim.x) * warpsPerBlock;
    for (int64_t w = static_cast<int64_t>(blockIdx.x) * warpsPerBlock + (threadIdx.x >> 5); w < totalWarps; w += stride)
    {
        int32_t const nqm = static_cast<int32_t>(w);
        int32_t const m = nqm % M;
        int32_t const n = nqm / (M * Lq);
        int64_t const valueOffset = static_cast<int64_t>(n) * S * rowStride + m * D;
        T const* const valueBase = value + valueOffset;
        T* const gradValueBase = gradValue + valueOffset;
        T const* const gradOut = gradOutput + static_cast<int64_t>(nqm) * D;
        int64_t const lpBase = static_cast<int64_t>(nqm) * LP;

        for (int32_t l = 0; l < L; ++l)
        {
            Level const lv = loadLevel(spatialShapes, levelStartIndex, l, wideIndex, S);
            int32_t const H = lv.H; // 0 for a level that does not fit S: no sample is inside, gradients are 0
            int32_t const W = lv.W;
            int64_t const levelOffset = lv.start * rowStride;
            T const fH = static_cast<T>(H);
            T const fW = static_cast<T>(W);

            for (int32_t p = 0; p < P; ++p)
            {
                int64_t const lp = lpBase + l * P + p;
                T const x = samplingLocations[2 * lp];
                T const y = samplingLocations[2 * lp + 1];
                T const w = attentionWeights[lp];
                T const hIm = y * fH - T(0.5);
                T const wIm = x * fW - T(0.5);

                T sumValue = T(0); // sum_d g_d * sample_d          -> dL/dw
                T sumDw = T(0);    // sum_d g_d * d sample_d / d wIm -> dL/dx / (w * W)
                T sumDh = T(0);    // sum_d g_d * d sample_d / d hIm -> dL/dy / (w * H)
                if (hIm > T(-1) && wIm > T(-1) && hIm < fH && wIm < fW)
                {
                    int32_t const h0 = static_cast<int32_t>(floor(hIm));
                    int32_t const w0 = static_cast<int32_t>(floor(wIm));
                    T const lh = hIm - h0;
                    T const lw = wIm - w0;
                    T const hh = T(1) - lh;
                    T const hw = T(1) - lw;
                    bool const top = h0 >= 0;
                    bool const bottom = h0 + 1 <= H - 1;
                    bool const left = w0 >= 0;
                    bool const right = w0 + 1 <= W - 1;
                    int64_t const o00 = levelOffset + (static_cast<int64_t>(h0) * W + w0) * rowStride;
                    int64_t const o01 = o00 + rowStride;
                    int64_t const o10 = o00 + static_cast<int64_t>(W) * rowStride;
                    int64_t const o11 = o10 + rowStride;

                    for (int32_t d = lane; d < D; d += 32)
                    {
                        T const g = gradOut[d];
                        T const v00 = (top && left) ? valueBase[o00 + d] : T(0);
                        T const v01 = (top && right) ? valueBase[o01 + d] : T(0);
                        T const v10 = (bottom && left) ? valueBase[o10 + d] : T(0);
                        T const v11 = (bottom && right) ? valueBase[o11 + d] : T(0);
                        T const sample = hh * hw * v00 + hh * lw * v01 + lh * hw * v10 + lh * lw * v11;
                        sumValue += g * sample;
                        sumDw += g * (hh * (v01 - v00) + lh * (v11 - v10));
                        sumDh += g * (hw * (v10 - v00) + lw * (v11 - v01));
                        T const gw = g * w;
                        if (top && left)
                        {
                            atomicAdd(gradValueBase + o00 + d, gw * hh * hw);
                        }
                        if (top && right)
                        {
                            atomicAdd(gradValueBase + o01 + d, gw * hh * lw);
                        }
                        if (bottom && left)
                        {
                            atomicAdd(gradValueBase + o10 + d, gw * lh * hw);
                        }
                        if (bottom && right)
                        {
                            atomicAdd(gradValueBase + o11 + d, gw * lh * lw);
                        }
                    }
                    sumValue = warpSum(sumValue);
                    sumDw = warpSum(sumDw);
                    sumDh = warpSum(sumDh);
                }
                if (lane == 0)
                {
                    gradWeights[lp] = sumValue;
                    gradLocations[2 * lp] = sumDw * fW * w;
                    gradLocations[2 * lp + 1] = sumDh * fH * w;
                }
            }
        }
    }
}

} // namespace detail
} // namespace msda
} // namespace autr
