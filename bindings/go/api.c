#include "api.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

commvq_go_api* commvq_go_open(const char* path, char* error, size_t error_size) {
    void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        snprintf(error, error_size, "%s", dlerror());
        return NULL;
    }
    /* The version first: a library of another major may lack other symbols. */
    __typeof__(&commvq_version_number) version_number =
        (__typeof__(&commvq_version_number))dlsym(handle, "commvq_version_number");
    if (!version_number) {
        snprintf(error, error_size, "%s lacks the symbol commvq_version_number", path);
        dlclose(handle);
        return NULL;
    }
    const uint32_t found = version_number();
    if (found / 10000 != COMMVQ_VERSION_MAJOR) {
        snprintf(error, error_size, "%s has version %u; this binding needs major version %d", path,
                 (unsigned)found, COMMVQ_VERSION_MAJOR);
        dlclose(handle);
        return NULL;
    }
    commvq_go_api* api = calloc(1, sizeof *api);
    if (!api) {
        snprintf(error, error_size, "out of memory");
        dlclose(handle);
        return NULL;
    }
    api->handle = handle;
#define COMMVQ_GO_RESOLVE(name)                                                            \
    api->name = (__typeof__(api->name))dlsym(handle, "commvq_" #name);                     \
    if (!api->name) {                                                                      \
        snprintf(error, error_size, "%s lacks the symbol %s", path, "commvq_" #name);       \
        free(api);                                                                         \
        dlclose(handle);                                                                   \
        return NULL;                                                                       \
    }
    COMMVQ_GO_FUNCTIONS(COMMVQ_GO_RESOLVE)
#undef COMMVQ_GO_RESOLVE
    return api;
}
