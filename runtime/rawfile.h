/* Raw recordings ("lupe record --raw FILE"): what a session saw, written as it saw it, so
 * that the same script can run again offline on another machine with the same results.
 * The format is described field by field in docs/raw-format.md: a header (magic, version,
 * host facts), then typed, length-prefixed, little-endian records.
 *
 * The writer owns its FILE and never fails the caller's work: a failed write is counted
 * (lupe_rawfile_writer__errors) and later records are dropped. The reader treats its
 * input as hostile: a truncated or corrupt file gives a clear error naming the byte offset,
 * never an out-of-bounds read. */
#ifndef LUPE_RAWFILE_H
#define LUPE_RAWFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <linux/types.h>
#include "fileid.h"
#include "sampler.h"

#define LUPE_RAW_MAGIC "LUPE-RAW"       /* 8 bytes, no NUL */
#define LUPE_RAW_MAJOR 1                /* readers reject a newer major version */
#define LUPE_RAW_MINOR 1                /* newer minors only add record types/fields */
#define LUPE_RAW_MAX_PAYLOAD 65536      /* a longer record is corrupt */
#define LUPE_RAW_MAX_STRING 4096        /* paths and names are cut to this on writing */

/* header.flags */
#define LUPE_RAW_F_NO_KERNEL 0x1        /* kernel stacks were off */
#define LUPE_RAW_F_UNWIND    0x2        /* user stacks by the native unwinder */

struct lupe_raw_header {
	uint16_t major, minor;          /* filled by the writer; what the reader found */
	uint32_t flags;                 /* LUPE_RAW_F_* */
	uint32_t frequency;             /* Hz per CPU at the start */
	uint32_t ncpus;
	uint64_t start_ktime;           /* the session's clock when recording began */
	struct lupe_file_id kernel_id;  /* the running kernel's file ID (0: unknown) */
	char release[65];               /* uname -r */
};

enum lupe_raw_type {
	LUPE_RAW_SAMPLE = 1,    /* a drained sample */
	LUPE_RAW_EVENT = 2,     /* a drained process event */
	LUPE_RAW_MAPPING = 3,   /* a mapping a user address resolved through, first use */
	LUPE_RAW_FILE = 4,      /* a file's path as the symbolizer knows it */
	LUPE_RAW_SYMBOL = 5,    /* a native (file, ELF address) lookup and its answer */
	LUPE_RAW_KSYMBOL = 6,   /* a kernel address lookup and its answer */
	LUPE_RAW_POLL = 7,      /* the end of a drain, with the session's clock */
	LUPE_RAW_CLOCK = 8,     /* the session's clock was read outside a drain */
	LUPE_RAW_STATS = 9,     /* the tracer's counters, when the script read them */
	LUPE_RAW_STOP = 10,     /* a run loop ended */
	LUPE_RAW_KREADY = 11,   /* kernel symbols became ready (names are given from now on) */
	LUPE_RAW_NOTE = 12,     /* a fact the script recorded (key, value): its target... */
	LUPE_RAW_END = 13,      /* the last record of a complete file */
	LUPE_RAW_SERVICE = 14,  /* (1.1) a process's APM service name became known */
	LUPE_RAW_LAST = LUPE_RAW_SERVICE,
};

/* The tracer's counters in STATS, in this order (struct lupe_tracer_stats). */
enum lupe_raw_stat {
	LUPE_RAW_ST_SAMPLES_SEEN, LUPE_RAW_ST_IDLE, LUPE_RAW_ST_FILTERED, LUPE_RAW_ST_EMITTED,
	LUPE_RAW_ST_RINGBUF_FULL, LUPE_RAW_ST_KERNEL_STACK_ERR, LUPE_RAW_ST_USER_STACK_ERR,
	LUPE_RAW_ST_KERNEL_TRUNC, LUPE_RAW_ST_USER_TRUNC, LUPE_RAW_ST_EVENTS_EMITTED,
	LUPE_RAW_ST_EVENTS_LOST, LUPE_RAW_ST_EVENTS_RATELIMITED, LUPE_RAW_ST_FOLLOW_FULL,
	LUPE_RAW_ST_SAMPLES_READ, LUPE_RAW_ST_EVENTS_READ, LUPE_RAW_ST_BAD_RECORDS,
	LUPE_RAW_ST_UNWIND_SAMPLES, LUPE_RAW_ST_UNWIND_FRAMES, LUPE_RAW_ST_FALLBACK_FRAMES,
	LUPE_RAW_ST_UNKNOWN_PID, LUPE_RAW_ST_NO_TABLE_FRAMES, LUPE_RAW_ST_UNWIND_STOPS,
	LUPE_RAW_ST_SYNC_REQUESTS, LUPE_RAW_ST_UNWIND_CACHE_HITS,
	LUPE_RAW_ST_UNWIND_ERR,         /* LUPE_UNWIND_NERR counters from here */
	LUPE_RAW_ST_PROG_RUN_NS = LUPE_RAW_ST_UNWIND_ERR + LUPE_UNWIND_NERR,
	LUPE_RAW_ST_PROG_RUN_CNT,
	LUPE_RAW_NSTATS,
};

