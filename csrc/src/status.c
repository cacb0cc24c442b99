/* status.c — status texts, version, the error-message helper. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

const char *edd_status_str(edd_status status) {
    switch (status) {
        case EDD_OK: return "success";
        case EDD_ERR_INVALID_ARGUMENT: return "invalid argument";
        case EDD_ERR_OUT_OF_MEMORY: return "out of memory";
        case EDD_ERR_UNKNOWN_SOLVER: return "unknown solver";
        case EDD_ERR_BAD_PLAN: return "invalid plan (schedule, timesteps or solver params)";
        case EDD_ERR_BACKEND: return "the backend's denoiser failed";
        case EDD_ERR_CANCELLED: return "cancelled";
        case EDD_ERR_BAD_BUNDLE: return "invalid bundle (manifest.json or scheduler.json)";
        case EDD_ERR_IO: return "a bundle file could not be read";
    }
    return "unknown status";
}

#define EDD_STR2(x) #x
#define EDD_STR(x)  EDD_STR2(x)

const char *edd_version(void) {
    return EDD_STR(EDD_VERSION_MAJOR) "." EDD_STR(EDD_VERSION_MINOR) "." EDD_STR(EDD_VERSION_PATCH);
}

edd_status edd__fail(char *err, size_t err_size, edd_status status, const char *fmt, ...) {
    if (err && err_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return status;
}
