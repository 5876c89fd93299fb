/* Symbol tables per executable, shared by every process that maps it, kept exactly as
 * long as the process manager keeps the executable (so traces of exited processes still
 * symbolize). It listens to the manager as its symbol reporter and loads a table on the
 * first lookup into that file. Not thread-safe: the session's thread owns it. */
#ifndef LUPE_SYMCACHE_H
#define LUPE_SYMCACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "procmgr.h"

struct lupe_symcache;

struct lupe_symcache_stats {
	uint64_t files;          /* executables known */
	uint64_t tables_loaded;  /* symbol tables loaded so far */
	uint64_t load_errors;    /* files whose symbols could not be read */
	uint64_t lookups, misses;
	uint64_t kernel_lookups, kernel_misses;
};

/* kallsyms: NULL for /proc/kallsyms. NULL + errno on failure. */
struct lupe_symcache *lupe_symcache__new(const char *kallsyms);
void lupe_symcache__free(struct lupe_symcache *sc);

/* The reporter to give the process manager. It is part of sc: its free does nothing, so
 * free sc after the manager. */
struct lupe_symbol_reporter *lupe_symcache__reporter(struct lupe_symcache *sc);

/* The function containing ELF address addr of file host: name (owned by sc, valid until
 * the file is unloaded or sc freed) and *offset, or NULL. */
const char *lupe_symcache__native(struct lupe_symcache *sc, uint64_t host, uint64_t addr,
				  uint64_t *offset);
/* The file's path as first mapped ("[vdso]" for the vDSO), or NULL if unknown. */
const char *lupe_symcache__path(struct lupe_symcache *sc, uint64_t host);
/* Kernel symbols load in the background from __new on: true once they are there (or
 * failed to load), without waiting. */
bool lupe_symcache__kernel_ready(struct lupe_symcache *sc);
/* Kernel symbol: name, *offset, *module (NULL: the kernel image), or NULL. Waits for the
 * background load if needed. */
const char *lupe_symcache__kernel(struct lupe_symcache *sc, uint64_t addr, uint64_t *offset,
				  const char **module);

void lupe_symcache__stats(struct lupe_symcache *sc, struct lupe_symcache_stats *out);

#endif
