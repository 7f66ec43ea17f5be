/*
 * standalone.c - a main() for the fuzz targets when they are not built with
 * libFuzzer: runs LLVMFuzzerTestOneInput() once on every regular file in the
 * directories (or files) named on the command line, in name order.
 *
 *   fuzz_token tests/fuzz/corpus/fuzz_token tests/fuzz/regressions/fuzz_token
 *
 * This is how CTest keeps every seed and every input that once crashed
 * passing in the normal gcc and ASan builds.  A directory that does not exist
 * counts as empty (regressions/<target>/ appears with the first crash found);
 * no input at all is an error, so a mistyped path cannot pass silently.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

/* Weak: a target without setup need not define it. */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Runs the target on the file at path; 0, or -1 if it cannot be read. */
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "could not open file \"%s\": %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *data = malloc(cap);
    size_t n;
    while (data && (n = fread(data + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *bigger = realloc(data, cap *= 2);
            if (!bigger)
                free(data);
            data = bigger;
        }
    }
    int failed = ferror(f) || !data;
    fclose(f);
    if (failed) {
        fprintf(stderr, "could not read file \"%s\"\n", path);
        free(data);
        return -1;
    }
    /* An exact-size copy, as libFuzzer passes it: ASan then sees every overread. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) {
        free(data);
        return -1;
    }
    memcpy(exact, data, len);
    free(data);
    fprintf(stderr, "running %s (%zu bytes)\n", path, len);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int skip_dotfiles(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

/* Runs every regular file in dir; adds how many to *count.  0, or -1 on an error. */
static int run_dir(const char *dir, size_t *count)
{
    struct dirent **names;
    int n = scandir(dir, &names, skip_dotfiles, by_name);
    if (n < 0) {
        fprintf(stderr, "could not read directory \"%s\": %s\n", dir, strerror(errno));
        return -1;
    }
    int result = 0;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(dir) + strlen(names[i]->d_name) + 2;
        char *path = malloc(len);
        struct stat st;
        if (path) {
            snprintf(path, len, "%s/%s", dir, names[i]->d_name);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                if (run_file(path) != 0)
                    result = -1;
                else
                    (*count)++;
            }
        } else {
            result = -1;
        }
        free(path);
        free(names[i]);
    }
    free(names);
    return result;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]);
        return 2;
    }
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    size_t count = 0;
    int result = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            if (errno == ENOENT) {
                fprintf(stderr, "%s: no such directory, nothing to run\n", argv[i]);
                continue;
            }
            fprintf(stderr, "could not stat \"%s\": %s\n", argv[i], strerror(errno));
            result = 1;
        } else if (S_ISDIR(st.st_mode)) {
            if (run_dir(argv[i], &count) != 0)
                result = 1;
        } else if (run_file(argv[i]) != 0) {
            result = 1;
        } else {
            count++;
        }
    }
    if (count == 0) {
        fprintf(stderr, "no input files found\n");
        return 1;
    }
    fprintf(stderr, "%zu inputs ran without a failure\n", count);
    return result;
}
