#include "log.h"

#include <bpf/libbpf.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static enum lupe_log_level log_level = LUPE_LOG_WARN;
static lupe_print_fn log_fn;
static void *log_ctx;

static void default_print(enum lupe_log_level level, const char *msg, void *ctx)
{
	fprintf(stderr, "lupe: %s\n", msg);
}

void lupe_set_print(lupe_print_fn fn, void *ctx)
{
	pthread_mutex_lock(&log_lock);
	log_fn = fn;
	log_ctx = ctx;
	pthread_mutex_unlock(&log_lock);
}

void lupe_log_set_level(enum lupe_log_level level)
{
	log_level = level;
}

enum lupe_log_level lupe_log_get_level(void)
{
	return log_level;
}

void lupe_vlog(enum lupe_log_level level, const char *fmt, va_list ap)
{
	char buf[4096];
	size_t n;

	if (level > log_level)
		return;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	/* Callers (libbpf above all) often end with a newline; the sink adds its own. */
	n = strlen(buf);
	while (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	pthread_mutex_lock(&log_lock);
	(log_fn ? log_fn : default_print)(level, buf, log_ctx);
	pthread_mutex_unlock(&log_lock);
}

void lupe_log(enum lupe_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	lupe_vlog(level, fmt, ap);
	va_end(ap);
}

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	enum lupe_log_level l = level == LIBBPF_WARN ? LUPE_LOG_WARN
			      : level == LIBBPF_INFO ? LUPE_LOG_INFO : LUPE_LOG_DEBUG;

	/* libbpf prefixes its own messages with "libbpf: ". */
	lupe_vlog(l, fmt, ap);
	return 0;
}

void lupe_log_attach_libbpf(void)
{
	libbpf_set_print(libbpf_print);
}

const char *lupe_errstr(int err)
{
	if (err < 0)
		err = -err;
	return strerrordesc_np(err) ? strerrordesc_np(err) : "unknown error";
}
