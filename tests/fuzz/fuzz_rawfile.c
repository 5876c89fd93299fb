/* libFuzzer target for the raw recording reader (runtime/rawfile.c), the input of
 * `lupe run --replay`: a file from another machine, so hostile. Besides crashes, leaks and
 * undefined behaviour, a reader that breaks its header's promises is a bug: a sample never
 * holds more than LUPE_MAX_FRAMES frames, strings are NUL-terminated and within
 * LUPE_RAW_MAX_STRING, and every record it accepts is one the writer can write again and
 * the reader then reads back the same (types, counts, frames). Seeds:
 * tests/fixtures/fuzz/rawfile/. */
#include "rawfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_RECORDS 4096

static void check_str(const char *s)
{
	if (s && strnlen(s, LUPE_RAW_MAX_STRING + 1) > LUPE_RAW_MAX_STRING)
		abort();
}

static void check(const struct lupe_raw_record *r)
{
	switch (r->type) {
	case LUPE_RAW_SAMPLE:
		if ((size_t)r->sample.kernel_len + r->sample.user_len > LUPE_MAX_FRAMES)
			abort();
		break;
	case LUPE_RAW_FILE: check_str(r->file.path); break;
	case LUPE_RAW_SYMBOL: check_str(r->symbol.name); break;
	case LUPE_RAW_KSYMBOL: check_str(r->ksymbol.name); check_str(r->ksymbol.module); break;
	case LUPE_RAW_NOTE: check_str(r->note.key); check_str(r->note.value); break;
	case LUPE_RAW_SERVICE: check_str(r->service.name); break;
	default: break;
	}
}

/* What a record must keep through a write and a read: its type, and a sample's frames. */
static uint64_t digest(const struct lupe_raw_record *r)
{
	uint64_t h = r->type;
	size_t i;

	if (r->type == LUPE_RAW_SAMPLE) {
		size_t nf = (size_t)r->sample.kernel_len + r->sample.user_len;

		h = h * 31 + nf;
		for (i = 0; i < nf; i++)
			h = h * 1000003 + r->sample.frames[i];
	}
	return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct lupe_raw_record rec;   /* a sample's frames: too big for the stack */
	static uint64_t digests[MAX_RECORDS];
	struct lupe_rawfile_reader *r = lupe_rawfile_reader__new_mem(data, size, NULL, 0);
	struct lupe_rawfile_writer *w;
	char *copy = NULL;
	size_t n = 0, copy_len = 0, i;
	FILE *f;
	int rc;

	if (!r)
		return 0;
	f = open_memstream(&copy, &copy_len);
	w = f ? lupe_rawfile_writer__new(f, lupe_rawfile_reader__header(r)) : NULL;
	while (n < MAX_RECORDS && (rc = lupe_rawfile_reader__next(r, &rec)) == 1) {
		check(&rec);
		if (rec.type == LUPE_RAW_END)
			break;
		digests[n++] = digest(&rec);
		if (w && lupe_rawfile_writer__write(w, &rec))
			abort();   /* a record the reader accepted must be writable */
	}
	lupe_rawfile_reader__free(r);
	if (!w)
		goto out;
	if (lupe_rawfile_writer__close(w, 0))
		abort();
	/* Read back what was written: the same records, then END. */
	r = lupe_rawfile_reader__new_mem(copy, copy_len, NULL, 0);
	if (!r)
		abort();
	for (i = 0; i < n; i++) {
		if (lupe_rawfile_reader__next(r, &rec) != 1 || digest(&rec) != digests[i])
			abort();
	}
	if (lupe_rawfile_reader__next(r, &rec) != 1 || rec.type != LUPE_RAW_END)
		abort();
	lupe_rawfile_reader__free(r);
out:
	free(copy);
	return 0;
}