/* One record. Strings point into the reader (valid until its next call) or, for the
 * writer, are the caller's; NULL means "none" (a lookup without an answer). */
struct lupe_raw_record {
	uint32_t type;                  /* enum lupe_raw_type */
	union {
		struct lupe_sample sample;      /* frames[0 .. kernel_len + user_len) */
		struct lupe_proc_event event;
		struct {
			uint32_t pid, gen;      /* gen: the session's exec/exit count for pid */
			uint64_t vaddr, length, bias, file_offset, host;
			struct lupe_file_id file_id;
		} mapping;
		struct {
			uint64_t host;
			const char *path;
		} file;
		struct {
			uint64_t host, addr, offset;
			const char *name;
		} symbol;
		struct {
			uint64_t addr, offset;
			const char *name, *module;
		} ksymbol;
		struct {
			uint64_t ktime;
			uint32_t nrecords;      /* what the drain returned */
		} poll;
		struct {
			uint64_t ktime;
		} clock;
		struct {
			uint32_t frequency, ncpus;
			uint64_t counters[LUPE_RAW_NSTATS];
		} stats;
		struct {
			int32_t exit_status;    /* of a command target; -1: none */
		} stop;
		struct {
			const char *key, *value;
		} note;
		struct {
			uint64_t ktime;
		} end;
		struct {
			uint32_t pid, gen;
			const char *name;
		} service;
	};
};

/* ---- writing ---------------------------------------------------------------------------- */

struct lupe_rawfile_writer;

/* Writes the header to f, which the writer owns from here (also on failure). NULL + errno
 * on failure. */
struct lupe_rawfile_writer *lupe_rawfile_writer__new(FILE *f, const struct lupe_raw_header *h);
/* Appends r. Returns 0 or a negative errno; after the first failure every write fails
 * (-EIO) and is counted. */
int lupe_rawfile_writer__write(struct lupe_rawfile_writer *w, const struct lupe_raw_record *r);
/* The same for a sample (borrowed), without copying it into a record first. */
int lupe_rawfile_writer__write_sample(struct lupe_rawfile_writer *w, const struct lupe_sample *s);
/* Writes END (with ktime), flushes and closes. Returns 0 or the first error (negative
 * errno). The writer is freed either way. NULL ok (returns 0). */
int lupe_rawfile_writer__close(struct lupe_rawfile_writer *w, uint64_t end_ktime);
/* Records that could not be written. */
uint64_t lupe_rawfile_writer__errors(const struct lupe_rawfile_writer *w);
uint64_t lupe_rawfile_writer__bytes(const struct lupe_rawfile_writer *w);

/* ---- reading ---------------------------------------------------------------------------- */

struct lupe_rawfile_reader;

/* Reads and checks the header from f (owned by the reader from here, also on failure), or
 * from len bytes at buf (borrowed; must outlive the reader). NULL + errno on failure:
 * EBADMSG (not a raw file, corrupt header), EPROTONOSUPPORT (a newer major version),
 * ENODATA (truncated), ENOMEM; msgbuf (msglen bytes; NULL: none) then says why. */
struct lupe_rawfile_reader *lupe_rawfile_reader__new(FILE *f, char *msgbuf, size_t msglen);
struct lupe_rawfile_reader *lupe_rawfile_reader__new_mem(const void *buf, size_t len,
							 char *msgbuf, size_t msglen);
void lupe_rawfile_reader__free(struct lupe_rawfile_reader *r);
const struct lupe_raw_header *lupe_rawfile_reader__header(const struct lupe_rawfile_reader *r);

/* The next record into *out. Returns 1 (a record; END is the last), 0 (after END), or a
 * negative errno: -ENODATA (the file ends before END, or inside a record), -EBADMSG (a
 * malformed record), -EIO; lupe_rawfile_reader__error() then says what and at which
 * offset. Records of unknown types (a newer minor version) are skipped. After an error or
 * END, every call returns the same. */
int lupe_rawfile_reader__next(struct lupe_rawfile_reader *r, struct lupe_raw_record *out);
const char *lupe_rawfile_reader__error(const struct lupe_rawfile_reader *r);
/* Byte offset of the next record. */
uint64_t lupe_rawfile_reader__offset(const struct lupe_rawfile_reader *r);
/* Records skipped because their type was unknown. */
uint64_t lupe_rawfile_reader__skipped(const struct lupe_rawfile_reader *r);

#endif
