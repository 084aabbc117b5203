// TensorRT IPluginV3 wrapper of the AuTR MSDA kernel. See ms_deform_attn_plugin.h for the contract.
#include "ms_deform_attn_plugin.h"

#include "ms_deform_attn.h" // plugins/csrc: the one kernel source

#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <exception>
#include <mutex>
#include <new>
#include <string>

using namespace nvinfer1;

namespace autr
{
namespace trt
{
namespace
{

constexpr int32_t kNB_INPUTS = 5;
constexpr int32_t kNB_OUTPUTS = 1;
constexpr int32_t kEXPECTED_RANK[kNB_INPUTS] = {4, 2, 1, 6, 5};

class LoggerFinderHolder
{
public:
    void set(ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        if (mFinder == nullptr && finder != nullptr)
        {
            mFinder = finder;
        }
    }
    ILogger* logger()
    {
        std::lock_guard<std::mutex> lock(mMutex);
        return mFinder != nullptr ? mFinder->findLogger() : nullptr;
    }

private:
    std::mutex mMutex;
    ILoggerFinder* mFinder{nullptr};
};

LoggerFinderHolder& loggerFinder()
{
    static LoggerFinderHolder holder;
    return holder;
}

void logError(std::string const& msg) noexcept
{
    try
    {
        if (ILogger* logger = loggerFinder().logger())
        {
            std::string const full = std::string(kPLUGIN_NAME) + ": " + msg;
            logger->log(ILogger::Severity::kERROR, full.c_str());
        }
    }
    catch (...)
    {
    }
}

bool ranksOk(int32_t nbInputs, int32_t const* ranks)
{
    if (nbInputs != kNB_INPUTS)
    {
        return false;
    }
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        if (ranks[i] != kEXPECTED_RANK[i])
        {
            return false;
        }
    }
    return true;
}

template <typename Desc>
bool descRanksOk(Desc const* in, int32_t nbInputs, int32_t nbOutputs, int32_t (*rank)(Desc const&))
{
    if (in == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        return false;
    }
    int32_t ranks[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        ranks[i] = rank(in[i]);
    }
    return ranksOk(nbInputs, ranks);
}

int32_t dynRank(DynamicPluginTensorDesc const& d)
{
    return d.desc.dims.nbDims;
}
int32_t staticRank(PluginTensorDesc const& d)
{
    return d.dims.nbDims;
}

// The dims that must agree between the inputs (and the output), given as
// (input a, dim i, input b, dim j); input 5 is the output [N, Lq, M*D] (only its first two dims here).
//   value [N,S,M,D]  spatial_shapes [L,2]  level_start_index [L]  locations [N,Lq,M,L,P,2]  weights [N,Lq,M,L,P]
constexpr int32_t kSAME_DIMS[][4] = {
    {1, 1, -1, 2},           // spatial_shapes [L, 2]: second dim is 2 (b = -1: the constant j)
    {3, 5, -1, 2},           // locations' last dim is 2
    {2, 0, 1, 0},            // level_start_index [L] == spatial_shapes' L
    {3, 3, 1, 0},            // locations' L
    {3, 0, 0, 0},            // locations' N == value's N
    {3, 2, 0, 2},            // locations' M == value's M
    {4, 0, 3, 0},            // weights' N, Lq, M, L, P == locations'
    {4, 1, 3, 1},
    {4, 2, 3, 2},
    {4, 3, 3, 3},
    {4, 4, 3, 4},
    {5, 0, 3, 0},            // output's N, Lq
    {5, 1, 3, 1},
};

// Names the first pair of known (static) dims that disagree; "" when all agree. `dims(k)` is input k's Dims
// (k = 5: the output); -1 (dynamic) agrees with everything.
template <typename DimsOf>
std::string dimsMismatch(DimsOf dims)
{
    static char const* const kNames[] = {"value", "spatial_shapes", "level_start_index", "sampling_locations",
        "attention_weights", "output"};
    for (auto const& c : kSAME_DIMS)
    {
        Dims const& a = dims(c[0]);
        int64_t const x = a.d[c[1]];
        int64_t const y = c[2] < 0 ? c[3] : dims(c[2]).d[c[3]];
        if (x >= 0 && y >= 0 && x != y)
        {
            std::string const rhs = c[2] < 0 ? std::string("") : std::string(kNames[c[2]]) + " dim " + std::to_string(c[3]) + " = ";
            return std::string(kNames[c[0]]) + " dim " + std::to_string(c[1]) + " is " + std::to_string(x)
                + ", expected " + rhs + std::to_string(y)
                + " (value [N,S,M,D], spatial_shapes [L,2], level_start_index [L], sampling_locations "
                  "[N,Lq,M,L,P,2], attention_weights [N,Lq,M,L,P], output [N,Lq,M*D])";
        }
    }
    return "";
}

} // namespace

// ------------------------------------------------------------------------------------------------ plugin

IPluginCapability* MSDeformAttnPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* MSDeformAttnPlugin::clone() noexcept
{
    try
    {
        return new MSDeformAttnPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* MSDeformAttnPlugin::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* MSDeformAttnPlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* MSDeformAttnPlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t MSDeformAttnPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (!descRanksOk(in, nbInputs, nbOutputs, &dynRank) || out == nullptr || out[0].desc.dims.nbDims != 3)
    {
        logError("configurePlugin: expected inputs of rank 4, 2, 1, 6, 5 and one output of rank 3");
        return 1;
    }
    // spatial_shapes / level_start_index are constants of the graph, but TensorRT does not hand their values to
    // configurePlugin: their shapes are checked here, their values by the kernel on the device (a level whose
    // H, W, start do not fit S is skipped, never read out of bounds).
    std::string const bad = dimsMismatch([&](int32_t k) -> Dims const& { return k < 5 ? in[k].desc.dims : out[0].desc.dims; });
    if (!bad.empty())
    {
        logError("configurePlugin: " + bad);
        return 1;
    }
    return 0;
}

int32_t MSDeformAttnPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != kNB_OUTPUTS || nbInputs != kNB_INPUTS)
    {
        return 1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t MSDeformAttnPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        return 1;
    }
    int32_t ranks[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        ranks[i] = inputs[i].nbDims;
    }
    if (!ranksOk(nbInputs, ranks))
    {
        logError("getOutputShapes: expected value [N,S,M,D], spatial_shapes [L,2], level_start_index [L], "
                 "sampling_locations [N,Lq,M,L,P,2], attention_weights [N,Lq,M,L,P]");
        return 1;
    }
    // Static dims that disagree are refused here (the build fails with the reason) instead of in enqueue.
    for (auto const& c : kSAME_DIMS)
    {
        if (c[0] == 5)
        {
            continue;
        }
        IDimensionExpr const* a = inputs[c[0]].d[c[1]];
        IDimensionExpr const* b = c[2] < 0 ? nullptr : inputs[c[2]].d[c[3]];
        bool const known = a != nullptr && a->isConstant() && (b == nullptr ? c[2] < 0 : b->isConstant());
        int64_t const want = b == nullptr ? c[3] : (known ? b->getConstantValue() : -1);
        if (known && a->getConstantValue() != want)
        {
            logError("getOutputShapes: input " + std::to_string(c[0]) + " dim " + std::to_string(c[1]) + " is "
                + std::to_string(a->getConstantValue()) + ", expected " + std::to_string(want)
                + " (value [N,S,M,D], spatial_shapes [L,2], level_start_index [L], sampling_locations [N,Lq,M,L,P,2], "
                  "attention_weights [N,Lq,M,L,P])");
            return 1;
        }
    }
    // output [N, Lq, M * D]: N and Lq from sampling_locations, M * D from value.
    IDimensionExpr const* md = exprBuilder.operation(DimensionOperation::kPROD, *inputs[0].d[2], *inputs[0].d[3]);
    if (md == nullptr)
    {
        return 1;
    }
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[3].d[0];
    outputs[0].d[1] = inputs[3].d[1];
    outputs[0].d[2] = md;
    return 0;
}

