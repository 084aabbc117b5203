// Host (CPU) emulation of the MSDA CUDA kernels, for tests on machines without a GPU.
//
// The kernels of ../ms_deform_attn.cuh are compiled unchanged by the host C++ compiler: the CUDA
// built-ins they use (threadIdx, blockIdx, blockDim, gridDim, __ldg, __shfl_xor_sync, atomicAdd) are
// provided below. Forward threads are independent and run one after another; backward warps run as
// 32 OS threads in lock step at every shuffle (a barrier per exchange), so the warp-reduction logic and
// its "whole warp takes the same path" assumption are exercised for real (a violation deadlocks and
// the test times out). Not part of any shipped library; built by tests/test_plugins.py with g++.
//
//   g++ -std=c++17 -O1 -shared -fPIC -pthread -I<cuda>/include msda_host_emulation.cpp -o libmsda_emu.so
#define AUTR_MSDA_HOST_EMULATION 1

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace autr_emu
{
struct Dim3
{
    unsigned x{0}, y{0}, z{0};
};

inline thread_local Dim3 tThreadIdx;
inline thread_local Dim3 tBlockIdx;
inline Dim3 gBlockDim;
inline Dim3 gGridDim;

// Reusable barrier for the 32 lanes of one emulated warp.
class Barrier
{
public:
    explicit Barrier(int n)
        : mCount(n)
        , mWaiting(0)
        , mGeneration(0)
    {
    }
    void arriveAndWait()
    {
        std::unique_lock<std::mutex> lock(mMutex);
        int const gen = mGeneration;
        if (++mWaiting == mCount)
        {
            mWaiting = 0;
            ++mGeneration;
            mCv.notify_all();
            return;
        }
        mCv.wait(lock, [&] { return gen != mGeneration; });
    }

private:
    std::mutex mMutex;
    std::condition_variable mCv;
    int mCount;
    int mWaiting;
    int mGeneration;
};

struct Warp
{
    Barrier barrier{32};
    unsigned char slots[32][16];
};

inline thread_local Warp* tWarp = nullptr;
inline std::mutex gAtomicMutex;
} // namespace autr_emu

#define threadIdx (autr_emu::tThreadIdx)
#define blockIdx (autr_emu::tBlockIdx)
#define blockDim (autr_emu::gBlockDim)
#define gridDim (autr_emu::gGridDim)

template <typename T>
inline T __ldg(T const* p)
{
    return *p;
}

template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T v, int laneMask)
{
    static_assert(sizeof(T) <= 16, "slot size");
    autr_emu::Warp* w = autr_emu::tWarp;
    int const lane = static_cast<int>(threadIdx.x & 31);
    std::memcpy(w->slots[lane], &v, sizeof(T));
    w->barrier.arriveAndWait();
    T out;
    std::memcpy(&out, w->slots[lane ^ laneMask], sizeof(T));
    w->barrier.arriveAndWait();
    return out;
}

template <typename T>
inline T atomicAdd(T* address, T v)
{
    std::lock_guard<std::mutex> lock(autr_emu::gAtomicMutex);
    T const old = *address;
    *address = old + v;
    return old;
}

#include "../ms_deform_attn.cuh"

