/* apikey.h - API key format, generation and parsing.
 *
 * A key reads "crier_<key_id: 16 hex>_<secret: 40 hex>". key_id is public
 * and finds the row; only SHA-256(whole key) is stored, and it is compared
 * in constant time. */
#ifndef CRIER_APIKEY_H
#define CRIER_APIKEY_H

#include <stdint.h>

#include "err.h"

#define APIKEY_ID_LEN 16
#define APIKEY_LEN (6 + APIKEY_ID_LEN + 1 + 40)

/* Generates a new key (NUL-terminated, APIKEY_LEN chars), its id and hash. */
enum cr_err apikey_generate(char key[APIKEY_LEN + 1], char key_id[APIKEY_ID_LEN + 1],
                            uint8_t hash[32]) CR_MUST_CHECK;
/* Checks the format and extracts the id and the hash of the key. */
enum cr_err apikey_parse(const char *key, char key_id[APIKEY_ID_LEN + 1],
                         uint8_t hash[32]) CR_MUST_CHECK;

#endif