bool MSDeformAttnPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0
        || pos >= kNB_INPUTS + kNB_OUTPUTS)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF || desc.type == DataType::kBF16;
    case 1:
    case 2: return desc.type == DataType::kINT32;
    default: return desc.type == inOut[0].desc.type; // locations, weights, output follow value
    }
}

int32_t MSDeformAttnPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

size_t MSDeformAttnPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

int32_t MSDeformAttnPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (!descRanksOk(in, nbInputs, nbOutputs, &staticRank) || out == nullptr || out[0].dims.nbDims != 3)
    {
        logError("onShapeChange: unexpected input/output ranks");
        return 1;
    }
    return 0;
}

int32_t MSDeformAttnPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        return 1;
    }
    Dims const& v = inputDesc[0].dims;   // [N, S, M, D]
    Dims const& loc = inputDesc[3].dims; // [N, Lq, M, L, P, 2]
    autr::msda::Problem problem;
    problem.N = v.d[0];
    problem.S = v.d[1];
    problem.M = v.d[2];
    problem.D = v.d[3];
    problem.L = inputDesc[1].dims.d[0];
    problem.Lq = loc.d[1];
    problem.P = loc.d[4];
    std::string const bad
        = dimsMismatch([&](int32_t k) -> Dims const& { return k < 5 ? inputDesc[k].dims : outputDesc[0].dims; });
    if (!bad.empty() || outputDesc[0].dims.d[2] != problem.M * problem.D)
    {
        logError("enqueue: " + (bad.empty() ? std::string("output dim 2 is not M*D") : bad));
        return 1;
    }
    autr::msda::DataType const type = inputDesc[0].type == DataType::kHALF ? autr::msda::DataType::kFloat16
        : inputDesc[0].type == DataType::kBF16                            ? autr::msda::DataType::kBFloat16
                                                                          : autr::msda::DataType::kFloat32;
    cudaError_t const err = autr::msda::forward(type, problem, inputs[0], inputs[1], inputs[2], inputs[3], inputs[4],
        outputs[0], stream, autr::msda::IndexType::kInt32);
    if (err != cudaSuccess)
    {
        logError(std::string("enqueue: kernel launch failed: ") + cudaGetErrorString(err));
        return 1;
    }
    return 0;
}

