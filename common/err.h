/* err.h - crier's one error enum, returned by every fallible function.
 *
 * Codes are only ever appended, never renumbered; a retired code stays as a
 * placeholder. Results travel through out-parameters. */
#ifndef CRIER_ERR_H
#define CRIER_ERR_H

#define CR_MUST_CHECK __attribute__((warn_unused_result))

enum cr_err {
    CR_OK = 0,
    CR_ENOMEM,    /* allocation failed */
    CR_EINVAL,    /* invalid argument or input */
    CR_ETOOBIG,   /* input exceeds a configured limit */
    CR_ENOTFOUND, /* no such object */
    CR_ECONFLICT, /* state does not allow the operation */
    CR_EREDIS,    /* Redis error or connection failure */
    CR_EPG,       /* PostgreSQL error or connection failure */
    CR_ETIMEOUT,  /* an operation timed out */
    CR_EIO,       /* file or socket I/O failed */
    CR_ECRYPTO,   /* a cryptographic operation or check failed */
    CR_EPROVIDER, /* a provider answered with an error */
    CR_EUNAVAIL,  /* a dependency is unavailable */
};

/* Returns a static, human-readable name for the code. */
const char *cr_strerror(enum cr_err err);

#endif
