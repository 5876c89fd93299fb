#include "convert.h"
#include "lupe_test.h"
#include "procmgr.h"

static struct lupe_procmgr *new_pm(bool filter_errors)
{
	LUPE_OPTS(lupe_procmgr_opts, o, .file_ids = lupe_fileid_mapper_new_map(),
		  .filter_error_frames = filter_errors);
	return lupe_procmgr__new(&o);
}

/* Vectors computed independently of this code (FNV-1a-128 by hand in Python). */
TEST(trace_hash_matches_known_vectors)
{
	struct lupe_frame f[3] = { 0 };
	struct lupe_file_id h;
	int i;

	h = lupe_trace_hash(f, 0);
	ASSERT(h.hi == 0x6c62272e07bb0142ull && h.lo == 0x62b821756295c58dull);
	for (i = 0; i < 3; i++)
		f[i] = (struct lupe_frame){ .file_id = { (uint64_t)i, (uint64_t)i },
					    .addr_or_line = (uint64_t)i, .type = (uint8_t)i };
	h = lupe_trace_hash(f, 3);
	ASSERT(h.hi == 0x21c6fe4c62868856ull && h.lo == 0xcf510596eab68dc8ull);
	/* Types are not hashed. */
	f[1].type = LUPE_FRAME_KERNEL;
	h = lupe_trace_hash(f, 3);
	ASSERT(h.hi == 0x21c6fe4c62868856ull && h.lo == 0xcf510596eab68dc8ull);
}

TEST(convert_adjusts_return_addresses_and_maps_file_ids)
{
	struct lupe_procmgr *pm = new_pm(false);
	struct lupe_fileid_mapper *m = lupe_procmgr__file_id_mapper(pm);
	struct lupe_file_id id = { 0x1111, 0x2222 };
	struct lupe_raw_frame rf[4] = {
		{ .file = 0x1111, .addr_or_line = 0x100, .type = LUPE_FRAME_NATIVE },
		{ .file = 0x1111, .addr_or_line = 0x200, .type = LUPE_FRAME_NATIVE, .return_address = true },
		{ .file = 0x9999, .addr_or_line = 0x300, .type = LUPE_FRAME_NATIVE, .return_address = true },
		{ .addr_or_line = 4001, .type = LUPE_FRAME_NATIVE | LUPE_FRAME_ERROR },
	};
	struct lupe_raw_trace raw = { .pid = 1, .nframes = 4, .frames = rf };
	struct lupe_trace *t = NULL;

	ASSERT(pm);
	ASSERT_OK(m->ops->set(m, 0x1111, id));
	ASSERT_OK(lupe_procmgr__convert_trace(pm, &raw, &t));
	ASSERT_EQ(t->nframes, 4);
	ASSERT_EQ(t->frames[0].addr_or_line, 0x100);
	ASSERT_EQ(t->frames[1].addr_or_line, 0x1ff);
	ASSERT(t->frames[0].file_id.lo == 0x2222);
	/* Unknown host ID: unsymbolized file, address kept. */
	ASSERT(t->frames[2].file_id.hi == UINT64_MAX && t->frames[2].file_id.lo == UINT64_MAX);
	ASSERT_EQ(t->frames[2].addr_or_line, 0x2ff);
	/* Error frames carry their reason. */
	ASSERT_EQ(t->frames[3].addr_or_line, 4001);
	ASSERT(lupe_frame_is_error(t->frames[3].type));
	/* The hash is the hash of the converted frames. */
	{
		struct lupe_file_id h = lupe_trace_hash(t->frames, t->nframes);

		ASSERT(h.hi == t->hash.hi && h.lo == t->hash.lo);
	}
	free(t);
	lupe_procmgr__free(pm);
}

TEST(convert_drops_error_frames_when_filtering)
{
	struct lupe_procmgr *pm = new_pm(true);
	struct lupe_raw_frame rf[2] = {
		{ .file = 0, .addr_or_line = 0xffffffff81000000ull, .type = LUPE_FRAME_KERNEL },
		{ .addr_or_line = 4001, .type = LUPE_FRAME_ABORT },
	};
	struct lupe_raw_trace raw = { .pid = 1, .nframes = 2, .frames = rf };
	struct lupe_trace *t = NULL;

	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__convert_trace(pm, &raw, &t));
	ASSERT_EQ(t->nframes, 1);
	ASSERT(t->frames[0].addr_or_line == 0xffffffff81000000ull);
	free(t);
	lupe_procmgr__free(pm);
}
