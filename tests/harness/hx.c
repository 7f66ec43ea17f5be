/* STUB - being written: see hx.h */
#include "hx.h"
