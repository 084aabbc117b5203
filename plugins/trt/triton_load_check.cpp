// How Triton's TensorRT backend loads a plugin library, without TensorRT or a GPU (tests/test_plugins.py).
//
// Built twice from this file:
//   -DAUTR_FAKE_NVINFER -shared -Wl,-soname,libnvinfer.so.10  ->  a stand-in TensorRT runtime: getPluginRegistry()
//       returns a registry that keeps what registerCreator() is given (the rest of IPluginRegistry answers "none");
//   (no define)                                                ->  the host: triton_load_check FAKE_NVINFER PLUGIN
// The host does what the backend does: its TensorRT runtime is loaded RTLD_LOCAL (a dependency of the backend
// library), then the plugin library with dlopen(RTLD_NOW | RTLD_LOCAL) and no getCreators() call. It prints each
// registered creator as `registered NAME vVERSION namespace "NS"` and exits 0.
#include <NvInferRuntime.h>

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

#ifdef AUTR_FAKE_NVINFER

namespace
{
class FakeRegistry final : public nvinfer1::IPluginRegistry
{
public:
    std::vector<std::string> registered;

    bool registerCreator(nvinfer1::IPluginCreatorInterface& creator, nvinfer1::AsciiChar const* const ns) noexcept override
    {
        // as TensorRT does: the interface kind first, then the V3 creator's methods
        if (std::strcmp(creator.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
        {
            return false;
        }
        auto* v3 = static_cast<nvinfer1::IPluginCreatorV3One*>(&creator);
        std::string entry = std::string(v3->getPluginName()) + " v" + v3->getPluginVersion() + " namespace \""
            + (ns != nullptr ? ns : "") + "\"";
        for (auto const& seen : registered)
        {
            if (seen == entry)
            {
                return false; // TensorRT refuses a second creator of the same name, version and namespace
            }
        }
        registered.push_back(entry);
        return true;
    }
    void setErrorRecorder(nvinfer1::IErrorRecorder* const) noexcept override {}
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return true;
    }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(nvinfer1::AsciiChar const*) noexcept override
    {
        return nullptr;
    }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    nvinfer1::IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    nvinfer1::IPluginCreatorInterface* getCreator(nvinfer1::AsciiChar const* const, nvinfer1::AsciiChar const* const,
        nvinfer1::AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(nvinfer1::IPluginCreatorInterface const&) noexcept override
    {
        return false;
    }
    nvinfer1::IPluginResource* acquirePluginResource(nvinfer1::AsciiChar const*, nvinfer1::IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(nvinfer1::AsciiChar const*) noexcept override
    {
        return -1;
    }
    nvinfer1::IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override
    {
        *n = 0;
        return nullptr;
    }
};

FakeRegistry& registry()
{
    static FakeRegistry instance;
    return instance;
}
} // namespace

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

extern "C" __attribute__((visibility("default"))) int32_t fakeRegisteredCount()
{
    return static_cast<int32_t>(registry().registered.size());
}

extern "C" __attribute__((visibility("default"))) char const* fakeRegistered(int32_t i)
{
    return registry().registered.at(static_cast<size_t>(i)).c_str();
}

#else

int main(int argc, char** argv)
{
    if (argc != 3)
    {
        std::fprintf(stderr, "usage: %s FAKE_NVINFER PLUGIN_LIBRARY\n", argv[0]);
        return 2;
    }
    void* runtime = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL); // the backend's TensorRT dependency
    if (runtime == nullptr)
    {
        std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
        return 1;
    }
    void* plugin = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL); // Triton: OpenLibraryHandle, nothing else
    if (plugin == nullptr)
    {
        std::fprintf(stderr, "cannot load %s: %s\n", argv[2], dlerror());
        return 1;
    }
    auto count = reinterpret_cast<int32_t (*)()>(dlsym(runtime, "fakeRegisteredCount"));
    auto entry = reinterpret_cast<char const* (*) (int32_t)>(dlsym(runtime, "fakeRegistered"));
    if (count == nullptr || entry == nullptr)
    {
        std::fprintf(stderr, "%s is not the fake TensorRT runtime\n", argv[1]);
        return 1;
    }
    for (int32_t i = 0; i < count(); ++i)
    {
        std::printf("registered %s\n", entry(i));
    }
    std::printf("%d creator(s) registered\n", count());
    return 0;
}

#endif
