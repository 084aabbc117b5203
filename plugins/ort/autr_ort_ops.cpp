// ONNX Runtime custom-op library for the plugin graph's MSDA node.
//
// Registers, in domain "autr", the op "AutrMSDeformAttn" (attribute plugin_version, which must be "1"):
//   inputs  value [N,S,M,D], spatial_shapes [L,2] int32, level_start_index [L] int32,
//           sampling_locations [N,Lq,M,L,P,2], attention_weights [N,Lq,M,L,P]
//   output  [N,Lq,M*D]
// value / locations / weights / output are all float32 or all float16.
//
// CPU execution provider: the kernel of plugins/csrc/ms_deform_attn_cpu.cpp, run over (n, q) rows on ONNX
// Runtime's own intra-op thread pool (KernelContext_ParallelFor); float16 tensors are converted to float32
// for the computation and the result back to float16.
// CUDA execution provider (only when compiled with AUTR_ORT_WITH_CUDA, i.e. libautr_ort_ops_cuda.so): the
// CUDA kernel of plugins/csrc/ms_deform_attn.cu, launched on the session's compute stream; float16 natively.
//
// Only the ONNX Runtime C API is used. The library does not link against libonnxruntime: ONNX Runtime
// passes its OrtApiBase to RegisterCustomOps. It asks for the API version of the headers it was compiled
// with (ORT_API_VERSION); an older ONNX Runtime refuses that version and registration fails with a message
// that says so. Newer ONNX Runtime releases serve older API versions, so one build runs on them all.
#include "onnxruntime_c_api.h"

#include "ms_deform_attn_cpu.h"
#if defined(AUTR_ORT_WITH_CUDA)
#include "ms_deform_attn.h"
#endif

#include <climits>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#define AUTR_ORT_EXPORT extern "C" __attribute__((visibility("default")))

namespace
{

namespace cpu = autr::msda::cpu;

constexpr char kDomain[] = "autr";
constexpr char kOpName[] = "AutrMSDeformAttn";
constexpr char kPluginVersion[] = "1";
constexpr char kVersionAttribute[] = "plugin_version";
constexpr size_t kNumInputs = 5;
constexpr int64_t kValueChunk = int64_t{1} << 16; // float16 -> float32 conversion: elements per task

// ------------------------------------------------------------------------------------------ errors

std::string typeName(ONNXTensorElementDataType type)
{
    switch (type)
    {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    default: return "element type " + std::to_string(static_cast<int>(type));
    }
}

std::string dimsText(std::vector<int64_t> const& dims)
{
    std::string out = "[";
    for (size_t i = 0; i < dims.size(); ++i)
    {
        out += (i ? ", " : "") + std::to_string(dims[i]);
    }
    return out + "]";
}

// Holds a status returned by an OrtApi call; converts "error" into a returned OrtStatus*.
#define AUTR_ORT_RETURN_IF_ERROR(expr)                                                                              \
    do                                                                                                             \
    {                                                                                                              \
        OrtStatus* autrStatus_ = (expr);                                                                           \
        if (autrStatus_ != nullptr)                                                                                \
        {                                                                                                          \
            return autrStatus_;                                                                                    \
        }                                                                                                          \
    } while (0)

// ------------------------------------------------------------------------------------------ kernel state

struct Kernel
{
    OrtApi const* api{nullptr};
    std::string where; // "AutrMSDeformAttn node 'name'" for messages
    ONNXTensorElementDataType type{ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
    bool cuda{false};
    cpu::Isa isa{cpu::Isa::kGeneric};

    OrtStatus* fail(std::string const& msg, OrtErrorCode code = ORT_INVALID_ARGUMENT) const
    {
        return api->CreateStatus(code, (where + ": " + msg).c_str());
    }
};

struct Tensor
{
    OrtValue const* value{nullptr};
    ONNXTensorElementDataType type{ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED};
    std::vector<int64_t> dims;

