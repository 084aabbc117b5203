// AuTR multi-scale deformable attention (MSDA): host-side API of the CUDA kernels.
//
// This header is plain C++ (no CUDA device code), so it can be included by the PyTorch binding
// (compiled by the host compiler) and by the TensorRT plugin alike. The kernels themselves live in
// ms_deform_attn.cuh and are instantiated once, in ms_deform_attn.cu.
//
// Semantics (see DESIGN.md, "MSDA op contract"), all tensors contiguous, row-major:
//   value               [N, S, M, D]        S = sum_l H_l * W_l
//   spatial_shapes      [L, 2]   int32      (H_l, W_l)
//   level_start_index   [L]      int32      offset of level l along S
//   sampling_locations  [N, Lq, M, L, P, 2] (x, y), normalised to [0, 1]
//   attention_weights   [N, Lq, M, L, P]
//   output              [N, Lq, M * D]
// out[n, q, m*D + d] = sum_{l,p} w[n,q,m,l,p] * bilinear(value[n, level l, m, d], x*W_l - 0.5, y*H_l - 0.5)
// with zero contribution from map corners that fall outside the level (grid_sample semantics,
// align_corners=False, padding_mode="zeros").
//
// Index tensors are int32 or int64 on the device (IndexType). Every tensor must have fewer than 2^31 elements
// (checked here).
#pragma once

#include "ms_deform_attn_problem.h"

#include <cstdint>
#include <cuda_runtime_api.h>

namespace autr
{
namespace msda
{

enum class DataType : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,  // forward only (fp32 accumulation)
    kFloat64 = 2,
    kBFloat16 = 3, // forward only (fp32 accumulation)
};

// Element type of spatial_shapes / level_start_index on the device: int32 (TensorRT, ONNX Runtime) or int64
// (PyTorch's default, passed as they are: no conversion per call).
enum class IndexType : int32_t
{
    kInt32 = 0,
    kInt64 = 1,
};

// Returns cudaErrorInvalidValue for inconsistent/oversized problems, otherwise the launch status.
// Forward supports kFloat32, kFloat16, kBFloat16 and kFloat64; value, sampling_locations, attention_weights and
// output all have the given type. Asynchronous on `stream`. Levels whose (H, W, start) read from the device do
// not fit inside S are skipped (contribute zero) instead of being read out of bounds.
// `specialise` = false forces the generic kernel (run-time L, P); benchmarks and tests compare the two.
cudaError_t forward(DataType type, Problem const& problem, void const* value, void const* spatial_shapes,
    void const* level_start_index, void const* sampling_locations, void const* attention_weights, void* output,
    cudaStream_t stream, IndexType index_type = IndexType::kInt32, bool specialise = true);

// Deformable-DETR's one-thread-per-channel forward (the research baseline of benchmarks/gpu_check.py): same
// semantics and types as forward(), scalar loads, run-time L and P.
cudaError_t forwardBaseline(DataType type, Problem const& problem, void const* value, void const* spatial_shapes,
    void const* level_start_index, void const* sampling_locations, void const* attention_weights, void* output,
    cudaStream_t stream, IndexType index_type = IndexType::kInt32);

// Backward for kFloat32 and kFloat64 (kFloat16 / kBFloat16 return cudaErrorNotSupported: callers upcast).
// grad_value is zeroed on `stream` and then accumulated with atomicAdd; grad_sampling_locations and
// grad_attention_weights are fully written (no initialisation needed).
cudaError_t backward(DataType type, Problem const& problem, void const* value, void const* spatial_shapes,
    void const* level_start_index, void const* sampling_locations, void const* attention_weights,
    void const* grad_output, void* grad_value, void* grad_sampling_locations, void* grad_attention_weights,
    cudaStream_t stream, IndexType index_type = IndexType::kInt32);

// Channels per thread the forward kernel would use for this problem (1, 2, 4 or 8); exposed for
// benchmarks and tests. Returns 0 for an unsupported type.
int32_t forwardVectorWidth(DataType type, int64_t D, void const* value, void const* output);

// Whether forward() runs a kernel compiled for exactly these (L, P) (unrolled sample loops).
bool forwardIsSpecialised(int64_t L, int64_t P);

} // namespace msda
} // namespace autr