namespace
{
using autr::msda::detail::kBlockThreads;

template <typename Body>
void runThreads(int32_t gridBlocks, int32_t blockThreads, Body&& body)
{
    autr_emu::gBlockDim = {static_cast<unsigned>(blockThreads), 1, 1};
    autr_emu::gGridDim = {static_cast<unsigned>(gridBlocks), 1, 1};
    for (int32_t b = 0; b < gridBlocks; ++b)
    {
        for (int32_t t = 0; t < blockThreads; ++t)
        {
            autr_emu::tBlockIdx = {static_cast<unsigned>(b), 0, 0};
            autr_emu::tThreadIdx = {static_cast<unsigned>(t), 0, 0};
            body();
        }
    }
}

// The launcher's choice of kernel (ms_deform_attn.cu): the (L, P) specialisation through the same
// dispatchLevelsPoints, fp64 generic only.
template <typename T, int VEC>
void runForward(void const* value, void const* shapes, void const* starts, bool wide, void const* loc, void const* attn,
    void* out, int64_t N, int64_t S, int64_t M, int64_t D, int64_t L, int64_t P, int64_t Lq, int32_t gridBlocks,
    bool specialise)
{
    int64_t const total = N * Lq * M * (D / VEC);
    autr::msda::detail::dispatchLevelsPoints(L, P, specialise && sizeof(T) < 8, [&](auto ls, auto ps) {
        runThreads(gridBlocks, kBlockThreads, [&] {
            autr::msda::detail::msdaForwardKernel<T, VEC, decltype(ls)::value, decltype(ps)::value>(
                static_cast<T const*>(value), shapes, starts, wide, static_cast<T const*>(loc),
                static_cast<T const*>(attn), static_cast<T*>(out), static_cast<int32_t>(total),
                static_cast<int32_t>(Lq), static_cast<int32_t>(S), static_cast<int32_t>(M), static_cast<int32_t>(D),
                static_cast<int32_t>(L), static_cast<int32_t>(P));
        });
        return 0;
    });
}

template <typename T>
void runBaseline(void const* value, void const* shapes, void const* starts, bool wide, void const* loc, void const* attn,
    void* out, int64_t N, int64_t S, int64_t M, int64_t D, int64_t L, int64_t P, int64_t Lq, int32_t gridBlocks)
{
    int64_t const total = N * Lq * M * D;
    runThreads(gridBlocks, autr::msda::detail::kBaselineBlockThreads, [&] {
        autr::msda::detail::msdaForwardBaselineKernel<T>(static_cast<T const*>(value), shapes, starts, wide,
            static_cast<T const*>(loc), static_cast<T const*>(attn), static_cast<T*>(out), static_cast<int32_t>(total),
            static_cast<int32_t>(Lq), static_cast<int32_t>(S), static_cast<int32_t>(M), static_cast<int32_t>(D),
            static_cast<int32_t>(L), static_cast<int32_t>(P));
    });
}

template <typename T>
void runBackward(void const* value, void const* shapes, void const* starts, bool wide, void const* loc, void const* attn,
    void const* gradOut, void* gradValue, void* gradLoc, void* gradAttn, int64_t N, int64_t S, int64_t M, int64_t D,
    int64_t L, int64_t P, int64_t Lq, int32_t gridBlocks)
{
    std::memset(gradValue, 0, static_cast<size_t>(N * S * M * D) * sizeof(T));
    int64_t const warps = N * Lq * M;
    autr_emu::gBlockDim = {static_cast<unsigned>(kBlockThreads), 1, 1};
    autr_emu::gGridDim = {static_cast<unsigned>(gridBlocks), 1, 1};
    for (int32_t b = 0; b < gridBlocks; ++b)
    {
        for (int32_t w = 0; w < kBlockThreads / 32; ++w)
        {
            autr_emu::Warp warp;
            std::vector<std::thread> lanes;
            lanes.reserve(32);
            for (int32_t lane = 0; lane < 32; ++lane)
            {
                lanes.emplace_back([&, b, w, lane] {
                    autr_emu::tBlockIdx = {static_cast<unsigned>(b), 0, 0};
                    autr_emu::tThreadIdx = {static_cast<unsigned>(w * 32 + lane), 0, 0};
                    autr_emu::tWarp = &warp;
                    autr::msda::detail::msdaBackwardKernel<T>(static_cast<T const*>(value), shapes, starts, wide,
                        static_cast<T const*>(loc), static_cast<T const*>(attn), static_cast<T const*>(gradOut),
                        static_cast<T*>(gradValue), static_cast<T*>(gradLoc), static_cast<T*>(gradAttn),
                        static_cast<int32_t>(warps), static_cast<int32_t>(Lq), static_cast<int32_t>(S),
                        static_cast<int32_t>(M), static_cast<int32_t>(D), static_cast<int32_t>(L),
                        static_cast<int32_t>(P));
                });
            }
            for (auto& t : lanes)
            {
                t.join();
            }
        }
    }
}
} // namespace

