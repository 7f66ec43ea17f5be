/* STUB - being written: see sc_pg.h */
#include "sc_pg.h"
