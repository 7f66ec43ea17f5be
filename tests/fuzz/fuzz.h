/*
 * fuzz.h - the libFuzzer entry points every target in tests/fuzz/ defines.
 *
 * A target is built two ways (tests/fuzz/CMakeLists.txt): with clang and
 * -DSIDECAR_FUZZ=ON as a libFuzzer binary (.ci/fuzz), and otherwise linked
 * with standalone.c as a CTest test that runs it once over every file of its
 * seed corpus and regression directories.
 */
#ifndef SC_FUZZ_H
#define SC_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Runs one input; returns 0 (-1 asks libFuzzer not to keep it in the corpus). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Optional one-time setup before the first input (libFuzzer calls it if defined). */
int LLVMFuzzerInitialize(int *argc, char ***argv);

/*
 * A broken invariant: print why and abort, so libFuzzer saves the input and
 * the standalone driver fails.  Unlike assert(), never compiled out.
 */
#define FUZZ_CHECK(cond, ...)                                                        \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fputc('\n', stderr);                                                     \
            abort();                                                                 \
        }                                                                            \
    } while (0)

#endif
