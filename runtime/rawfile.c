#define LUPE_LOG_PREFIX "rawfile: "
#include "rawfile.h"

#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define HEADER_LEN 120          /* the header as this version writes it */
#define HEADER_MAX 4096         /* a longer header is corrupt */
#define RELEASE_LEN 64
#define SAMPLE_HDR 48
#define EVENT_LEN 40
#define MAPPING_LEN 64

/* ---- little-endian encoding ------------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)v);
	put16(p + 2, (uint16_t)(v >> 16));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
	return get16(p) | (uint32_t)get16(p + 2) << 16;
}

static uint64_t get64(const uint8_t *p)
{
	return get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ---- the writer ------------------------------------------------------------------------- */

struct lupe_rawfile_writer {
	FILE *f;
	int err;                /* first error, sticky */
	uint64_t errors, bytes;
	uint8_t buf[8 + SAMPLE_HDR + 8 * LUPE_MAX_FRAMES + 2 * LUPE_RAW_MAX_STRING + 64];
};

static int emit(struct lupe_rawfile_writer *w, const void *p, size_t n)
{
	if (w->err) {
		w->errors++;
		return -EIO;
	}
	if (fwrite(p, 1, n, w->f) != n) {
		w->err = errno ? -errno : -EIO;
		w->errors++;
		pr_warn("cannot write the raw recording: %s (later records are dropped, counted)",
			lupe_errstr(w->err));
		return w->err;
	}
	w->bytes += n;
	return 0;
}

struct lupe_rawfile_writer *lupe_rawfile_writer__new(FILE *f, const struct lupe_raw_header *h)
{
	struct lupe_rawfile_writer *w = calloc(1, sizeof(*w));
	uint8_t hdr[HEADER_LEN] = { 0 };
	size_t rl;

	if (!w) {
		if (f)
			fclose(f);
		errno = ENOMEM;
		return NULL;
	}
	w->f = f;
	if (!f) {
		free(w);
		errno = EINVAL;
		return NULL;
	}
	memcpy(hdr, LUPE_RAW_MAGIC, 8);
	put16(hdr + 8, LUPE_RAW_MAJOR);
	put16(hdr + 10, LUPE_RAW_MINOR);
	put32(hdr + 12, HEADER_LEN);
	put32(hdr + 16, h->flags);
	put32(hdr + 20, h->frequency);
	put32(hdr + 24, h->ncpus);
	put64(hdr + 32, h->start_ktime);
	put64(hdr + 40, h->kernel_id.hi);
	put64(hdr + 48, h->kernel_id.lo);
	rl = strnlen(h->release, RELEASE_LEN);
	memcpy(hdr + 56, h->release, rl);
	if (emit(w, hdr, sizeof(hdr))) {
		int err = w->err;

		fclose(f);
		free(w);
		errno = -err;
		return NULL;
	}
	return w;
}

/* Appends a string of at most LUPE_RAW_MAX_STRING bytes at p; returns its length. */
static size_t put_str(uint8_t *p, const char *s)
{
	size_t n = s ? strnlen(s, LUPE_RAW_MAX_STRING) : 0;

	memcpy(p, s ? s : "", n);
	return n;
}

int lupe_rawfile_writer__write_sample(struct lupe_rawfile_writer *w, const struct lupe_sample *s)
{
	uint8_t *b = w->buf, *p = b + 8;
	size_t i, nf = (size_t)s->kernel_len + s->user_len;

	if (nf > LUPE_MAX_FRAMES)
		return -EINVAL;
	put32(p, s->pid);
	put32(p + 4, s->tid);
	put32(p + 8, s->cpu);
	put32(p + 12, s->flags);
	put64(p + 16, s->ktime);
	memcpy(p + 24, s->comm, 16);
	put16(p + 40, s->kernel_len);
	put16(p + 42, s->user_len);
	put32(p + 44, s->user_err);
	for (i = 0; i < nf; i++)
		put64(p + SAMPLE_HDR + 8 * i, s->frames[i]);
	put32(b, LUPE_RAW_SAMPLE);
	put32(b + 4, (uint32_t)(SAMPLE_HDR + 8 * nf));
	return emit(w, b, 8 + SAMPLE_HDR + 8 * nf);
}

