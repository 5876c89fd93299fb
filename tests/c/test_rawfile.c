#include "rawfile.h"
#include "lupe_test.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* One record of every type, in a file made in memory. Returns the bytes (free()). */
static uint8_t *write_all(size_t *len, uint32_t minor_hack)
{
	struct lupe_raw_header h = { .flags = LUPE_RAW_F_UNWIND, .frequency = 99, .ncpus = 2,
				     .start_ktime = 1000, .kernel_id = { 0x1122334455667788ull, 42 } };
	struct lupe_raw_record r;
	struct lupe_rawfile_writer *w;
	char *buf = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&buf, &n);
	int i;

	strcpy(h.release, "6.18.0-test");
	w = lupe_rawfile_writer__new(f, &h);
	if (!w)
		return NULL;
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_NOTE;
	r.note.key = "target";
	r.note.value = "command=sleep 1";
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_EVENT;
	r.event = (struct lupe_proc_event){ .type = LUPE_EV_EXIT, .pid = 7, .ppid = 1,
					    .exit_code = -3, .ktime = 1500 };
	strcpy(r.event.comm, "sleep");
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_MAPPING;
	r.mapping.pid = 7;
	r.mapping.gen = 2;
	r.mapping.vaddr = 0x400000;
	r.mapping.length = 0x1000;
	r.mapping.bias = 0x3ff000;
	r.mapping.file_offset = 0x2000;
	r.mapping.host = 0xabcdef;
	r.mapping.file_id = (struct lupe_file_id){ 0xabcdef, 0x123 };
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_FILE;
	r.file.host = 0xabcdef;
	r.file.path = "/usr/bin/sleep";
	lupe_rawfile_writer__write(w, &r);
	r.file.host = 5;
	r.file.path = NULL;
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_SYMBOL;
	r.symbol.host = 0xabcdef;
	r.symbol.addr = 0x1139;
	r.symbol.offset = 9;
	r.symbol.name = "main";
	lupe_rawfile_writer__write(w, &r);
	r.symbol.name = NULL;
	r.symbol.addr = 0x2000;
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_KSYMBOL;
	r.ksymbol.addr = 0xffffffff81000010ull;
	r.ksymbol.offset = 0x10;
	r.ksymbol.name = "do_syscall_64";
	r.ksymbol.module = NULL;
	lupe_rawfile_writer__write(w, &r);
	r.ksymbol.name = "ext4_read";
	r.ksymbol.module = "ext4";
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_KREADY;
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_SAMPLE;
	r.sample.pid = 7;
	r.sample.tid = 8;
	r.sample.cpu = 1;
	r.sample.flags = LUPE_SAMPLE_UNWOUND;
	r.sample.ktime = 1600;
	strcpy(r.sample.comm, "sleep");
	r.sample.kernel_len = 1;
	r.sample.user_len = 2;
	r.sample.user_err = 0;
	r.sample.frames[0] = 0xffffffff81000010ull;
	r.sample.frames[1] = 0x401139;
	r.sample.frames[2] = 0x401200;
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_POLL;
	r.poll.ktime = 2000;
	r.poll.nrecords = 3;
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_CLOCK;
	r.clock.ktime = 2100;
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_STATS;
	r.stats.frequency = 199;
	r.stats.ncpus = 2;
	for (i = 0; i < LUPE_RAW_NSTATS; i++)
		r.stats.counters[i] = 1000 + (uint64_t)i;
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_STOP;
	r.stop.exit_status = 3;
	lupe_rawfile_writer__write(w, &r);
	memset(&r, 0, sizeof(r));
	r.type = LUPE_RAW_SERVICE;
	r.service.pid = 7;
	r.service.gen = 2;
	r.service.name = "checkout-svc";
	lupe_rawfile_writer__write(w, &r);
	if (lupe_rawfile_writer__close(w, 3000))
		return NULL;
	if (minor_hack)
		buf[10] = (char)minor_hack;
	*len = n;
	return (uint8_t *)buf;
}

