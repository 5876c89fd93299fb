/* libFuzzer target for the CFI parser. The first input byte picks what the rest is:
 *   0  the bytes of an .eh_frame section (loaded at 0x1000)
 *   1  the bytes of a .debug_frame section
 *   2  a whole ELF file, read from memory (section headers, .eh_frame_hdr, PT_GNU_EH_FRAME)
 *   3  the same, walking .eh_frame linearly
 * Any crash, leak, over-read or undefined behaviour is a bug; so is a successful result
 * that is not sorted, unmerged, or does not end on an INVALID delta. Seeds:
 * tests/fixtures/ehframe/seeds/. */
#include "ehframe.h"
#include "unwind.h"

#include <stdint.h>
#include <stdlib.h>

static void check(const struct lupe_interval_data *d)
{
	size_t i;

	if (!d->count)
		abort();
	for (i = 1; i < d->count; i++) {
		const struct lupe_stack_delta *a = &d->deltas[i - 1], *b = &d->deltas[i];

		if (b->address <= a->address)
			abort();
		if (a->cfa_opcode == b->cfa_opcode && a->cfa_param == b->cfa_param &&
		    a->fp_opcode == b->fp_opcode && a->fp_param == b->fp_param)
			abort();
	}
	if (d->deltas[d->count - 1].cfa_opcode != LUPE_CFA_CMD ||
	    d->deltas[d->count - 1].cfa_param != LUPE_CMD_INVALID)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	LUPE_OPTS(lupe_ehframe_opts, linear, .no_eh_frame_hdr = true);
	struct lupe_interval_data d;
	int rc;

	if (size < 1)
		return 0;
	switch (data[0] % 4) {
	case 0:
		rc = lupe_ehframe_extract_section(data + 1, size - 1, 0x1000, false, &d, NULL);
		break;
	case 1:
		rc = lupe_ehframe_extract_section(data + 1, size - 1, 0, true, &d, NULL);
		break;
	case 2:
		rc = lupe_ehframe_extract_mem(data + 1, size - 1, NULL, &d, NULL);
		break;
	default:
		rc = lupe_ehframe_extract_mem(data + 1, size - 1, &linear, &d, NULL);
		break;
	}
	if (rc == 0)
		check(&d);
	else if (d.deltas || d.count)
		abort();
	free(d.deltas);
	return 0;
}
