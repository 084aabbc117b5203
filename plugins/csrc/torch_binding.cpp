// PyTorch binding of the AuTR MSDA CUDA kernels (ms_deform_attn.cu).
// Built on demand by autr.plugins.torch_op.load_extension() with torch.utils.cpp_extension.
#include <torch/extension.h>

// Only c10 CUDA headers (cuda_runtime_api.h): ATen/cuda/CUDAContext.h would also need the cuBLAS /
// cuSPARSE / cuSOLVER headers, which minimal CUDA toolkits lack.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "ms_deform_attn.h"

namespace
{

autr::msda::DataType toKernelType(at::ScalarType t)
{
    switch (t)
    {
    case at::kFloat: return autr::msda::DataType::kFloat32;
    case at::kHalf: return autr::msda::DataType::kFloat16;
    case at::kDouble: return autr::msda::DataType::kFloat64;
    case at::kBFloat16: return autr::msda::DataType::kBFloat16;
    default: TORCH_CHECK(false, "autr MSDA: unsupported dtype ", t, " (float32, float16, bfloat16 or float64)");
    }
    return autr::msda::DataType::kFloat32;
}

struct Checked
{
    autr::msda::Problem problem;
    at::Tensor value, shapes, starts, loc, attn;
    autr::msda::IndexType indexType{autr::msda::IndexType::kInt64};
};

// The kernels read int32 or int64 index tensors on the device as they are: int64 CUDA tensors (what the
// model passes) cost no conversion kernel and no allocation per call. Host tensors are copied once to the
// device; other integer types are converted.
at::Tensor deviceIndex(at::Tensor const& t, at::Device device)
{
    auto const type = (t.scalar_type() == at::kInt || t.scalar_type() == at::kLong) ? t.scalar_type() : at::kLong;
    if (t.device() == device && t.scalar_type() == type && t.is_contiguous())
    {
        return t;
    }
    return t.to(device, type).contiguous();
}

Checked checkInputs(at::Tensor const& value, at::Tensor const& spatialShapes, at::Tensor const& levelStartIndex,
    at::Tensor const& samplingLocations, at::Tensor const& attentionWeights)
{
    TORCH_CHECK(value.is_cuda(), "autr MSDA: value must be a CUDA tensor");
    TORCH_CHECK(samplingLocations.device() == value.device() && attentionWeights.device() == value.device(),
        "autr MSDA: value, sampling_locations and attention_weights must be on the same device");
    TORCH_CHECK(value.dim() == 4, "autr MSDA: value must be [N, S, M, D], got ", value.sizes());
    TORCH_CHECK(spatialShapes.dim() == 2 && spatialShapes.size(1) == 2, "autr MSDA: spatial_shapes must be [L, 2], got ",
        spatialShapes.sizes());
    TORCH_CHECK(levelStartIndex.dim() == 1 && levelStartIndex.size(0) == spatialShapes.size(0),
        "autr MSDA: level_start_index must be [L], got ", levelStartIndex.sizes());
    TORCH_CHECK(samplingLocations.dim() == 6 && samplingLocations.size(5) == 2,
        "autr MSDA: sampling_locations must be [N, Lq, M, L, P, 2], got ", samplingLocations.sizes());
    TORCH_CHECK(attentionWeights.dim() == 5, "autr MSDA: attention_weights must be [N, Lq, M, L, P], got ",
        attentionWeights.sizes());
    TORCH_CHECK(at::isIntegralType(spatialShapes.scalar_type(), /*includeBool=*/false)
            && at::isIntegralType(levelStartIndex.scalar_type(), /*includeBool=*/false),
        "autr MSDA: spatial_shapes and level_start_index must be integer tensors");
    TORCH_CHECK(samplingLocations.scalar_type() == value.scalar_type()
            && attentionWeights.scalar_type() == value.scalar_type(),
        "autr MSDA: value, sampling_locations and attention_weights must have the same dtype, got ",
        value.scalar_type(), ", ", samplingLocations.scalar_type(), ", ", attentionWeights.scalar_type());

    Checked c;
    auto& p = c.problem;
    p.N = value.size(0);
    p.S = value.size(1);
    p.M = value.size(2);
    p.D = value.size(3);
    p.L = spatialShapes.size(0);
    p.Lq = samplingLocations.size(1);
    p.P = samplingLocations.size(4);
    TORCH_CHECK(samplingLocations.size(0) == p.N && samplingLocations.size(2) == p.M && samplingLocations.size(3) == p.L,
        "autr MSDA: sampling_locations ", samplingLocations.sizes(), " does not match value ", value.sizes(), " and ",
        p.L, " levels");
    TORCH_CHECK(attentionWeights.size(0) == p.N && attentionWeights.size(1) == p.Lq && attentionWeights.size(2) == p.M
            && attentionWeights.size(3) == p.L && attentionWeights.size(4) == p.P,
        "autr MSDA: attention_weights ", attentionWeights.sizes(), " does not match sampling_locations ",
        samplingLocations.sizes());
    TORCH_CHECK(p.M > 0 && p.D > 0 && p.L > 0 && p.P > 0, "autr MSDA: M, D, L and P must be positive");

    if (!spatialShapes.is_cuda())
    {
        // Cheap consistency check when the shapes live on the host (no device sync needed).
        auto const hw = spatialShapes.to(at::kLong);
        int64_t const total = (hw.select(1, 0) * hw.select(1, 1)).sum().item<int64_t>();
        TORCH_CHECK(total == p.S, "autr MSDA: sum(H*W) of spatial_shapes is ", total, " but value has S = ", p.S);
    }

    c.value = value.contiguous();
    c.loc = samplingLocations.contiguous();
    c.attn = attentionWeights.contiguous();
    c.shapes = deviceIndex(spatialShapes, value.device());
    c.starts = deviceIndex(levelStartIndex, value.device()).to(c.shapes.scalar_type());
    c.indexType = c.shapes.scalar_type() == at::kInt ? autr::msda::IndexType::kInt32 : autr::msda::IndexType::kInt64;
    return c;
}

// impl: 0 the kernel (specialised (L, P) where compiled), 1 the kernel's generic (run-time L, P) path,
// 2 the Deformable-DETR-style one-thread-per-channel baseline (benchmarks/gpu_check.py).
at::Tensor msdaForward(at::Tensor const& value, at::Tensor const& spatialShapes, at::Tensor const& levelStartIndex,
    at::Tensor const& samplingLocations, at::Tensor const& attentionWeights, int64_t impl)
{
    TORCH_CHECK(impl >= 0 && impl <= 2, "autr MSDA: impl must be 0 (kernel), 1 (generic kernel) or 2 (baseline)");
    Checked c = checkInputs(value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights);
    c10::cuda::CUDAGuard const guard(value.device());
    auto const& p = c.problem;
    at::Tensor out = at::empty({p.N, p.Lq, p.M * p.D}, c.value.options());
    auto const type = toKernelType(c.value.scalar_type());
    cudaStream_t const stream = c10::cuda::getCurrentCUDAStream().stream();
    cudaError_t const err = impl == 2
        ? autr::msda::forwardBaseline(type, p, c.value.data_ptr(), c.shapes.data_ptr(), c.starts.data_ptr(),
            c.loc.data_ptr(), c.attn.data_ptr(), out.data_ptr(), stream, c.indexType)
        : autr::msda::forward(type, p, c.value.data_ptr(), c.shapes.data_ptr(), c.starts.data_ptr(),
            c.loc.data_ptr(), c.attn.data_ptr(), out.data_ptr(), stream, c.indexType, impl == 0);
    TORCH_CHECK(err == cudaSuccess, "autr MSDA forward failed: ", cudaGetErrorString(err));
    return out;
}

std::vector<at::Tensor> msdaBackward(at::Tensor const& value, at::Tensor const& spatialShapes,
    at::Tensor const& levelStartIndex, at::Tensor const& samplingLocations, at::Tensor const& attentionWeights,
    at::Tensor const& gradOutput)
{
    Checked c = checkInputs(value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights);
    auto const& p = c.problem;
    TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
        "autr MSDA backward supports float32 and float64 (upcast float16 / bfloat16 first), got ", value.scalar_type());
    TORCH_CHECK(gradOutput.device() == value.device() && gradOutput.scalar_type() == value.scalar_type(),
        "autr MSDA: grad_output must match value's device and dtype");
    TORCH_CHECK(gradOutput.dim() == 3 && gradOutput.size(0) == p.N && gradOutput.size(1) == p.Lq
            && gradOutput.size(2) == p.M * p.D,
        "autr MSDA: grad_output must be [N, Lq, M*D], got ", gradOutput.sizes());
    c10::cuda::CUDAGuard const guard(value.device());
    at::Tensor const go = gradOutput.contiguous();
    at::Tensor gradValue = at::empty_like(c.value); // zeroed by the launcher on the stream
    at::Tensor gradLoc = at::empty_like(c.loc);
    at::Tensor gradAttn = at::empty_like(c.attn);
    cudaError_t const err = autr::msda::backward(toKernelType(c.value.scalar_type()), p, c.value.data_ptr(),
        c.shapes.data_ptr(), c.starts.data_ptr(), c.loc.data_ptr(), c.attn.data_ptr(), go.data_ptr(),
        gradValue.data_ptr(), gradLoc.data_ptr(), gradAttn.data_ptr(), c10::cuda::getCurrentCUDAStream().stream(),
        c.indexType);
    TORCH_CHECK(err == cudaSuccess, "autr MSDA backward failed: ", cudaGetErrorString(err));
    return {gradValue, gradLoc, gradAttn};
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.doc() = "AuTR multi-scale deformable attention CUDA kernels";
    m.def("forward", &msdaForward, "MSDA forward (CUDA)", pybind11::arg("value"), pybind11::arg("spatial_shapes"),
        pybind11::arg("level_start_index"), pybind11::arg("sampling_locations"), pybind11::arg("attention_weights"),
        pybind11::arg("impl") = 0);
    m.def("is_specialised", &autr::msda::forwardIsSpecialised, "whether (L, P) runs an unrolled kernel",
        pybind11::arg("levels"), pybind11::arg("points"));
    m.def("backward", &msdaBackward, "MSDA backward (CUDA, float32/float64)", pybind11::arg("value"),
        pybind11::arg("spatial_shapes"), pybind11::arg("level_start_index"), pybind11::arg("sampling_locations"),
        pybind11::arg("attention_weights"), pybind11::arg("grad_output"));
}
