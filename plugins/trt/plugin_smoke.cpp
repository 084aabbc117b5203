// CPU-only smoke test of libautr_trt_plugin.so (no GPU, no TensorRT libraries needed).
//
// Loads the library the way IPluginRegistry::loadLibrary does (dlopen + getCreators), checks the
// creator's identity, creates a plugin and drives its build-phase interface: capability lookup,
// output count/type, format support, output shape expressions (through a stand-in IExprBuilder that
// evaluates constants), serialisable fields, clone and attachToContext. Built and run by
// tests/test_plugins.py:
//   g++ -std=c++17 -isystem <TensorRT/include> -isystem <cuda/include> plugin_smoke.cpp -ldl -o smoke
//   ./smoke path/to/libautr_trt_plugin.so
#include <NvInferRuntime.h>

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <memory>
#include <vector>

using namespace nvinfer1;

namespace
{
int gFailures = 0;

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            std::fprintf(stderr, "FAILED line %d: %s\n", __LINE__, #cond);                                            \
            ++gFailures;                                                                                               \
        }                                                                                                              \
    } while (0)

// Constant-only dimension expressions, enough for getOutputShapes().
class ConstImpl : public apiv::VDimensionExpr
{
public:
    explicit ConstImpl(int64_t v)
        : mValue(v)
    {
    }
    bool isConstant() const override
    {
        return true;
    }
    int64_t getConstantValue() const override
    {
        return mValue;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    int64_t mValue;
};

class ConstExpr : public IDimensionExpr
{
public:
    explicit ConstExpr(int64_t v)
        : mOwned(v)
    {
        mImpl = &mOwned;
    }
    ~ConstExpr() noexcept override = default;

private:
    ConstImpl mOwned;
};

class BuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        mPool.emplace_back(new ConstExpr(value));
        return mPool.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        int64_t const x = a.getConstantValue();
        int64_t const y = b.getConstantValue();
        switch (op)
        {
        case DimensionOperation::kSUM: return constant(x + y);
        case DimensionOperation::kPROD: return constant(x * y);
        case DimensionOperation::kMAX: return constant(x > y ? x : y);
        case DimensionOperation::kMIN: return constant(x < y ? x : y);
        default: return nullptr;
        }
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }

private:
    std::vector<std::unique_ptr<ConstExpr>> mPool;
};

class Builder : public IExprBuilder
{
public:
    Builder()
    {
        mImpl = &mOwned;
    }
    ~Builder() noexcept override = default;
    BuilderImpl mOwned;
};

DimsExprs dimsOf(Builder& b, std::vector<int64_t> const& v)
{
    DimsExprs d{};
    d.nbDims = static_cast<int32_t>(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        d.d[i] = b.mOwned.constant(v[i]);
    }
    return d;
}

