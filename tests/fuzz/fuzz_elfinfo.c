/* libFuzzer target for the ELF parser (runtime/elfinfo.c, through libelf from memory, as
 * the vDSO is read). The input is an ELF file. A result that breaks the header's promises
 * is a bug too: on error *out is all zeros; on success at most LUPE_ELF_MAX_XSEGS segments,
 * a build ID that fits, a NUL-terminated debuglink with no '/', an offset-to-vaddr answer
 * that agrees with the segment that covers the offset. Seeds: tests/fixtures/fuzz/elfinfo/. */
#include "elfinfo.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int all_zero(const void *p, size_t n)
{
	const uint8_t *b = p;
	size_t i;

	for (i = 0; i < n; i++)
		if (b[i])
			return 0;
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lupe_elfinfo e;
	char hex[2 * LUPE_BUILD_ID_MAX + 1], small[5];
	uint64_t va;
	size_t i;

	memset(&e, 0xa5, sizeof(e));
	if (lupe_elfinfo_from_mem(data, size, &e)) {
		if (!all_zero(&e, sizeof(e)))
			abort();
		return 0;
	}
	if (e.nxsegs == 0 || e.nxsegs > LUPE_ELF_MAX_XSEGS || e.build_id_len > LUPE_BUILD_ID_MAX)
		abort();
	if (!memchr(e.debuglink, '\0', sizeof(e.debuglink)) || strchr(e.debuglink, '/'))
		abort();
	if (strlen(lupe_elfinfo_build_id_hex(&e, hex, sizeof(hex))) != 2 * e.build_id_len)
		abort();
	if (strlen(lupe_elfinfo_build_id_hex(&e, small, sizeof(small))) > 4)
		abort();
	for (i = 0; i < e.nxsegs; i++) {
		const struct lupe_elf_segment *s = &e.xsegs[i];

		/* The segment's own first byte maps somewhere (maybe through an earlier segment,
		 * which wins); past its end on every segment means -ENOENT or another segment. */
		if (s->filesz && lupe_elfinfo_offset_to_vaddr(&e, s->offset, &va))
			abort();
	}
	return 0;
}
