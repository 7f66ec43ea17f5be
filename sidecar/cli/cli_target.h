/*
 * cli_target - checks the --pipeline / --topic an operator named against
 * the config, with the names that do exist in the message.
 */
#ifndef CLI_TARGET_H
#define CLI_TARGET_H

#include <stddef.h>

struct sc_config;
struct sc_pipeline_conf;

/*
 * Finds pipeline in cfg and, when topic is not NULL, checks that it
 * consumes topic (by name, or a "^pattern" topic of the pipeline matching it).  Returns SC_EXIT_OK
 * with *out set, or SC_EXIT_USAGE with "no pipeline "x" in FILE (configured: a, b)" or the like in
 * err.
 */
int cli_find_target(const struct sc_config *cfg, const char *pipeline, const char *topic,
                    const struct sc_pipeline_conf **out, char *err, size_t errsize);

#endif