static uint64_t le64_at(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for (i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

TEST(rawfile_header_bytes_follow_the_documented_layout)
{
	size_t n;
	uint8_t *b = write_all(&n, 0);

	ASSERT(b != NULL);
	ASSERT(memcmp(b, "LUPE-RAW", 8) == 0);
	ASSERT_EQ(b[8] | b[9] << 8, LUPE_RAW_MAJOR);
	ASSERT_EQ(b[12] | b[13] << 8, 120);              /* header length */
	ASSERT_EQ(b[20], 99);                             /* frequency */
	ASSERT_EQ(le64_at(b + 32), 1000);                 /* start ktime */
	ASSERT_EQ(le64_at(b + 40), 0x1122334455667788ull);
	ASSERT_STREQ((const char *)b + 56, "6.18.0-test");
	/* The first record: NOTE (type 12), 4 + 6 + 15 bytes of payload, right after it. */
	ASSERT_EQ(b[120], LUPE_RAW_NOTE);
	ASSERT_EQ(b[124], 4 + 6 + 15);
	ASSERT(memcmp(b + 132, "target", 6) == 0);
	free(b);
}

static void check_all(struct lupe_rawfile_reader *rd)
{
	struct lupe_raw_record *r = malloc(sizeof(*r));
	const struct lupe_raw_header *h = lupe_rawfile_reader__header(rd);
	int i;

	ASSERT(r != NULL);
	ASSERT_EQ(h->major, LUPE_RAW_MAJOR);
	ASSERT_EQ(h->frequency, 99);
	ASSERT_EQ(h->ncpus, 2);
	ASSERT_EQ(h->flags, LUPE_RAW_F_UNWIND);
	ASSERT_EQ(h->start_ktime, 1000);
	ASSERT_EQ(h->kernel_id.lo, 42);
	ASSERT_STREQ(h->release, "6.18.0-test");

	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_NOTE);
	ASSERT_STREQ(r->note.key, "target");
	ASSERT_STREQ(r->note.value, "command=sleep 1");
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_EVENT);
	ASSERT_EQ(r->event.type, LUPE_EV_EXIT);
	ASSERT_EQ(r->event.pid, 7);
	ASSERT_EQ(r->event.exit_code, -3);
	ASSERT_EQ(r->event.ktime, 1500);
	ASSERT_STREQ(r->event.comm, "sleep");
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_MAPPING);
	ASSERT_EQ(r->mapping.pid, 7);
	ASSERT_EQ(r->mapping.gen, 2);
	ASSERT_EQ(r->mapping.vaddr, 0x400000);
	ASSERT_EQ(r->mapping.length, 0x1000);
	ASSERT_EQ(r->mapping.bias, 0x3ff000);
	ASSERT_EQ(r->mapping.file_offset, 0x2000);
	ASSERT_EQ(r->mapping.host, 0xabcdef);
	ASSERT_EQ(r->mapping.file_id.lo, 0x123);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_FILE);
	ASSERT_STREQ(r->file.path, "/usr/bin/sleep");
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->file.host, 5);
	ASSERT(r->file.path == NULL);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_SYMBOL);
	ASSERT_EQ(r->symbol.addr, 0x1139);
	ASSERT_EQ(r->symbol.offset, 9);
	ASSERT_STREQ(r->symbol.name, "main");
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT(r->symbol.name == NULL);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_KSYMBOL);
	ASSERT_EQ(r->ksymbol.addr, 0xffffffff81000010ull);
	ASSERT_STREQ(r->ksymbol.name, "do_syscall_64");
	ASSERT(r->ksymbol.module == NULL);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_STREQ(r->ksymbol.name, "ext4_read");
	ASSERT_STREQ(r->ksymbol.module, "ext4");
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_KREADY);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_SAMPLE);
	ASSERT_EQ(r->sample.pid, 7);
	ASSERT_EQ(r->sample.tid, 8);
	ASSERT_EQ(r->sample.cpu, 1);
	ASSERT_EQ(r->sample.flags, LUPE_SAMPLE_UNWOUND);
	ASSERT_EQ(r->sample.ktime, 1600);
	ASSERT_STREQ(r->sample.comm, "sleep");
	ASSERT_EQ(r->sample.kernel_len, 1);
	ASSERT_EQ(r->sample.user_len, 2);
	ASSERT_EQ(r->sample.frames[0], 0xffffffff81000010ull);
	ASSERT_EQ(r->sample.frames[2], 0x401200);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_POLL);
	ASSERT_EQ(r->poll.ktime, 2000);
	ASSERT_EQ(r->poll.nrecords, 3);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_CLOCK);
	ASSERT_EQ(r->clock.ktime, 2100);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_STATS);
	ASSERT_EQ(r->stats.frequency, 199);
	for (i = 0; i < LUPE_RAW_NSTATS; i++)
		ASSERT_EQ(r->stats.counters[i], 1000 + (uint64_t)i);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_STOP);
	ASSERT_EQ(r->stop.exit_status, 3);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_SERVICE);
	ASSERT_EQ(r->service.pid, 7);
	ASSERT_EQ(r->service.gen, 2);
	ASSERT_STREQ(r->service.name, "checkout-svc");
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_END);
	ASSERT_EQ(r->end.ktime, 3000);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 0);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 0);
	ASSERT(lupe_rawfile_reader__error(rd) == NULL);
	free(r);
}