int lupe_rawfile_writer__write(struct lupe_rawfile_writer *w, const struct lupe_raw_record *r)
{
	uint8_t *b = w->buf, *p = b + 8;
	size_t n = 0, i;

	switch (r->type) {
	case LUPE_RAW_SAMPLE:
		return lupe_rawfile_writer__write_sample(w, &r->sample);
	case LUPE_RAW_EVENT:
		put32(p, r->event.type);
		put32(p + 4, r->event.pid);
		put32(p + 8, r->event.ppid);
		put32(p + 12, (uint32_t)r->event.exit_code);
		put64(p + 16, r->event.ktime);
		memcpy(p + 24, r->event.comm, 16);
		n = EVENT_LEN;
		break;
	case LUPE_RAW_MAPPING:
		put32(p, r->mapping.pid);
		put32(p + 4, r->mapping.gen);
		put64(p + 8, r->mapping.vaddr);
		put64(p + 16, r->mapping.length);
		put64(p + 24, r->mapping.bias);
		put64(p + 32, r->mapping.file_offset);
		put64(p + 40, r->mapping.host);
		put64(p + 48, r->mapping.file_id.hi);
		put64(p + 56, r->mapping.file_id.lo);
		n = MAPPING_LEN;
		break;
	case LUPE_RAW_FILE:
		put64(p, r->file.host);
		put32(p + 8, r->file.path ? 1 : 0);
		n = 12 + put_str(p + 12, r->file.path);
		break;
	case LUPE_RAW_SYMBOL:
		put64(p, r->symbol.host);
		put64(p + 8, r->symbol.addr);
		put64(p + 16, r->symbol.offset);
		put32(p + 24, r->symbol.name ? 1 : 0);
		n = 28 + put_str(p + 28, r->symbol.name);
		break;
	case LUPE_RAW_KSYMBOL: {
		size_t ln, lm;

		put64(p, r->ksymbol.addr);
		put64(p + 8, r->ksymbol.offset);
		put32(p + 16, (r->ksymbol.name ? 1 : 0) | (r->ksymbol.module ? 2 : 0));
		ln = put_str(p + 24, r->ksymbol.name);
		lm = put_str(p + 24 + ln, r->ksymbol.module);
		put16(p + 20, (uint16_t)ln);
		put16(p + 22, (uint16_t)lm);
		n = 24 + ln + lm;
		break;
	}
	case LUPE_RAW_POLL:
		put64(p, r->poll.ktime);
		put32(p + 8, r->poll.nrecords);
		put32(p + 12, 0);
		n = 16;
		break;
	case LUPE_RAW_CLOCK:
		put64(p, r->clock.ktime);
		n = 8;
		break;
	case LUPE_RAW_STATS:
		put32(p, r->stats.frequency);
		put32(p + 4, r->stats.ncpus);
		put32(p + 8, LUPE_RAW_NSTATS);
		put32(p + 12, 0);
		for (i = 0; i < LUPE_RAW_NSTATS; i++)
			put64(p + 16 + 8 * i, r->stats.counters[i]);
		n = 16 + 8 * LUPE_RAW_NSTATS;
		break;
	case LUPE_RAW_STOP:
		put32(p, (uint32_t)r->stop.exit_status);
		put32(p + 4, 0);
		n = 8;
		break;
	case LUPE_RAW_KREADY:
		n = 0;
		break;
	case LUPE_RAW_NOTE: {
		size_t lk = put_str(p + 4, r->note.key), lv = put_str(p + 4 + lk, r->note.value);

		put16(p, (uint16_t)lk);
		put16(p + 2, (uint16_t)lv);
		n = 4 + lk + lv;
		break;
	}
	case LUPE_RAW_END:
		put64(p, r->end.ktime);
		n = 8;
		break;
	case LUPE_RAW_SERVICE: {
		size_t ln = put_str(p + 12, r->service.name);

		put32(p, r->service.pid);
		put32(p + 4, r->service.gen);
		put16(p + 8, (uint16_t)ln);
		put16(p + 10, 0);
		n = 12 + ln;
		break;
	}
	default:
		return -EINVAL;
	}
	put32(b, r->type);
	put32(b + 4, (uint32_t)n);
	return emit(w, b, 8 + n);
}

int lupe_rawfile_writer__close(struct lupe_rawfile_writer *w, uint64_t end_ktime)
{
	struct lupe_raw_record end = { .type = LUPE_RAW_END, .end.ktime = end_ktime };
	int err;

	if (!w)
		return 0;
	lupe_rawfile_writer__write(w, &end);
	err = w->err;
	if (fclose(w->f) != 0 && !err)
		err = errno ? -errno : -EIO;
	free(w);
	return err;
}

uint64_t lupe_rawfile_writer__errors(const struct lupe_rawfile_writer *w)
{
	return w ? w->errors : 0;
}

uint64_t lupe_rawfile_writer__bytes(const struct lupe_rawfile_writer *w)
{
	return w ? w->bytes : 0;
}

