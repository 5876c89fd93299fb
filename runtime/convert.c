#include "convert.h"

#include "procmgr.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

typedef unsigned __int128 u128;

#define FNV128_PRIME (((u128)0x0000000001000000ull << 64) | 0x000000000000013Bull)
#define FNV128_BASIS (((u128)0x6c62272e07bb0142ull << 64) | 0x62b821756295c58dull)

static u128 fnv_bytes(u128 h, const unsigned char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= p[i];
		h *= FNV128_PRIME;
	}
	return h;
}

struct lupe_file_id lupe_trace_hash(const struct lupe_frame *frames, size_t n)
{
	u128 h = FNV128_BASIS;
	unsigned char id[16], dec[24];
	size_t i;
	int j, len;

	for (i = 0; i < n; i++) {
		for (j = 0; j < 8; j++) {
			id[j] = (unsigned char)(frames[i].file_id.hi >> (56 - 8 * j));
			id[8 + j] = (unsigned char)(frames[i].file_id.lo >> (56 - 8 * j));
		}
		h = fnv_bytes(h, id, sizeof(id));
		len = snprintf((char *)dec, sizeof(dec), "%llu",
			       (unsigned long long)frames[i].addr_or_line);
		h = fnv_bytes(h, dec, (size_t)len);
	}
	return (struct lupe_file_id){ (uint64_t)(h >> 64), (uint64_t)h };
}

int lupe_procmgr__convert_trace(struct lupe_procmgr *pm, const struct lupe_raw_trace *raw,
				struct lupe_trace **out)
{
	bool filter_errors = lupe_procmgr__filter_error_frames(pm);
	struct lupe_trace *t;
	uint32_t i, n = 0;

	t = malloc(sizeof(*t) + raw->nframes * sizeof(t->frames[0]));
	if (!t)
		return -ENOMEM;
	for (i = 0; i < raw->nframes; i++) {
		const struct lupe_raw_frame *rf = &raw->frames[i];
		struct lupe_frame *f = &t->frames[n];
		uint8_t kind = rf->type & ~LUPE_FRAME_ERROR;
		struct lupe_file_id id;
		struct lupe_mapping m;

		*f = (struct lupe_frame){ .type = rf->type, .addr_or_line = rf->addr_or_line,
					  .file_id = LUPE_FILE_ID_UNSYMBOLIZED };
		if (lupe_frame_is_error(rf->type)) {
			if (filter_errors)
				continue;
			n++;
			continue;
		}
		if (kind == LUPE_FRAME_NATIVE || kind == LUPE_FRAME_KERNEL) {
			if (rf->return_address && f->addr_or_line > 0)
				f->addr_or_line--;
			if (rf->file && lupe_procmgr__file_id(pm, rf->file, &id))
				f->file_id = id;
		}
		if (kind == LUPE_FRAME_NATIVE && rf->file &&
		    lupe_procmgr__find_mapping_by_file(pm, raw->pid, rf->file, f->addr_or_line,
						       raw->ktime, &m) == 0) {
			f->mapping_start = m.vaddr;
			f->mapping_end = m.vaddr + m.length;
			f->mapping_file_offset = m.file_offset;
		}
		n++;
	}
	t->nframes = n;
	t->hash = lupe_trace_hash(t->frames, n);
	*out = t;
	return 0;
}
