/* err.c - names of the error codes. */
#include "err.h"

const char *cr_strerror(enum cr_err err)
{
    switch (err) {
    case CR_OK:
        return "ok";
    case CR_ENOMEM:
        return "out of memory";
    case CR_EINVAL:
        return "invalid input";
    case CR_ETOOBIG:
        return "too large";
    case CR_ENOTFOUND:
        return "not found";
    case CR_ECONFLICT:
        return "conflict";
    case CR_EREDIS:
        return "redis error";
    case CR_EPG:
        return "postgresql error";
    case CR_ETIMEOUT:
        return "timed out";
    case CR_EIO:
        return "i/o error";
    case CR_ECRYPTO:
        return "cryptographic failure";
    case CR_EPROVIDER:
        return "provider error";
    case CR_EUNAVAIL:
        return "dependency unavailable";
    }
    return "unknown error";
}
