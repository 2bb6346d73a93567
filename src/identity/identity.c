/* PLACEHOLDER: being written (identity). */
#include "natpunch.h"