/* ---- the reader ------------------------------------------------------------------------- */

struct lupe_rawfile_reader {
	FILE *f;                        /* or: */
	const uint8_t *mem;
	size_t memlen, mempos;
	uint64_t off, skipped;
	int state;                      /* 0: reading; 1: END seen; < 0: the error */
	struct lupe_raw_header hdr;
	char err[160];
	uint8_t payload[LUPE_RAW_MAX_PAYLOAD];
	char strs[2 * (LUPE_RAW_MAX_STRING + 1)];
};

/* Reads up to n bytes; returns how many (fewer only at the end of the input). */
static size_t src_read(struct lupe_rawfile_reader *r, void *buf, size_t n)
{
	size_t got;

	if (r->f) {
		got = fread(buf, 1, n, r->f);
	} else {
		got = r->memlen - r->mempos < n ? r->memlen - r->mempos : n;
		memcpy(buf, r->mem + r->mempos, got);
		r->mempos += got;
	}
	r->off += got;
	return got;
}

__attribute__((format(printf, 3, 4)))
static int fail(struct lupe_rawfile_reader *r, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
	r->state = err;
	return err;
}

static int read_header(struct lupe_rawfile_reader *r)
{
	uint8_t h[HEADER_LEN], skip[256];
	uint32_t len;
	size_t got = src_read(r, h, 16), left;

	if (memcmp(h, LUPE_RAW_MAGIC, got < 8 ? got : 8))
		return fail(r, -EBADMSG, "not a lupe raw recording (bad magic)");
	if (got < 16)
		return fail(r, -ENODATA, "truncated header at offset %zu", got);
	r->hdr.major = get16(h + 8);
	r->hdr.minor = get16(h + 10);
	if (r->hdr.major > LUPE_RAW_MAJOR || r->hdr.major == 0)
		return fail(r, -EPROTONOSUPPORT,
			    "raw format version %u.%u is not supported (this lupe reads %u.x)",
			    r->hdr.major, r->hdr.minor, LUPE_RAW_MAJOR);
	len = get32(h + 12);
	if (len < HEADER_LEN || len > HEADER_MAX)
		return fail(r, -EBADMSG, "corrupt header at offset 12: length %u", len);
	got = src_read(r, h + 16, HEADER_LEN - 16);
	if (got < HEADER_LEN - 16)
		return fail(r, -ENODATA, "truncated header at offset %llu",
			    (unsigned long long)r->off);
	for (left = len - HEADER_LEN; left; left -= got) {
		got = src_read(r, skip, left < sizeof(skip) ? left : sizeof(skip));
		if (!got)
			return fail(r, -ENODATA, "truncated header at offset %llu",
				    (unsigned long long)r->off);
	}
	r->hdr.flags = get32(h + 16);
	r->hdr.frequency = get32(h + 20);
	r->hdr.ncpus = get32(h + 24);
	r->hdr.start_ktime = get64(h + 32);
	r->hdr.kernel_id.hi = get64(h + 40);
	r->hdr.kernel_id.lo = get64(h + 48);
	memcpy(r->hdr.release, h + 56, RELEASE_LEN);
	r->hdr.release[RELEASE_LEN] = '\0';
	return 0;
}