TEST(rawfile_round_trip_of_every_record_type)
{
	char msg[200];
	size_t n;
	uint8_t *b = write_all(&n, 0);
	struct lupe_rawfile_reader *rd;

	ASSERT(b != NULL);
	rd = lupe_rawfile_reader__new_mem(b, n, msg, sizeof(msg));
	ASSERT(rd != NULL);
	check_all(rd);
	ASSERT_EQ(lupe_rawfile_reader__offset(rd), n);
	lupe_rawfile_reader__free(rd);
	/* The same through a FILE. */
	rd = lupe_rawfile_reader__new(fmemopen(b, n, "r"), msg, sizeof(msg));
	ASSERT(rd != NULL);
	check_all(rd);
	lupe_rawfile_reader__free(rd);
	free(b);
}

/* Every prefix of a valid file is an error with an offset, never a crash, an
 * out-of-bounds read (the copy is exactly as long as the prefix: ASan sees any) or END. */
TEST(rawfile_truncation_at_every_offset_is_a_clear_error)
{
	struct lupe_raw_record *r = malloc(sizeof(*r));
	char msg[200];
	size_t n, cut;
	uint8_t *b = write_all(&n, 0);

	ASSERT(b != NULL && r != NULL);
	for (cut = 0; cut < n; cut++) {
		uint8_t *p = malloc(cut ? cut : 1);
		struct lupe_rawfile_reader *rd;
		int ret;

		ASSERT(p != NULL);
		memcpy(p, b, cut);
		msg[0] = '\0';
		rd = lupe_rawfile_reader__new_mem(p, cut, msg, sizeof(msg));
		if (!rd) {
			ASSERT(cut < 120);
			ASSERT_EQ(errno, ENODATA);
			ASSERT(strstr(msg, "truncated") != NULL);
			free(p);
			continue;
		}
		ASSERT(cut >= 120);
		while ((ret = lupe_rawfile_reader__next(rd, r)) == 1)
			ASSERT(r->type != LUPE_RAW_END);
		ASSERT_EQ(ret, -ENODATA);
		ASSERT(strstr(lupe_rawfile_reader__error(rd), "offset") != NULL);
		lupe_rawfile_reader__free(rd);
		free(p);
	}
	free(r);
	free(b);
}

TEST(rawfile_rejects_a_newer_major_version_and_other_files)
{
	char msg[200], want[32];
	size_t n;
	uint8_t *b = write_all(&n, 0);

	ASSERT(b != NULL);
	b[8] = LUPE_RAW_MAJOR + 1;
	ASSERT(lupe_rawfile_reader__new_mem(b, n, msg, sizeof(msg)) == NULL);
	ASSERT_EQ(errno, EPROTONOSUPPORT);
	snprintf(want, sizeof(want), "version %d.%d", LUPE_RAW_MAJOR + 1, LUPE_RAW_MINOR);
	ASSERT(strstr(msg, want) != NULL);
	b[8] = LUPE_RAW_MAJOR;
	b[0] = 'X';
	ASSERT(lupe_rawfile_reader__new_mem(b, n, msg, sizeof(msg)) == NULL);
	ASSERT_EQ(errno, EBADMSG);
	ASSERT(strstr(msg, "magic") != NULL);
	ASSERT(lupe_rawfile_reader__new_mem("#!/bin/sh\n", 10, msg, sizeof(msg)) == NULL);
	ASSERT_EQ(errno, EBADMSG);
	free(b);
}

/* Patches the type of the record at off (found by walking from the header). */
static size_t record_offset(const uint8_t *b, int index)
{
	size_t off = 120;

	while (index-- > 0)
		off += 8 + (b[off + 4] | b[off + 5] << 8 | b[off + 6] << 16);
	return off;
}

TEST(rawfile_unknown_types_skip_in_newer_minors_and_fail_otherwise)
{
	struct lupe_raw_record *r = malloc(sizeof(*r));
	struct lupe_rawfile_reader *rd;
	char msg[200];
	size_t n, off;
	uint8_t *b = write_all(&n, LUPE_RAW_MINOR + 1);

	ASSERT(b != NULL && r != NULL);
	off = record_offset(b, 1);      /* the EVENT */
	b[off] = 200;
	rd = lupe_rawfile_reader__new_mem(b, n, msg, sizeof(msg));
	ASSERT(rd != NULL);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_NOTE);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(r->type, LUPE_RAW_MAPPING);
	ASSERT_EQ(lupe_rawfile_reader__skipped(rd), 1);
	lupe_rawfile_reader__free(rd);
	/* The same version as ours: an unknown type is corruption. */
	b[10] = LUPE_RAW_MINOR;
	rd = lupe_rawfile_reader__new_mem(b, n, msg, sizeof(msg));
	ASSERT(rd != NULL);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), 1);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), -EBADMSG);
	ASSERT(strstr(lupe_rawfile_reader__error(rd), "unknown record type 200") != NULL);
	ASSERT_EQ(lupe_rawfile_reader__next(rd, r), -EBADMSG);
	lupe_rawfile_reader__free(rd);
	free(r);
	free(b);
}