extern "C"
{
    // dtype: 0 float32, 1 float16, 2 float64, 3 bfloat16. vec: channels per thread (must divide D; 1/2/4 for
    // fp32, 1/2/8 for fp16 / bf16, 1 for fp64). wide: index tensors are int64 (else int32). specialise: take
    // the launcher's (L, P) specialisation where there is one (else the generic kernel). gridBlocks: emulated
    // grid size (small values exercise the grid-stride loop). Returns 0 on success, 1 for an unsupported
    // dtype/vec combination.
    int autr_msda_emu_forward(int dtype, int vec, int64_t N, int64_t S, int64_t M, int64_t D, int64_t L, int64_t P,
        int64_t Lq, void const* value, void const* shapes, void const* starts, void const* loc, void const* attn,
        void* out, int32_t gridBlocks, int wide, int specialise)
    {
        if (D % vec != 0)
        {
            return 1;
        }
#define AUTR_EMU_FWD(CODE, T, V)                                                                                     \
    if (dtype == CODE && vec == V)                                                                                   \
    {                                                                                                                \
        runForward<T, V>(value, shapes, starts, wide != 0, loc, attn, out, N, S, M, D, L, P, Lq, gridBlocks,         \
            specialise != 0);                                                                                        \
        return 0;                                                                                                    \
    }
        AUTR_EMU_FWD(0, float, 1)
        AUTR_EMU_FWD(0, float, 2)
        AUTR_EMU_FWD(0, float, 4)
        AUTR_EMU_FWD(1, __half, 1)
        AUTR_EMU_FWD(1, __half, 2)
        AUTR_EMU_FWD(1, __half, 8)
        AUTR_EMU_FWD(3, __nv_bfloat16, 1)
        AUTR_EMU_FWD(3, __nv_bfloat16, 2)
        AUTR_EMU_FWD(3, __nv_bfloat16, 8)
        AUTR_EMU_FWD(2, double, 1)
#undef AUTR_EMU_FWD
        return 1;
    }

    // 1 when the launcher compiles a kernel for exactly (L, P), else 0.
    int autr_msda_emu_is_specialised(int64_t L, int64_t P)
    {
        return autr::msda::detail::dispatchLevelsPoints(L, P, true, [](auto ls, auto) { return decltype(ls)::value > 0; })
            ? 1
            : 0;
    }

    // The Deformable-DETR-style baseline kernel (one thread per channel); dtype as above.
    int autr_msda_emu_baseline(int dtype, int64_t N, int64_t S, int64_t M, int64_t D, int64_t L, int64_t P, int64_t Lq,
        void const* value, void const* shapes, void const* starts, void const* loc, void const* attn, void* out,
        int32_t gridBlocks, int wide)
    {
        switch (dtype)
        {
        case 0: runBaseline<float>(value, shapes, starts, wide != 0, loc, attn, out, N, S, M, D, L, P, Lq, gridBlocks); return 0;
        case 1: runBaseline<__half>(value, shapes, starts, wide != 0, loc, attn, out, N, S, M, D, L, P, Lq, gridBlocks); return 0;
        case 2: runBaseline<double>(value, shapes, starts, wide != 0, loc, attn, out, N, S, M, D, L, P, Lq, gridBlocks); return 0;
        case 3: runBaseline<__nv_bfloat16>(value, shapes, starts, wide != 0, loc, attn, out, N, S, M, D, L, P, Lq, gridBlocks); return 0;
        default: return 1;
        }
    }

    int autr_msda_emu_backward(int dtype, int64_t N, int64_t S, int64_t M, int64_t D, int64_t L, int64_t P,
        int64_t Lq, void const* value, void const* shapes, void const* starts, void const* loc, void const* attn,
        void const* gradOut, void* gradValue, void* gradLoc, void* gradAttn, int32_t gridBlocks, int wide)
    {
        if (dtype == 0)
        {
            runBackward<float>(value, shapes, starts, wide != 0, loc, attn, gradOut, gradValue, gradLoc, gradAttn, N,
                S, M, D, L, P, Lq, gridBlocks);
            return 0;
        }
        if (dtype == 2)
        {
            runBackward<double>(value, shapes, starts, wide != 0, loc, attn, gradOut, gradValue, gradLoc, gradAttn, N,
                S, M, D, L, P, Lq, gridBlocks);
            return 0;
        }
        return 1;
    }
}