static struct lupe_rawfile_reader *reader_new(FILE *f, const void *buf, size_t len, char *msgbuf,
					      size_t msglen)
{
	struct lupe_rawfile_reader *r = calloc(1, sizeof(*r));
	int err;

	if (!r) {
		if (f)
			fclose(f);
		if (msgbuf && msglen)
			snprintf(msgbuf, msglen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	r->f = f;
	r->mem = buf;
	r->memlen = buf ? len : 0;
	err = read_header(r);
	if (err) {
		if (msgbuf && msglen)
			snprintf(msgbuf, msglen, "%s", r->err);
		lupe_rawfile_reader__free(r);
		errno = -err;
		return NULL;
	}
	return r;
}

struct lupe_rawfile_reader *lupe_rawfile_reader__new(FILE *f, char *msgbuf, size_t msglen)
{
	if (!f) {
		errno = EINVAL;
		return NULL;
	}
	return reader_new(f, NULL, 0, msgbuf, msglen);
}

struct lupe_rawfile_reader *lupe_rawfile_reader__new_mem(const void *buf, size_t len,
							 char *msgbuf, size_t msglen)
{
	return reader_new(NULL, buf, len, msgbuf, msglen);
}

void lupe_rawfile_reader__free(struct lupe_rawfile_reader *r)
{
	if (!r)
		return;
	if (r->f)
		fclose(r->f);
	free(r);
}

const struct lupe_raw_header *lupe_rawfile_reader__header(const struct lupe_rawfile_reader *r)
{
	return &r->hdr;
}

const char *lupe_rawfile_reader__error(const struct lupe_rawfile_reader *r)
{
	return r->state < 0 ? r->err : NULL;
}

uint64_t lupe_rawfile_reader__offset(const struct lupe_rawfile_reader *r)
{
	return r->off;
}

uint64_t lupe_rawfile_reader__skipped(const struct lupe_rawfile_reader *r)
{
	return r->skipped;
}

/* A copy of n payload bytes at p as a NUL-terminated string in the reader's string area. */
static const char *take_str(struct lupe_rawfile_reader *r, size_t *used, const uint8_t *p, size_t n)
{
	char *s = r->strs + *used;

	memcpy(s, p, n);
	s[n] = '\0';
	*used += n + 1;
	return s;
}

static const char *type_name(uint32_t t)
{
	static const char *const names[] = { "?", "SAMPLE", "EVENT", "MAPPING", "FILE", "SYMBOL",
					     "KSYMBOL", "POLL", "CLOCK", "STATS", "STOP", "KREADY",
					     "NOTE", "END", "SERVICE" };

	return t < sizeof(names) / sizeof(names[0]) ? names[t] : "?";
}

/* Decodes a payload of n bytes of a known type; 0 or -EBADMSG (with r->err set). */
static int decode(struct lupe_rawfile_reader *r, uint32_t type, const uint8_t *p, uint32_t n,
		  uint64_t at, struct lupe_raw_record *out)
{
	size_t used = 0, i, nf, ln, lm;
	uint32_t fl, nc;

#define NEED(cond) do { if (!(cond)) goto bad; } while (0)
	memset(out, 0, offsetof(struct lupe_raw_record, sample.frames));
	out->type = type;
	switch (type) {
	case LUPE_RAW_SAMPLE: {
		struct lupe_sample *s = &out->sample;

		NEED(n >= SAMPLE_HDR);
		s->pid = get32(p);
		s->tid = get32(p + 4);
		s->cpu = get32(p + 8);
		s->flags = get32(p + 12);
		s->ktime = get64(p + 16);
		memcpy(s->comm, p + 24, 16);
		s->kernel_len = get16(p + 40);
		s->user_len = get16(p + 42);
		s->user_err = get32(p + 44);
		nf = (size_t)s->kernel_len + s->user_len;
		NEED(nf <= LUPE_MAX_FRAMES && n == SAMPLE_HDR + 8 * nf);
		for (i = 0; i < nf; i++)
			s->frames[i] = get64(p + SAMPLE_HDR + 8 * i);
		break;
	}
	case LUPE_RAW_EVENT:
		NEED(n == EVENT_LEN);
		out->event.type = get32(p);
		out->event.pid = get32(p + 4);
		out->event.ppid = get32(p + 8);
		out->event.exit_code = (int32_t)get32(p + 12);
		out->event.ktime = get64(p + 16);
		memcpy(out->event.comm, p + 24, 16);
		break;
	case LUPE_RAW_MAPPING:
		NEED(n == MAPPING_LEN);
		out->mapping.pid = get32(p);
		out->mapping.gen = get32(p + 4);
		out->mapping.vaddr = get64(p + 8);
		out->mapping.length = get64(p + 16);
		out->mapping.bias = get64(p + 24);
		out->mapping.file_offset = get64(p + 32);
		out->mapping.host = get64(p + 40);
		out->mapping.file_id.hi = get64(p + 48);
		out->mapping.file_id.lo = get64(p + 56);
		break;
	case LUPE_RAW_FILE:
		NEED(n >= 12 && n - 12 <= LUPE_RAW_MAX_STRING);
		out->file.host = get64(p);
		fl = get32(p + 8);
		NEED(fl <= 1 && (fl || n == 12));
		out->file.path = fl ? take_str(r, &used, p + 12, n - 12) : NULL;
		break;
	case LUPE_RAW_SYMBOL:
		NEED(n >= 28 && n - 28 <= LUPE_RAW_MAX_STRING);
		out->symbol.host = get64(p);
		out->symbol.addr = get64(p + 8);
		out->symbol.offset = get64(p + 16);
		fl = get32(p + 24);
		NEED(fl <= 1 && (fl || n == 28));
		out->symbol.name = fl ? take_str(r, &used, p + 28, n - 28) : NULL;
		break;
	case LUPE_RAW_KSYMBOL:
		NEED(n >= 24);
		out->ksymbol.addr = get64(p);
		out->ksymbol.offset = get64(p + 8);
		fl = get32(p + 16);
		ln = get16(p + 20);
		lm = get16(p + 22);
		NEED(fl <= 3 && n == 24 + ln + lm && ln <= LUPE_RAW_MAX_STRING &&
		     lm <= LUPE_RAW_MAX_STRING && ((fl & 1) || !ln) && ((fl & 2) || !lm));
		out->ksymbol.name = (fl & 1) ? take_str(r, &used, p + 24, ln) : NULL;
		out->ksymbol.module = (fl & 2) ? take_str(r, &used, p + 24 + ln, lm) : NULL;
		break;
	case LUPE_RAW_POLL:
		NEED(n == 16);
		out->poll.ktime = get64(p);
		out->poll.nrecords = get32(p + 8);
		break;
	case LUPE_RAW_CLOCK:
		NEED(n == 8);
		out->clock.ktime = get64(p);
		break;
	case LUPE_RAW_STATS:
		NEED(n >= 16);
		out->stats.frequency = get32(p);
		out->stats.ncpus = get32(p + 4);
		nc = get32(p + 8);
		NEED(n == 16 + 8 * (uint64_t)nc);
		/* A newer writer may count more: those are ignored; fewer read as 0. */
		for (i = 0; i < nc && i < LUPE_RAW_NSTATS; i++)
			out->stats.counters[i] = get64(p + 16 + 8 * i);
		for (; i < LUPE_RAW_NSTATS; i++)
			out->stats.counters[i] = 0;
		break;
	case LUPE_RAW_STOP:
		NEED(n == 8);
		out->stop.exit_status = (int32_t)get32(p);
		break;
	case LUPE_RAW_KREADY:
		NEED(n == 0);
		break;
	case LUPE_RAW_NOTE:
		NEED(n >= 4);
		ln = get16(p);
		lm = get16(p + 2);
		NEED(n == 4 + ln + lm && ln <= LUPE_RAW_MAX_STRING && lm <= LUPE_RAW_MAX_STRING);
		out->note.key = take_str(r, &used, p + 4, ln);
		out->note.value = take_str(r, &used, p + 4 + ln, lm);
		break;
	case LUPE_RAW_END:
		NEED(n == 8);
		out->end.ktime = get64(p);
		break;
	case LUPE_RAW_SERVICE:
		NEED(n >= 12);
		ln = get16(p + 8);
		NEED(n == 12 + ln && ln <= LUPE_RAW_MAX_STRING);
		out->service.pid = get32(p);
		out->service.gen = get32(p + 4);
		out->service.name = take_str(r, &used, p + 12, ln);
		break;
	}
	return 0;
#undef NEED
bad:
	return fail(r, -EBADMSG, "corrupt %s record at offset %llu (payload of %u bytes)",
		    type_name(type), (unsigned long long)at, n);
}

int lupe_rawfile_reader__next(struct lupe_rawfile_reader *r, struct lupe_raw_record *out)
{
	uint8_t h[8];
	uint64_t at;
	uint32_t type, len;
	size_t got;
	int err;

	for (;;) {
		if (r->state)
			return r->state < 0 ? r->state : 0;
		at = r->off;
		got = src_read(r, h, 8);
		if (got == 0)
			return fail(r, -ENODATA, "the recording ends at offset %llu without its END "
				    "record (cut short: the recorder was killed, or a copy is incomplete)",
				    (unsigned long long)at);
		if (got < 8)
			return fail(r, -ENODATA, "truncated record header at offset %llu",
				    (unsigned long long)at);
		if (r->f && ferror(r->f))
			return fail(r, -EIO, "read error at offset %llu", (unsigned long long)at);
		type = get32(h);
		len = get32(h + 4);
		if (len > LUPE_RAW_MAX_PAYLOAD)
			return fail(r, -EBADMSG, "corrupt record at offset %llu: length %u (type %u)",
				    (unsigned long long)at, len, type);
		got = src_read(r, r->payload, len);
		if (got < len)
			return fail(r, -ENODATA, "truncated %s record at offset %llu: %zu of %u bytes",
				    type_name(type), (unsigned long long)at, got, len);
		if (type == 0 || type > LUPE_RAW_LAST) {
			/* A newer minor version's record: skip it. Type 0 is never valid. */
			if (type == 0 || r->hdr.minor <= LUPE_RAW_MINOR)
				return fail(r, -EBADMSG, "unknown record type %u at offset %llu",
					    type, (unsigned long long)at);
			r->skipped++;
			continue;
		}
		err = decode(r, type, r->payload, len, at, out);
		if (err)
			return err;
		if (type == LUPE_RAW_END)
			r->state = 1;
		return 1;
	}
}
