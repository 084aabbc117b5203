// TensorRT plugin "AutrMSDeformAttn", version "1", namespace "" (IPluginV3, TensorRT >= 10.0).
//
// Matches the ONNX node that `autr export onnx` writes for the plugin graph:
//   op_type "AutrMSDeformAttn", domain "autr", attribute plugin_version="1" (no plugin_namespace).
// The ONNX parser looks an unknown op up in the plugin registry by (op_type, plugin_version,
// plugin_namespace=""), so the namespace here is the empty string.
//
// Inputs (linear layout):
//   0 value               [N, S, M, D]        float32 | float16 | bfloat16
//   1 spatial_shapes      [L, 2]              int32
//   2 level_start_index   [L]                 int32
//   3 sampling_locations  [N, Lq, M, L, P, 2] same type as value
//   4 attention_weights   [N, Lq, M, L, P]    same type as value
// Output:
//   0 output              [N, Lq, M * D]      same type as value
// No plugin fields (attributes); no workspace. All dimensions may be dynamic. Dims that must agree (L, N, Lq, M, P
// between the inputs) are checked in getOutputShapes (constants), configurePlugin and enqueue; the values of
// spatial_shapes / level_start_index are checked by the kernel against S (a level that does not fit is skipped).
//
// The library exports the TensorRT plugin-library entry points getCreators() and setLoggerFinder()
// (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins=libautr_trt_plugin.so, Python
// trt.get_plugin_registry().load_library(path)). It does not link against libnvinfer.
#pragma once

#include <NvInferRuntime.h>

#include <string>

namespace autr
{
namespace trt
{

constexpr char const* kPLUGIN_NAME = "AutrMSDeformAttn";
constexpr char const* kPLUGIN_VERSION = "1";
constexpr char const* kPLUGIN_NAMESPACE = "";

class MSDeformAttnPlugin : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime
{
public:
    MSDeformAttnPlugin() = default;
    ~MSDeformAttnPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    nvinfer1::PluginFieldCollection mSerialized{0, nullptr}; // nothing to serialise
};

class MSDeformAttnPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    MSDeformAttnPluginCreator() = default;
    ~MSDeformAttnPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    nvinfer1::PluginFieldCollection mFieldNames{0, nullptr};
};

} // namespace trt
} // namespace autr

// Plugin-library entry points (see TensorRT's trtexec README, "Using your own Plugin").
#define AUTR_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
AUTR_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
AUTR_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
