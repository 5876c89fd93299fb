/* The one log sink. Every message lupe prints on stderr goes through lupe_log();
 * libbpf's output is routed here too (lupe_log_attach_libbpf). */
#ifndef LUPE_LOG_H
#define LUPE_LOG_H

#include <stdarg.h>

enum lupe_log_level {
	LUPE_LOG_ERROR = 0,
	LUPE_LOG_WARN,
	LUPE_LOG_INFO,
	LUPE_LOG_DEBUG,
};

typedef void (*lupe_print_fn)(enum lupe_log_level level, const char *msg, void *ctx);

/* Formats and emits one message if level <= the current level. Thread-safe. */
void lupe_log(enum lupe_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void lupe_vlog(enum lupe_log_level level, const char *fmt, va_list ap);

/* Replaces the sink (NULL restores the default, which writes "lupe: msg\n" to stderr).
 * ctx is borrowed and must outlive the sink. */
void lupe_set_print(lupe_print_fn fn, void *ctx);
void lupe_log_set_level(enum lupe_log_level level);
enum lupe_log_level lupe_log_get_level(void);
/* Routes libbpf's messages through lupe_log (warn -> WARN, info -> INFO, debug -> DEBUG). */
void lupe_log_attach_libbpf(void);

/* A module defines LUPE_LOG_PREFIX ("procmgr: ") before including this header. */
#ifndef LUPE_LOG_PREFIX
#define LUPE_LOG_PREFIX ""
#endif
#define pr_err(fmt, ...)   lupe_log(LUPE_LOG_ERROR, LUPE_LOG_PREFIX fmt, ##__VA_ARGS__)
#define pr_warn(fmt, ...)  lupe_log(LUPE_LOG_WARN, LUPE_LOG_PREFIX fmt, ##__VA_ARGS__)
#define pr_info(fmt, ...)  lupe_log(LUPE_LOG_INFO, LUPE_LOG_PREFIX fmt, ##__VA_ARGS__)
#define pr_debug(fmt, ...) lupe_log(LUPE_LOG_DEBUG, LUPE_LOG_PREFIX fmt, ##__VA_ARGS__)

/* strerror for a negative or positive errno, thread-safe (static table). */
const char *lupe_errstr(int err);

#endif