TEST(rawfile_corrupt_lengths_are_rejected_with_their_offset)
{
	struct lupe_raw_record *r = malloc(sizeof(*r));
	struct lupe_rawfile_reader *rd;
	char msg[200], want[64];
	size_t n, off;
	uint8_t *b = write_all(&n, 0);

	ASSERT(b != NULL && r != NULL);
	/* A sample claiming more frames than its payload holds. */
	off = record_offset(b, 10);
	ASSERT_EQ(b[off], LUPE_RAW_SAMPLE);
	b[off + 8 + 40] = 200;          /* kernel_len */
	rd = lupe_rawfile_reader__new_mem(b, n, msg, sizeof(msg));
	ASSERT(rd != NULL);
	while (lupe_rawfile_reader__next(rd, r) == 1)
		;
	snprintf(want, sizeof(want), "corrupt SAMPLE record at offset %zu", off);
	ASSERT(strstr(lupe_rawfile_reader__error(rd), want) != NULL);
	lupe_rawfile_reader__free(rd);
	/* A record longer than any record may be. */
	b[off + 8 + 40] = 1;
	b[off + 7] = 0x7f;
	rd = lupe_rawfile_reader__new_mem(b, n, msg, sizeof(msg));
	ASSERT(rd != NULL);
	while (lupe_rawfile_reader__next(rd, r) == 1)
		;
	ASSERT(strstr(lupe_rawfile_reader__error(rd), "length") != NULL);
	lupe_rawfile_reader__free(rd);
	free(r);
	free(b);
}

TEST(rawfile_write_errors_are_counted_not_fatal)
{
	struct lupe_raw_header h = { .frequency = 1 };
	struct lupe_raw_record r = { .type = LUPE_RAW_CLOCK };
	struct lupe_rawfile_writer *w;
	FILE *f = fopen("/dev/full", "w");
	int i;

	if (!f)
		SKIP("no /dev/full");
	setvbuf(f, NULL, _IONBF, 0);
	w = lupe_rawfile_writer__new(f, &h);
	/* The header write fails already: the writer is not made. */
	ASSERT(w == NULL);
	ASSERT_EQ(errno, ENOSPC);
	f = fopen("/dev/full", "w");
	ASSERT(f != NULL);
	w = lupe_rawfile_writer__new(f, &h);    /* buffered: fails on flush */
	ASSERT(w != NULL);
	for (i = 0; i < 100000; i++)
		lupe_rawfile_writer__write(w, &r);
	ASSERT(lupe_rawfile_writer__errors(w) > 0);
	ASSERT_EQ(lupe_rawfile_writer__close(w, 0), -ENOSPC);
}

/* Random damage (a byte changed at random places, many times over) never crashes nor
 * reads out of bounds (ASan checks the exact-size copies); each run ends in END or an
 * error with a message. */
TEST(rawfile_random_damage_is_an_error_or_records)
{
	struct lupe_raw_record *r = malloc(sizeof(*r));
	uint32_t seed = 12345;
	char msg[200];
	size_t n, i;
	uint8_t *b = write_all(&n, 0);
	int round;

	ASSERT(b != NULL && r != NULL);
	for (round = 0; round < 3000; round++) {
		uint8_t *p = malloc(n);
		struct lupe_rawfile_reader *rd;
		int ret, k;

		ASSERT(p != NULL);
		memcpy(p, b, n);
		for (k = 0; k < 1 + round % 4; k++) {
			seed = seed * 1103515245u + 12345u;
			i = (seed >> 8) % n;
			seed = seed * 1103515245u + 12345u;
			p[i] ^= (uint8_t)(1 + (seed >> 16) % 255);
		}
		rd = lupe_rawfile_reader__new_mem(p, n, msg, sizeof(msg));
		if (rd) {
			while ((ret = lupe_rawfile_reader__next(rd, r)) == 1)
				if (r->type == LUPE_RAW_END)
					break;
			ASSERT(ret == 1 || (ret < 0 && lupe_rawfile_reader__error(rd)[0]));
			lupe_rawfile_reader__free(rd);
		} else {
			ASSERT(msg[0] != '\0');
		}
		free(p);
	}
	free(r);
	free(b);
}
