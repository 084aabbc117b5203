// AuTR multi-scale deformable attention (MSDA): launchers and the only instantiation of the kernels.
// Compiled into the PyTorch extension, libautr_trt_plugin.so and libautr_ort_ops_cuda.so.
#include "ms_deform_attn.cuh"
#include "ms_deform_attn.h"

#include <climits>
#include <cstdint>

namespace autr
{
namespace msda
{
namespace
{

constexpr int64_t kMaxElements = INT32_MAX;

bool validProblem(Problem const& p)
{
    if (p.N < 0 || p.S < 0 || p.M <= 0 || p.D <= 0 || p.L <= 0 || p.P <= 0 || p.Lq < 0)
    {
        return false;
    }
    // All index arithmetic inside the kernels is 32-bit: keep every tensor below 2^31 elements.
    auto const fits = [](int64_t a, int64_t b) { return b == 0 || a <= kMaxElements / b; };
    int64_t const rows = p.N * p.Lq * p.M; // output rows (n, q, m)
    return fits(p.N, p.Lq) && fits(p.N * p.Lq, p.M) && fits(rows, p.D) && fits(rows, p.L * p.P * 2)
        && fits(p.N, p.S) && fits(p.N * p.S, p.M * p.D);
}

bool aligned(void const* ptr, int64_t bytes)
{
    return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

template <typename T>
int32_t pickVectorWidth(int64_t D, void const* value, void const* output)
{
    // Widest load of at most 16 bytes that divides D and matches the base-pointer alignment.
    // fp32: 4 (16 B) / 2 / 1;  fp16: 8 (16 B) / 2 (half2) / 1;  fp64: 1.
    int32_t const candidates[] = {sizeof(T) == 2 ? 8 : (sizeof(T) == 4 ? 4 : 1), 2, 1};
    for (int32_t vec : candidates)
    {
        if (sizeof(T) == 8 && vec != 1)
        {
            continue;
        }
        int64_t const bytes = vec * static_cast<int64_t>(sizeof(T));
        if (D % vec == 0 && aligned(value, bytes) && aligned(output, bytes))
        {
            return vec;
        }
    }
    return 1;
}

int32_t blocksFor(int64_t threads)
{
    int64_t const blocks = (threads + detail::kBlockThreads - 1) / detail::kBlockThreads;
    return static_cast<int32_t>(blocks < 1 ? 1 : blocks);
}

struct Args
{
    Problem const& p;
    void const* value;
    void const* shapes;
    void const* starts;
    bool wide;
    void const* loc;
    void const* attn;
    void* out;
    cudaStream_t stream;
};

template <typename T, int VEC>
cudaError_t launchForward(Args const& a, bool specialise)
{
    Problem const& p = a.p;
    int64_t const total = p.N * p.Lq * p.M * (p.D / VEC);
    if (total == 0)
    {
        return cudaSuccess;
    }
    return detail::dispatchLevelsPoints(p.L, p.P, specialise, [&](auto ls, auto ps) {
        detail::msdaForwardKernel<T, VEC, decltype(ls)::value, decltype(ps)::value>
            <<<blocksFor(total), detail::kBlockThreads, 0, a.stream>>>(static_cast<T const*>(a.value), a.shapes,
                a.starts, a.wide, static_cast<T const*>(a.loc), static_cast<T const*>(a.attn), static_cast<T*>(a.out),
                static_cast<int32_t>(total), static_cast<int32_t>(p.Lq), static_cast<int32_t>(p.S),
                static_cast<int32_t>(p.M), static_cast<int32_t>(p.D), static_cast<int32_t>(p.L),
                static_cast<int32_t>(p.P));
        return cudaGetLastError();
    });
}

template <typename T>
cudaError_t forwardTyped(Args const& a, bool specialise)
{
    switch (pickVectorWidth<T>(a.p.D, a.value, a.out))
    {
    case 8:
        if constexpr (sizeof(T) == 2)
        {
            return launchForward<T, 8>(a, specialise);
        }
        break;
    case 4:
        if constexpr (sizeof(T) == 4)
        {
            return launchForward<T, 4>(a, specialise);
        }
        break;
    case 2:
        if constexpr (sizeof(T) <= 4)
        {
            return launchForward<T, 2>(a, specialise);
        }
        break;
    default: break;
    }
    // fp64 runs only the generic kernel (gradcheck and tests; no speed to gain there)
    return launchForward<T, 1>(a, specialise && sizeof(T) < 8);
}

template <typename T>
cudaError_t baselineTyped(Args const& a)
{
    Problem const& p = a.p;
    int64_t const total = p.N * p.Lq * p.M * p.D;
    if (total == 0)
    {
        return cudaSuccess;
    }
    int64_t const blocks = (total + detail::kBaselineBlockThreads - 1) / detail::kBaselineBlockThreads;
    detail::msdaForwardBaselineKernel<T><<<static_cast<int32_t>(blocks), detail::kBaselineBlockThreads, 0, a.stream>>>(
        static_cast<T const*>(a.value), a.shapes, a.starts, a.wide, static_cast<T const*>(a.loc),
        static_cast<T const*>(a.attn), static_cast<T*>(a.out), static_cast<int32_t>(total),
        static_cast<int32_t>(p.Lq), static_cast<int32_t>(p.S), static_cast<int32_t>(p.M), static_cast<int32_t>(p.D),
        static_cast<int32_t>(p.L), static_cast<int32_t>(p.P));
    return cudaGetLastError();
}

template <typename T>
cudaError_t backwardTyped(Problem const& p, void const* value, void const* shapes, void const* starts, bool wide,
    void const* loc, void const* attn, void const* gradOut, void* gradValue, void* gradLoc, void* gradAttn,
    cudaStream_t stream)
{
    cudaError_t err = cudaMemsetAsync(gradValue, 0, p.N * p.S * p.M * p.D * sizeof(T), stream);
    if (err != cudaSuccess)
    {
        return err;
    }
    int64_t const warps = p.N * p.Lq * p.M;
    if (warps == 0)
    {
        return cudaSuccess;
    }
    detail::msdaBackwardKernel<T><<<blocksFor(warps * 32), detail::kBlockThreads, 0, stream>>>(
        static_cast<T const*>(value), shapes, starts, wide, static_cast<T const*>(loc), static_cast<T const*>(attn),
        static_cast<T const*>(gradOut), static_cast<T*>(gradValue), static_cast<T*>(gradLoc),
        static_cast<T*>(gradAttn), static_cast<int32_t>(warps), static_cast<int32_t>(p.Lq), static_cast<int32_t>(p.S),
        static_cast<int32_t>(p.M), static_cast<int32_t>(p.D), static_cast<int32_t>(p.L), static_cast<int32_t>(p.P));
    return cudaGetLastError();
}

template <template <typename> class Fn, typename... A>
cudaError_t byType(DataType type, A&&... args)
{
    switch (type)
    {
    case DataType::kFloat32: return Fn<float>::run(args...);
    case DataType::kFloat16: return Fn<__half>::run(args...);
    case DataType::kBFloat16: return Fn<__nv_bfloat16>::run(args...);
    case DataType::kFloat64: return Fn<double>::run(args...);
    }
    return cudaErrorInvalidValue;
}

template <typename T>
struct ForwardFn
{
    static cudaError_t run(Args const& a, bool specialise)
    {
        return forwardTyped<T>(a, specialise);
    }
};

template <typename T>
struct BaselineFn
{
    static cudaError_t run(Args const& a)
    {
        return baselineTyped<T>(a);
    }
};

} // namespace

cudaError_t forward(DataType type, Problem const& problem, void const* value, void const* spatial_shapes,
    void const* level_start_index, void const* sampling_locations, void const* attention_weights, void* output,
    cudaStream_t stream, IndexType index_type, bool specialise)
{
    if (!validProblem(problem))
    {
        return cudaErrorInvalidValue;
    }
    Args const a{problem, value, spatial_shapes, level_start_index, index_type == IndexType::kInt64,
        sampling_locations, attention_weights, output, stream};
    return byType<ForwardFn>(type, a, specialise);
}

cudaError_t forwardBaseline(DataType type, Problem const& problem, void const* value, void const* spatial_shapes,
    void const* level_start_index, void const* sampling_locations, void const* attention_weights, void* output,
    cudaStream_t stream, IndexType index_type)
{
    if (!validProblem(problem))
    {
        return cudaErrorInvalidValue;
    }
    Args const a{problem, value, spatial_shapes, level_start_index, index_type == IndexType::kInt64,
        sampling_locations, attention_weights, output, stream};
    return byType<BaselineFn>(type, a);
}

cudaError_t backward(DataType type, Problem const& problem, void const* value, void const* spatial_shapes,
    void const* level_start_index, void const* sampling_locations, void const* attention_weights,
    void const* grad_output, void* grad_value, void* grad_sampling_locations, void* grad_attention_weights,
    cudaStream_t stream, IndexType index_type)
{
    if (!validProblem(problem))
    {
        return cudaErrorInvalidValue;
    }
    bool const wide = index_type == IndexType::kInt64;
    switch (type)
    {
    case DataType::kFloat32:
        return backwardTyped<float>(problem, value, spatial_shapes, level_start_index, wide, sampling_locations,
            attention_weights, grad_output, grad_value, grad_sampling_locations, grad_attention_weights, stream);
    case DataType::kFloat64:
        return backwardTyped<double>(problem, value, spatial_shapes, level_start_index, wide, sampling_locations,
            attention_weights, grad_output, grad_value, grad_sampling_locations, grad_attention_weights, stream);
    case DataType::kFloat16:
    case DataType::kBFloat16: return cudaErrorNotSupported;
    }
    return cudaErrorInvalidValue;
}

bool forwardIsSpecialised(int64_t L, int64_t P)
{
    return detail::dispatchLevelsPoints(L, P, true, [](auto ls, auto) { return decltype(ls)::value > 0; });
}

int32_t forwardVectorWidth(DataType type, int64_t D, void const* value, void const* output)
{
    switch (type)
    {
    case DataType::kFloat32: return pickVectorWidth<float>(D, value, output);
    case DataType::kFloat16: return pickVectorWidth<__half>(D, value, output);
    case DataType::kBFloat16: return pickVectorWidth<__nv_bfloat16>(D, value, output);
    case DataType::kFloat64: return pickVectorWidth<double>(D, value, output);
    }
    return 0;
}

} // namespace msda
} // namespace autr
