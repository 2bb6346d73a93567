/* PLACEHOLDER: being written. */
#include "natpunch.h"
