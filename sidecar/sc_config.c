/* STUB - being written: see sc_config.h */
#include "sc_config.h"
#include <stdio.h>
#include <stdlib.h>
int sc_config_load(const char *path, struct sc_config **out, char *errbuf, size_t errsize)
{
    (void)out;
    snprintf(errbuf, errsize, "%s: config loader not written yet", path);
    return -1;
}
int sc_config_load_string(const char *name, const char *text, struct sc_config **out, char *errbuf, size_t errsize)
{
    (void)text, (void)out;
    snprintf(errbuf, errsize, "%s: config loader not written yet", name);
    return -1;
}
void sc_config_free(struct sc_config *cfg) { (void)cfg; }
json_t *sc_config_to_json(const struct sc_config *cfg) { (void)cfg; return json_object(); }
char *sc_config_reference_markdown(void) { return calloc(1, 1); }
const char *sc_kvlist_get(const struct sc_kvlist *kv, const char *key) { (void)kv, (void)key; return NULL; }
bool sc_config_key_is_secret(const char *name) { (void)name; return false; }
