/* STUB - being written: see sc_migrate.h */
#include "sc_migrate.h"
#include <stdio.h>
int sc_cmd_migrate(const struct sc_config *cfg) { (void)cfg; fprintf(stderr, "not yet\n"); return 1; }