    void const* data(OrtApi const* api, OrtStatus** status) const
    {
        void* ptr = nullptr;
        *status = api->GetTensorMutableData(const_cast<OrtValue*>(value), &ptr);
        return ptr;
    }
};

OrtStatus* describe(OrtApi const* api, OrtValue const* value, Tensor* out)
{
    out->value = value;
    OrtTensorTypeAndShapeInfo* info = nullptr;
    AUTR_ORT_RETURN_IF_ERROR(api->GetTensorTypeAndShape(value, &info));
    size_t rank = 0;
    OrtStatus* status = api->GetTensorElementType(info, &out->type);
    if (status == nullptr)
    {
        status = api->GetDimensionsCount(info, &rank);
    }
    if (status == nullptr)
    {
        out->dims.assign(rank, 0);
        status = api->GetDimensions(info, out->dims.data(), rank);
    }
    api->ReleaseTensorTypeAndShapeInfo(info);
    return status;
}

char const* const kInputNames[kNumInputs]
    = {"value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"};

// Reads the five inputs, checks their types and shapes against each other (the messages name the expected
// shapes, as autr.ops.check_inputs does) and fills the problem sizes.
OrtStatus* readInputs(Kernel const& k, OrtKernelContext* ctx, Tensor (&in)[kNumInputs], cpu::Problem* p)
{
    OrtApi const* api = k.api;
    size_t count = 0;
    AUTR_ORT_RETURN_IF_ERROR(api->KernelContext_GetInputCount(ctx, &count));
    if (count != kNumInputs)
    {
        return k.fail("expected 5 inputs (value, spatial_shapes, level_start_index, sampling_locations, "
                      "attention_weights), got "
            + std::to_string(count));
    }
    for (size_t i = 0; i < kNumInputs; ++i)
    {
        OrtValue const* value = nullptr;
        AUTR_ORT_RETURN_IF_ERROR(api->KernelContext_GetInput(ctx, i, &value));
        if (value == nullptr)
        {
            return k.fail(std::string("input ") + kInputNames[i] + " is missing");
        }
        AUTR_ORT_RETURN_IF_ERROR(describe(api, value, &in[i]));
        bool const isIndex = i == 1 || i == 2;
        ONNXTensorElementDataType const want = isIndex ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : k.type;
        if (in[i].type != want)
        {
            return k.fail(std::string("input ") + kInputNames[i] + " is " + typeName(in[i].type) + ", expected "
                + typeName(want));
        }
    }
    auto const& v = in[0].dims;
    auto const& ss = in[1].dims;
    auto const& lsi = in[2].dims;
    auto const& loc = in[3].dims;
    auto const& aw = in[4].dims;
    if (v.size() != 4)
    {
        return k.fail("value must be [N, S, M, D], got shape " + dimsText(v));
    }
    if (ss.size() != 2 || ss[1] != 2)
    {
        return k.fail("spatial_shapes must be [L, 2], got " + dimsText(ss));
    }
    int64_t const L = ss[0];
    if (lsi.size() != 1 || lsi[0] != L)
    {
        return k.fail("level_start_index must be [L=" + std::to_string(L) + "], got " + dimsText(lsi));
    }
    if (loc.size() != 6 || loc[5] != 2)
    {
        return k.fail("sampling_locations must be [N, Lq, M, L, P, 2], got " + dimsText(loc));
    }
    if (loc[0] != v[0] || loc[2] != v[2] || loc[3] != L)
    {
        return k.fail("sampling_locations " + dimsText(loc) + " does not match value [N=" + std::to_string(v[0])
            + ", S, M=" + std::to_string(v[2]) + ", D] and L=" + std::to_string(L) + " levels");
    }
    std::vector<int64_t> const wantAw = {v[0], loc[1], v[2], L, loc[4]};
    if (aw != wantAw)
    {
        return k.fail("attention_weights must be [N, Lq, M, L, P] = " + dimsText(wantAw) + ", got " + dimsText(aw));
    }
    p->N = v[0];
    p->S = v[1];
    p->M = v[2];
    p->D = v[3];
    p->L = L;
    p->P = loc[4];
    p->Lq = loc[1];
    std::string const problem = cpu::checkProblem(*p);
    if (!problem.empty())
    {
        return k.fail(problem);
    }
    return nullptr;
}

// ------------------------------------------------------------------------------------------ CPU compute

struct CpuJob
{
    cpu::Problem p;
    cpu::Isa isa;
    int64_t rows;        // N * Lq
    int64_t rowsPerTask; // rows of one ParallelFor task
    float const* value;
    int32_t const* shapes;
    int32_t const* starts;
    // float32: the tensors; float16: float32 scratch copies (value converted up front, the rest per task)
    float const* loc;
    float const* attn;
    float* out;
    // float16 only
    uint16_t const* locHalf{nullptr};
    uint16_t const* attnHalf{nullptr};
    uint16_t* outHalf{nullptr};
    uint16_t const* valueHalf{nullptr};
    float* valueScratch{nullptr};
    float* locScratch{nullptr};
    float* attnScratch{nullptr};
    int64_t valueCount{0};
};

void runRowsTask(void* data, size_t task)
{
    auto const& job = *static_cast<CpuJob const*>(data);
    int64_t const row0 = static_cast<int64_t>(task) * job.rowsPerTask;
    int64_t const rows = job.rows - row0 < job.rowsPerTask ? job.rows - row0 : job.rowsPerTask;
    int64_t const locRow = job.p.M * job.p.L * job.p.P * 2; // elements of one row
    int64_t const attnRow = job.p.M * job.p.L * job.p.P;
    int64_t const outRow = job.p.M * job.p.D;
    if (job.outHalf == nullptr)
    {
        cpu::forwardRows(job.isa, job.p, job.value, job.shapes, job.starts, job.loc + row0 * locRow,
            job.attn + row0 * attnRow, job.out + row0 * outRow, row0, rows);
        return;
    }
    // float16: convert this task's rows of locations / weights, compute in float32, convert the output.
    float* const loc = job.locScratch + row0 * locRow;
    float* const attn = job.attnScratch + row0 * attnRow;
    float* const out = job.out + row0 * outRow;
    cpu::halfToFloat(job.isa, job.locHalf + row0 * locRow, loc, rows * locRow);
    cpu::halfToFloat(job.isa, job.attnHalf + row0 * attnRow, attn, rows * attnRow);
    cpu::forwardRows(job.isa, job.p, job.value, job.shapes, job.starts, loc, attn, out, row0, rows);
    cpu::floatToHalf(job.isa, out, job.outHalf + row0 * outRow, rows * outRow);
}

void convertValueTask(void* data, size_t task)
{
    auto const& job = *static_cast<CpuJob const*>(data);
    int64_t const begin = static_cast<int64_t>(task) * kValueChunk;
    int64_t const count = job.valueCount - begin < kValueChunk ? job.valueCount - begin : kValueChunk;
    cpu::halfToFloat(job.isa, job.valueHalf + begin, job.valueScratch + begin, count);
}

// The inputs' data (checked by readInputs) and the output [N, Lq, M * D], allocated: what both providers need.
OrtStatus* bindTensors(
    Kernel const& k, OrtKernelContext* ctx, cpu::Problem* p, void const* (&data)[kNumInputs], void** outData)
{
    OrtApi const* api = k.api;
    Tensor in[kNumInputs];
    AUTR_ORT_RETURN_IF_ERROR(readInputs(k, ctx, in, p));
    OrtStatus* status = nullptr;
    for (size_t i = 0; i < kNumInputs; ++i)
    {
        data[i] = in[i].data(api, &status);
        AUTR_ORT_RETURN_IF_ERROR(status);
    }
    int64_t const outDims[3] = {p->N, p->Lq, p->M * p->D};
    OrtValue* output = nullptr;
    AUTR_ORT_RETURN_IF_ERROR(api->KernelContext_GetOutput(ctx, 0, outDims, 3, &output));
    return api->GetTensorMutableData(output, outData);
}

OrtStatus* computeCpu(Kernel const& k, OrtKernelContext* ctx)
{
    OrtApi const* api = k.api;
    cpu::Problem p;
    void const* data[kNumInputs];
    void* outData = nullptr;
    AUTR_ORT_RETURN_IF_ERROR(bindTensors(k, ctx, &p, data, &outData));
    auto const* shapes = static_cast<int32_t const*>(data[1]);
    auto const* starts = static_cast<int32_t const*>(data[2]);
    std::string const levels = cpu::checkLevels(p, shapes, starts);
    if (!levels.empty())
    {
        return k.fail(levels);
    }

    CpuJob job{};
    job.p = p;
    job.isa = k.isa;
    job.rows = p.N * p.Lq;
    job.rowsPerTask = cpu::rowsPerTask(p);
    job.shapes = shapes;
    job.starts = starts;
    if (job.rows == 0)
    {
        return nullptr;
    }
    size_t const tasks = static_cast<size_t>((job.rows + job.rowsPerTask - 1) / job.rowsPerTask);
    if (k.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    {
        job.value = static_cast<float const*>(data[0]);
        job.loc = static_cast<float const*>(data[3]);
        job.attn = static_cast<float const*>(data[4]);
        job.out = static_cast<float*>(outData);
        return api->KernelContext_ParallelFor(ctx, runRowsTask, tasks, 0, &job);
    }
    // float16: float32 scratch for value (converted first, every row reads any position of its batch item),
    // locations, weights and output (converted per task).
    std::vector<float> valueScratch, locScratch, attnScratch, outScratch;
    try
    {
        job.valueCount = p.N * p.S * p.M * p.D;
        valueScratch.resize(static_cast<size_t>(job.valueCount));
        locScratch.resize(static_cast<size_t>(job.rows * p.M * p.L * p.P * 2));
        attnScratch.resize(static_cast<size_t>(job.rows * p.M * p.L * p.P));
        outScratch.resize(static_cast<size_t>(job.rows * p.M * p.D));
    }
    catch (std::bad_alloc const&)
    {
        return k.fail("out of memory for the float16 -> float32 scratch buffers", ORT_FAIL);
    }
    job.valueHalf = static_cast<uint16_t const*>(data[0]);
    job.locHalf = static_cast<uint16_t const*>(data[3]);
    job.attnHalf = static_cast<uint16_t const*>(data[4]);
    job.outHalf = static_cast<uint16_t*>(outData);
    job.valueScratch = valueScratch.data();
    job.locScratch = locScratch.data();
    job.attnScratch = attnScratch.data();
    job.value = valueScratch.data();
    job.out = outScratch.data();
    if (job.valueCount > 0)
    {
        size_t const chunks = static_cast<size_t>((job.valueCount + kValueChunk - 1) / kValueChunk);
        AUTR_ORT_RETURN_IF_ERROR(api->KernelContext_ParallelFor(ctx, convertValueTask, chunks, 0, &job));
    }
    return api->KernelContext_ParallelFor(ctx, runRowsTask, tasks, 0, &job);
}

// ------------------------------------------------------------------------------------------ CUDA compute

#if defined(AUTR_ORT_WITH_CUDA)
OrtStatus* computeCuda(Kernel const& k, OrtKernelContext* ctx)
{
    OrtApi const* api = k.api;
    autr::msda::Problem problem;
    void const* data[kNumInputs];
    void* outData = nullptr;
    AUTR_ORT_RETURN_IF_ERROR(bindTensors(k, ctx, &problem, data, &outData));
    void* stream = nullptr;
    AUTR_ORT_RETURN_IF_ERROR(api->KernelContext_GetGPUComputeStream(ctx, &stream));
    auto const type = k.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? autr::msda::DataType::kFloat16
                                                                       : autr::msda::DataType::kFloat32;
    // spatial_shapes / level_start_index stay on the device (the kernel reads them there, as in TensorRT).
    cudaError_t const err = autr::msda::forward(type, problem, data[0], static_cast<int32_t const*>(data[1]),
        static_cast<int32_t const*>(data[2]), data[3], data[4], outData, static_cast<cudaStream_t>(stream));
    if (err != cudaSuccess)
    {
        return k.fail(std::string("CUDA kernel launch failed: ") + cudaGetErrorString(err)
                + (err == cudaErrorInvalidValue ? " (a tensor has 2^31 or more elements?)" : ""),
            ORT_RUNTIME_EXCEPTION);
    }
    return nullptr;
}
#endif

// ------------------------------------------------------------------------------------------ the op

enum class Provider
{
    kCpu,
    kCuda,
};

struct MsdaOp : OrtCustomOp
{
    ONNXTensorElementDataType tensorType;
    Provider provider;

    MsdaOp(ONNXTensorElementDataType type, Provider ep);
};

MsdaOp const& self(OrtCustomOp const* op)
{
    return *static_cast<MsdaOp const*>(op);
}

OrtStatus* ORT_API_CALL createKernel(OrtCustomOp const* op, OrtApi const* api, OrtKernelInfo const* info,
    void** kernelOut) noexcept
{
    *kernelOut = nullptr;
    try
    {
        auto kernel = new Kernel();
        kernel->api = api;
        kernel->type = self(op).tensorType;
        kernel->cuda = self(op).provider == Provider::kCuda;
        kernel->isa = cpu::selectIsa();
        std::string node; // for messages only: any failure to read it leaves it empty
        size_t size = 0;
        OrtStatus* nameStatus = api->KernelInfo_GetNodeName(info, nullptr, &size);
        if (nameStatus == nullptr && size > 1)
        {
            node.assign(size, '\0');
            nameStatus = api->KernelInfo_GetNodeName(info, &node[0], &size);
            node.resize(nameStatus == nullptr ? std::strlen(node.c_str()) : 0);
        }
        if (nameStatus != nullptr)
        {
            api->ReleaseStatus(nameStatus);
        }
        kernel->where = std::string(kOpName) + (node.empty() ? std::string(" node") : " node '" + node + "'");

        size = 0;
        OrtStatus* st = api->KernelInfoGetAttribute_string(info, kVersionAttribute, nullptr, &size);
        std::string version;
        if (st == nullptr)
        {
            version.assign(size, '\0');
            st = api->KernelInfoGetAttribute_string(info, kVersionAttribute, &version[0], &size);
            version.resize(std::strlen(version.c_str()));
        }
        if (st != nullptr)
        {
            api->ReleaseStatus(st);
            OrtStatus* err = kernel->fail(std::string("attribute ") + kVersionAttribute + " is missing; this library "
                "implements " + kVersionAttribute + "=\"" + kPluginVersion + "\" (re-export the model with autr "
                "export onnx)");
            delete kernel;
            return err;
        }
        if (version != kPluginVersion)
        {
            OrtStatus* err = kernel->fail(std::string(kVersionAttribute) + "=\"" + version + "\" is not supported: "
                "this library implements " + kVersionAttribute + "=\"" + kPluginVersion + "\" (re-export the model "
                "with this autr, or rebuild the library from the autr that exported it)");
            delete kernel;
            return err;
        }
        *kernelOut = kernel;
        return nullptr;
    }
    catch (std::exception const& e)
    {
        return api->CreateStatus(ORT_FAIL, (std::string(kOpName) + ": cannot create the kernel: " + e.what()).c_str());
    }
}

OrtStatus* ORT_API_CALL computeKernel(void* kernelPtr, OrtKernelContext* ctx) noexcept
{
    auto const& kernel = *static_cast<Kernel const*>(kernelPtr);
    try
    {
#if defined(AUTR_ORT_WITH_CUDA)
        if (kernel.cuda)
        {
            return computeCuda(kernel, ctx);
        }
#endif
        return computeCpu(kernel, ctx);
    }
    catch (std::exception const& e)
    {
        return kernel.fail(e.what(), ORT_FAIL);
    }
}

// The pre-V2 entry points; ONNX Runtime >= 1.16 calls the V2 ones above (and registration needs API 21).
void* ORT_API_CALL createKernelV1(OrtCustomOp const* op, OrtApi const* api, OrtKernelInfo const* info) noexcept
{
    void* kernel = nullptr;
    OrtStatus* st = createKernel(op, api, info, &kernel);
    if (st != nullptr)
    {
        api->ReleaseStatus(st);
    }
    return kernel;
}

void ORT_API_CALL computeKernelV1(void* kernelPtr, OrtKernelContext* ctx) noexcept
{
    if (kernelPtr == nullptr)
    {
        return;
    }
    OrtStatus* st = computeKernel(kernelPtr, ctx);
    if (st != nullptr)
    {
        static_cast<Kernel*>(kernelPtr)->api->ReleaseStatus(st);
    }
}

void ORT_API_CALL destroyKernel(void* kernelPtr) noexcept
{
    delete static_cast<Kernel*>(kernelPtr);
}

char const* ORT_API_CALL getName(OrtCustomOp const*) noexcept
{
    return kOpName;
}

char const* ORT_API_CALL getExecutionProviderType(OrtCustomOp const* op) noexcept
{
    return self(op).provider == Provider::kCuda ? "CUDAExecutionProvider" : nullptr; // nullptr: the CPU EP
}

ONNXTensorElementDataType ORT_API_CALL getInputType(OrtCustomOp const* op, size_t index) noexcept
{
    return (index == 1 || index == 2) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : self(op).tensorType;
}

size_t ORT_API_CALL getInputTypeCount(OrtCustomOp const*) noexcept
{
    return kNumInputs;
}

ONNXTensorElementDataType ORT_API_CALL getOutputType(OrtCustomOp const* op, size_t) noexcept
{
    return self(op).tensorType;
}

size_t ORT_API_CALL getOutputTypeCount(OrtCustomOp const*) noexcept
{
    return 1;
}

OrtCustomOpInputOutputCharacteristic ORT_API_CALL getCharacteristic(OrtCustomOp const*, size_t) noexcept
{
    return INPUT_OUTPUT_REQUIRED;
}

OrtMemType ORT_API_CALL getInputMemoryType(OrtCustomOp const*, size_t) noexcept
{
    return OrtMemTypeDefault;
}

int ORT_API_CALL getVariadicMinArity(OrtCustomOp const*) noexcept
{
    return 1;
}

int ORT_API_CALL getVariadicHomogeneity(OrtCustomOp const*) noexcept
{
    return 1;
}

int ORT_API_CALL getStartVersion(OrtCustomOp const*) noexcept
{
    return 1;
}

int ORT_API_CALL getEndVersion(OrtCustomOp const*) noexcept
{
    return INT_MAX;
}

MsdaOp::MsdaOp(ONNXTensorElementDataType type, Provider ep)
    : OrtCustomOp()
    , tensorType(type)
    , provider(ep)
{
    version = ORT_API_VERSION;
    CreateKernel = createKernelV1;
    GetName = getName;
    GetExecutionProviderType = getExecutionProviderType;
    GetInputType = getInputType;
    GetInputTypeCount = getInputTypeCount;
    GetOutputType = getOutputType;
    GetOutputTypeCount = getOutputTypeCount;
    KernelCompute = computeKernelV1;
    KernelDestroy = destroyKernel;
    GetInputCharacteristic = getCharacteristic;
    GetOutputCharacteristic = getCharacteristic;
    GetInputMemoryType = getInputMemoryType;
    GetVariadicInputMinArity = getVariadicMinArity;
    GetVariadicInputHomogeneity = getVariadicHomogeneity;
    GetVariadicOutputMinArity = getVariadicMinArity;
    GetVariadicOutputHomogeneity = getVariadicHomogeneity;
    CreateKernelV2 = createKernel;
    KernelComputeV2 = computeKernel;
    InferOutputShapeFn = nullptr;
    GetStartVersion = getStartVersion;
    GetEndVersion = getEndVersion;
    GetMayInplace = nullptr;
    ReleaseMayInplace = nullptr;
    GetAliasMap = nullptr;
    ReleaseAliasMap = nullptr;
}

MsdaOp const gCpuFloat(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, Provider::kCpu);
MsdaOp const gCpuHalf(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, Provider::kCpu);
#if defined(AUTR_ORT_WITH_CUDA)
MsdaOp const gCudaFloat(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, Provider::kCuda);
MsdaOp const gCudaHalf(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, Provider::kCuda);
#endif

// ONNX Runtime keeps a pointer to each domain for the lifetime of the sessions made from the options it was
// added to, so the domains live until the library is unloaded.
class DomainKeeper
{
public:
    void keep(OrtApi const* api, OrtCustomOpDomain* domain)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        mApi = api;
        mDomains.push_back(domain);
    }
    ~DomainKeeper()
    {
        for (OrtCustomOpDomain* d : mDomains)
        {
            mApi->ReleaseCustomOpDomain(d);
        }
    }

private:
    std::mutex mMutex;
    OrtApi const* mApi{nullptr};
    std::vector<OrtCustomOpDomain*> mDomains;
};

DomainKeeper gDomains;

} // namespace

// ONNX Runtime's entry point (SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary_V2).
AUTR_ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, OrtApiBase const* base)
{
    OrtApi const* api = base->GetApi(ORT_API_VERSION);
    if (api == nullptr)
    {
        // This ONNX Runtime predates the headers the library was compiled with. API version 1 is served by
        // every release and is enough to report that.
        OrtApi const* v1 = base->GetApi(1);
        std::string const msg = std::string("the AuTR custom-op library (AutrMSDeformAttn) needs ONNX Runtime C API ")
            + std::to_string(ORT_API_VERSION) + " (onnxruntime >= 1." + std::to_string(ORT_API_VERSION)
            + ") but this ONNX Runtime is " + base->GetVersionString()
            + ": upgrade onnxruntime, or rebuild the library against its headers "
              "(python -m autr.plugins build --ort --ort-include DIR)";
        return v1 != nullptr ? v1->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
    }
    OrtCustomOpDomain* domain = nullptr;
    AUTR_ORT_RETURN_IF_ERROR(api->CreateCustomOpDomain(kDomain, &domain));
    MsdaOp const* ops[] = {&gCpuFloat, &gCpuHalf,
#if defined(AUTR_ORT_WITH_CUDA)
        &gCudaFloat, &gCudaHalf,
#endif
    };
    for (MsdaOp const* op : ops)
    {
        OrtStatus* st = api->CustomOpDomain_Add(domain, op);
        if (st != nullptr)
        {
            api->ReleaseCustomOpDomain(domain);
            return st;
        }
    }
    OrtStatus* st = api->AddCustomOpDomain(options, domain);
    if (st != nullptr)
    {
        api->ReleaseCustomOpDomain(domain);
        return st;
    }
    try
    {
        gDomains.keep(api, domain);
    }
    catch (std::exception const&)
    {
        // Not remembering the domain only leaks it; the registration itself succeeded.
    }
    return nullptr;
}

// Build facts for the Python loader (read with ctypes before registering).
AUTR_ORT_EXPORT int AutrOrtOpsApiVersion()
{
    return ORT_API_VERSION;
}

AUTR_ORT_EXPORT int AutrOrtOpsHasCuda()
{
#if defined(AUTR_ORT_WITH_CUDA)
    return 1;
#else
    return 0;
#endif
}

AUTR_ORT_EXPORT char const* AutrOrtOpsCpuIsa()
{
    return cpu::isaName(cpu::selectIsa());
}
