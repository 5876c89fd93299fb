/* libFuzzer target for the /proc/PID/maps parser. The input is maps text. Besides crashes,
 * leaks and undefined behaviour, a result that breaks the header's promises is a bug:
 * every kept mapping is executable with start < end and a NUL-free path that lies in the
 * arena, and a struct refilled after a release or a second parse gives the same answer
 * (the buffers are reused, so stale state would show). Seeds: tests/fixtures/fuzz/procmaps/
 * (and tests/fixtures/maps/, tests/fixtures/procmgr/). */
#include "procmaps.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const struct lupe_procmaps *pm, const uint8_t *data, size_t size)
{
	size_t i;

	if (pm->truncated > 1 || pm->count + pm->malformed > size)
		abort();
	for (i = 0; i < pm->count; i++) {
		const struct lupe_procmap *m = &pm->maps[i];

		if (!(m->prot & LUPE_MAP_X) || m->start >= m->end || !m->path)
			abort();
		if (m->path < pm->strings || m->path >= pm->strings + pm->strings_len)
			abort();
		/* The path is a copy of bytes of the input (minus " (deleted)"). */
		if (m->path[0] && !memmem(data, size, m->path, strlen(m->path)))
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lupe_procmaps a = { 0 }, b = { 0 };
	size_t i;

	if (lupe_procmaps_parse((const char *)data, size, &a))
		goto out;
	check(&a, data, size);
	/* Refill b twice, once with junk first: buffers reused must not leak state. */
	if (lupe_procmaps_parse("1-2 r-xp 0 0:0 0 /x\n", 20, &b) ||
	    lupe_procmaps_parse((const char *)data, size, &b))
		abort();
	if (a.count != b.count || a.malformed != b.malformed || a.truncated != b.truncated)
		abort();
	for (i = 0; i < a.count; i++) {
		if (a.maps[i].start != b.maps[i].start || a.maps[i].end != b.maps[i].end ||
		    a.maps[i].file_offset != b.maps[i].file_offset ||
		    a.maps[i].inode != b.maps[i].inode || a.maps[i].kind != b.maps[i].kind ||
		    a.maps[i].deleted != b.maps[i].deleted || strcmp(a.maps[i].path, b.maps[i].path))
			abort();
	}
out:
	lupe_procmaps_release(&a);
	lupe_procmaps_release(&b);
	return 0;
}