DynamicPluginTensorDesc descOf(DataType t, int32_t rank)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = rank;
    for (int32_t i = 0; i < rank; ++i)
    {
        d.desc.dims.d[i] = -1; // dynamic, as TensorRT describes them at build time
    }
    return d;
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s libautr_trt_plugin.so\n", argv[0]);
        return 2;
    }
    void* handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr)
    {
        std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(handle, "setLoggerFinder"));
    CHECK(getCreators != nullptr);
    CHECK(setLoggerFinder != nullptr);
    if (getCreators == nullptr)
    {
        return 1;
    }
    setLoggerFinder(nullptr); // tolerated

    int32_t nb = -1;
    IPluginCreatorInterface* const* creators = getCreators(nb);
    CHECK(nb == 1 && creators != nullptr && creators[0] != nullptr);
    InterfaceInfo const info = creators[0]->getInterfaceInfo();
    CHECK(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1);
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    CHECK(std::strcmp(creator->getPluginName(), "AutrMSDeformAttn") == 0);
    CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(creator->getPluginNamespace(), "") == 0);
    CHECK(creator->getFieldNames() != nullptr && creator->getFieldNames()->nbFields == 0);

    // Fields the ONNX parser might forward are ignored.
    int32_t const version = 1;
    PluginField field("plugin_version", &version, PluginFieldType::kINT32, 1);
    PluginFieldCollection fc{1, &field};
    IPluginV3* plugin = creator->createPlugin("msda", &fc, TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    if (plugin == nullptr)
    {
        return 1;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(core != nullptr && build != nullptr && runtime != nullptr);
    CHECK(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0);
    CHECK(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
    CHECK(std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
    CHECK(std::strcmp(core->getPluginName(), "AutrMSDeformAttn") == 0);
    CHECK(std::strcmp(core->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(core->getPluginNamespace(), "") == 0);
    CHECK(build->getNbOutputs() == 1);

    // Output type follows value.
    DataType in[5] = {DataType::kHALF, DataType::kINT32, DataType::kINT32, DataType::kHALF, DataType::kHALF};
    DataType out[1] = {DataType::kFLOAT};
    CHECK(build->getOutputDataTypes(out, 1, in, 5) == 0 && out[0] == DataType::kHALF);

    // Formats: value fp32/fp16, int32 indices, the rest follow value, linear only.
    for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        DynamicPluginTensorDesc io[6] = {descOf(t, 4), descOf(DataType::kINT32, 2), descOf(DataType::kINT32, 1),
            descOf(t, 6), descOf(t, 5), descOf(t, 3)};
        for (int32_t pos = 0; pos < 6; ++pos)
        {
            CHECK(build->supportsFormatCombination(pos, io, 5, 1));
        }
        DynamicPluginTensorDesc bad[6] = {descOf(t, 4), descOf(DataType::kINT64, 2), descOf(DataType::kINT32, 1),
            descOf(t == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT, 6), descOf(t, 5), descOf(t, 3)};
        CHECK(!build->supportsFormatCombination(1, bad, 5, 1));
        CHECK(!build->supportsFormatCombination(3, bad, 5, 1));
        CHECK(build->configurePlugin(io, 5, io + 5, 1) == 0);
        io[1].desc.dims.d[1] = 2; // spatial_shapes [L, 2]
        io[4].desc.dims.d[4] = 4; // weights' P ...
        io[3].desc.dims.d[4] = 4; // ... == locations' P
        CHECK(build->configurePlugin(io, 5, io + 5, 1) == 0);
        io[3].desc.dims.d[4] = 3; // P differs: refused at configure time
        CHECK(build->configurePlugin(io, 5, io + 5, 1) != 0);
        io[3].desc.dims.d[4] = 4;
        io[2].desc.dims.d[0] = 3; // level_start_index [3] with spatial_shapes [4, 2]
        io[1].desc.dims.d[0] = 4;
        CHECK(build->configurePlugin(io, 5, io + 5, 1) != 0);
    }
    {
        DynamicPluginTensorDesc io[6] = {descOf(DataType::kINT8, 4), descOf(DataType::kINT32, 2),
            descOf(DataType::kINT32, 1), descOf(DataType::kINT8, 6), descOf(DataType::kINT8, 5),
            descOf(DataType::kINT8, 3)};
        CHECK(!build->supportsFormatCombination(0, io, 5, 1));
        io[0] = descOf(DataType::kFLOAT, 4);
        io[0].desc.format = TensorFormat::kHWC;
        CHECK(!build->supportsFormatCombination(0, io, 5, 1));
    }

    // Shapes: value [2, 30+12+2, 8, 32], locations [2, 100, 8, 3, 4, 2] -> output [2, 100, 256].
    Builder builder;
    DimsExprs inputs[5] = {dimsOf(builder, {2, 44, 8, 32}), dimsOf(builder, {3, 2}), dimsOf(builder, {3}),
        dimsOf(builder, {2, 100, 8, 3, 4, 2}), dimsOf(builder, {2, 100, 8, 3, 4})};
    DimsExprs outputs[1]{};
    CHECK(build->getOutputShapes(inputs, 5, nullptr, 0, outputs, 1, builder) == 0);
    CHECK(outputs[0].nbDims == 3);
    if (outputs[0].nbDims == 3)
    {
        CHECK(outputs[0].d[0]->getConstantValue() == 2);
        CHECK(outputs[0].d[1]->getConstantValue() == 100);
        CHECK(outputs[0].d[2]->getConstantValue() == 256);
    }
    DimsExprs wrong[5] = {dimsOf(builder, {2, 44, 8}), inputs[1], inputs[2], inputs[3], inputs[4]};
    CHECK(build->getOutputShapes(wrong, 5, nullptr, 0, outputs, 1, builder) != 0);
    DimsExprs badWeights[5] = {inputs[0], inputs[1], inputs[2], inputs[3], dimsOf(builder, {2, 100, 8, 3, 2})};
    CHECK(build->getOutputShapes(badWeights, 5, nullptr, 0, outputs, 1, builder) != 0); // P 2 != 4
    DimsExprs badStarts[5] = {inputs[0], inputs[1], dimsOf(builder, {2}), inputs[3], inputs[4]};
    CHECK(build->getOutputShapes(badStarts, 5, nullptr, 0, outputs, 1, builder) != 0); // L 2 != 3
    CHECK(build->getWorkspaceSize(nullptr, 5, nullptr, 1) == 0);

    // Serialisation: an empty field collection; runtime-phase creation from it.
    PluginFieldCollection const* ser = runtime->getFieldsToSerialize();
    CHECK(ser != nullptr && ser->nbFields == 0);
    IPluginV3* restored = creator->createPlugin("msda", ser, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    IPluginV3* cloned = plugin->clone();
    CHECK(cloned != nullptr && cloned != plugin);
    IPluginV3* attached = runtime->attachToContext(nullptr);
    CHECK(attached != nullptr);
    delete attached;
    delete cloned;
    delete restored;
    delete plugin;

    if (gFailures == 0)
    {
        std::printf("plugin smoke test OK: %s v%s namespace \"%s\"\n", creator->getPluginName(),
            creator->getPluginVersion(), creator->getPluginNamespace());
    }
    return gFailures == 0 ? 0 : 1;
}
