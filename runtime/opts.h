/* Versioned options structs (libbpf's LIBBPF_OPTS pattern): every struct lupe_X_opts starts
 * with size_t sz and ends with size_t :0, and callers declare one with
 *   LUPE_OPTS(lupe_tracer_opts, o, .frequency = 99);
 * which zero-fills it, padding included (so fields a newer header adds read as 0), sets sz,
 * then the given fields. */
#ifndef LUPE_OPTS_H
#define LUPE_OPTS_H

#include <string.h>

#define LUPE_OPTS(TYPE, NAME, ...)                                          \
	struct TYPE NAME = ({                                               \
		memset(&NAME, 0, sizeof(struct TYPE));                      \
		(struct TYPE){ .sz = sizeof(struct TYPE), __VA_ARGS__ };    \
	})

#endif