IPluginV3* MSDeformAttnPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* MSDeformAttnPlugin::getFieldsToSerialize() noexcept
{
    return &mSerialized;
}

// ------------------------------------------------------------------------------------------------ creator

char const* MSDeformAttnPluginCreator::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* MSDeformAttnPluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* MSDeformAttnPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* MSDeformAttnPluginCreator::getFieldNames() noexcept
{
    return &mFieldNames;
}

IPluginV3* MSDeformAttnPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* /*fc*/, TensorRTPhase /*phase*/) noexcept
{
    // The op has no attributes. Fields the ONNX parser may forward from node attributes are ignored.
    try
    {
        return new MSDeformAttnPlugin();
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin failed: ") + e.what());
    }
    return nullptr;
}

} // namespace trt
} // namespace autr

// ------------------------------------------------------------------------------------------------ library entry points

void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    autr::trt::loggerFinder().set(finder);
}

nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static autr::trt::MSDeformAttnPluginCreator sCreator;
    static nvinfer1::IPluginCreatorInterface* const kCreators[] = {&sCreator};
    nbCreators = 1;
    return kCreators;
}

// ------------------------------------------------------------------------------------------------ load-time registrar
// Triton's TensorRT backend loads `--backend-config=tensorrt,plugins=LIB` with a bare dlopen(RTLD_NOW | RTLD_LOCAL)
// and never calls getCreators(), so a plugin library must register its creators itself while it loads. With
// AUTR_TRT_REGISTER=1 in the environment this one does: it finds the TensorRT runtime the host already loaded
// (dlopen RTLD_NOLOAD of libnvinfer's sonames: it never loads a TensorRT of its own, and finds one that was loaded
// RTLD_LOCAL as the backend's dependency) and hands getCreators()' creators to its getPluginRegistry(). Off by
// default: IPluginRegistry::loadLibrary (trtexec, the toolkit's own loader) registers getCreators() itself and
// refuses a library whose plugins are already registered.
namespace
{

using GetPluginRegistry = IPluginRegistry* (*) ();

GetPluginRegistry findLoadedRegistry()
{
    // TensorRT 11 and 10 (the sonames the vendor ships), then an unversioned development link
    static char const* const kSONAMES[] = {"libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so"};
    for (char const* soname : kSONAMES)
    {
        if (void* handle = dlopen(soname, RTLD_NOW | RTLD_NOLOAD))
        {
            auto fn = reinterpret_cast<GetPluginRegistry>(dlsym(handle, "getPluginRegistry"));
            dlclose(handle); // drops the reference RTLD_NOLOAD took; the host's own stays
            if (fn != nullptr)
            {
                return fn;
            }
        }
    }
    return reinterpret_cast<GetPluginRegistry>(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
}

struct LoadTimeRegistrar
{
    LoadTimeRegistrar()
    {
        char const* flag = std::getenv("AUTR_TRT_REGISTER");
        if (flag == nullptr || std::strcmp(flag, "1") != 0)
        {
            return;
        }
        GetPluginRegistry getRegistry = findLoadedRegistry();
        IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
        if (registry == nullptr)
        {
            std::fprintf(stderr,
                "autr: AUTR_TRT_REGISTER=1 but no TensorRT runtime (libnvinfer) is loaded in this process: load "
                "this library after TensorRT (Triton: --backend-config=tensorrt,plugins=...), or leave the "
                "variable unset and use IPluginRegistry::loadLibrary\n");
            return;
        }
        int32_t count = 0;
        IPluginCreatorInterface* const* creators = getCreators(count);
        for (int32_t i = 0; i < count; ++i)
        {
            auto* creator = static_cast<autr::trt::MSDeformAttnPluginCreator*>(creators[i]);
            if (!registry->registerCreator(*creators[i], creator->getPluginNamespace()))
            {
                std::fprintf(stderr, "autr: TensorRT refused to register %s v%s (already registered?)\n",
                    creator->getPluginName(), creator->getPluginVersion());
            }
        }
    }
};

LoadTimeRegistrar const kREGISTRAR;

} // namespace
