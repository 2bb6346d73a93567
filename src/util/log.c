#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>

void np__log(const np_logger *lg, enum np_log_level level, const char *fmt, ...) {
  if (!np_log_enabled(lg, level))
    return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  lg->fn(lg->user, level, msg);
}
