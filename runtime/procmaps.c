/* /proc/PID/maps parsing. The line format (fs/proc/task_mmu.c) is
 *   start-end perms offset major:minor inode [padding path]
 * with hex numbers of no fixed width and a path that runs to the end of the line. */
#define LUPE_LOG_PREFIX "procmaps: "
#include "procmaps.h"
#include "strutil.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Far above any real maps file (65530 mappings by default, ~150 bytes each): only a
 * runaway input gets here. */
#define MAX_TEXT ((size_t)1 << 30)
#define FIRST_READ_SIZE (16 * 1024)

#define DELETED_SUFFIX " (deleted)"

/* How a line ended: parsed, wrong, or cut short by the end of the text. */
enum line_status {
	LINE_OK,
	LINE_BAD,
	LINE_SHORT,
};

struct line {
	struct lupe_procmap m;
	const char *path;
	size_t path_len;
};

static int is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* One or more hex digits, value <= max. Stops at the first non-digit, which the caller
 * checks: running out of text after a digit is decided by the terminator. */
static enum line_status parse_hex(const char **pp, const char *end, uint64_t max, uint64_t *out)
{
	const char *p = *pp;
	uint64_t v = 0;
	int d;

	if (p == end)
		return LINE_SHORT;
	if (lupe_hex_digit(*p) < 0)
		return LINE_BAD;
	for (; p < end && (d = lupe_hex_digit(*p)) >= 0; p++) {
		if (v > (max - (uint64_t)d) / 16)
			return LINE_BAD;
		v = v * 16 + (uint64_t)d;
	}
	*pp = p;
	*out = v;
	return LINE_OK;
}

static enum line_status parse_dec(const char **pp, const char *end, uint64_t *out)
{
	const char *p = *pp;
	uint64_t v = 0, d;

	if (p == end)
		return LINE_SHORT;
	if (*p < '0' || *p > '9')
		return LINE_BAD;
	for (; p < end && *p >= '0' && *p <= '9'; p++) {
		d = (uint64_t)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return LINE_BAD;
		v = v * 10 + d;
	}
	*pp = p;
	*out = v;
	return LINE_OK;
}

static enum line_status expect_char(const char **pp, const char *end, char c)
{
	if (*pp == end)
		return LINE_SHORT;
	if (**pp != c)
		return LINE_BAD;
	(*pp)++;
	return LINE_OK;
}

/* At least one blank, then all of them. */
static enum line_status expect_blanks(const char **pp, const char *end)
{
	const char *p = *pp;

	if (p == end)
		return LINE_SHORT;
	if (!is_blank(*p))
		return LINE_BAD;
	while (p < end && is_blank(*p))
		p++;
	*pp = p;
	return LINE_OK;
}

static enum line_status parse_perms(const char **pp, const char *end, uint32_t *prot)
{
	static const char set[4] = { 'r', 'w', 'x', 'p' };
	static const char unset[4] = { '-', '-', '-', 's' };
	static const uint32_t bit[4] = { LUPE_MAP_R, LUPE_MAP_W, LUPE_MAP_X, LUPE_MAP_P };
	const char *p = *pp;
	int i;

	*prot = 0;
	for (i = 0; i < 4; i++, p++) {
		if (p == end)
			return LINE_SHORT;
		if (*p == set[i])
			*prot |= bit[i];
		else if (*p != unset[i])
			return LINE_BAD;
	}
	*pp = p;
	return LINE_OK;
}

static enum lupe_procmap_kind classify(const char *s, size_t n)
{
	if (n == 0 || (n == 9 && !memcmp(s, "/dev/zero", 9)))
		return LUPE_MAP_ANON;
	if (n >= 7 && !memcmp(s, "/memfd:", 7))
		return LUPE_MAP_MEMFD;
	if (n == 6 && !memcmp(s, "[vdso]", 6))
		return LUPE_MAP_VDSO;
	if (n >= 2 && s[0] == '[' && s[n - 1] == ']')
		return LUPE_MAP_SPECIAL;
	return LUPE_MAP_FILE;
}

/* Parses [p, end), a line without its newline. at_eof: no newline followed, so running
 * out of text before the path means the line was cut (LINE_SHORT), not that a field is
 * missing. Checks never reject a prefix that a longer text could complete, so a cut line
 * is reported SHORT, not BAD. */
static enum line_status parse_line(const char *p, const char *end, int at_eof, struct line *l)
{
	uint64_t major, minor;
	enum line_status st;
	size_t n, sl = sizeof(DELETED_SUFFIX) - 1;

	memset(l, 0, sizeof(*l));
	if ((st = parse_hex(&p, end, UINT64_MAX, &l->m.start)) ||
	    (st = expect_char(&p, end, '-')) ||
	    (st = parse_hex(&p, end, UINT64_MAX, &l->m.end)) ||
	    (st = expect_blanks(&p, end)))
		return st;
	if (l->m.start >= l->m.end)
		return LINE_BAD;
	if ((st = parse_perms(&p, end, &l->m.prot)) ||
	    (st = expect_blanks(&p, end)) ||
	    (st = parse_hex(&p, end, UINT64_MAX, &l->m.file_offset)) ||
	    (st = expect_blanks(&p, end)) ||
	    (st = parse_hex(&p, end, UINT32_MAX, &major)) ||
	    (st = expect_char(&p, end, ':')) ||
	    (st = parse_hex(&p, end, UINT32_MAX, &minor)) ||
	    (st = expect_blanks(&p, end)) ||
	    (st = parse_dec(&p, end, &l->m.inode)))
		return st;
	l->m.dev_major = (uint32_t)major;
	l->m.dev_minor = (uint32_t)minor;

	if (p == end) {
		/* "... inode\n" has no path; "... inode<EOF>" may have lost digits. */
		if (at_eof)
			return LINE_SHORT;
	} else if ((st = expect_blanks(&p, end))) {
		return st;
	}
	n = (size_t)(end - p);
	if (memchr(p, '\0', n))
		return LINE_BAD;
	if (n >= sl && !memcmp(p + n - sl, DELETED_SUFFIX, sl)) {
		l->m.deleted = 1;
		n -= sl;
	}
	l->m.kind = classify(p, n);
	l->path = p;
	l->path_len = n;
	return LINE_OK;
}

/* Grows *buf to hold at least need elements of size sz, doubling from min_cap. */
static int grow(void **buf, size_t *cap, size_t need, size_t sz, size_t min_cap)
{
	size_t c = *cap ? *cap : min_cap;
	void *nb;

	if (need <= *cap)
		return 0;
	while (c < need) {
		if (c > SIZE_MAX / 2 / sz)
			return -ENOMEM;
		c *= 2;
	}
	nb = realloc(*buf, c * sz);
	if (!nb)
		return -ENOMEM;
	*buf = nb;
	*cap = c;
	return 0;
}

static int add_mapping(struct lupe_procmaps *out, const struct line *l)
{
	struct lupe_procmap *m;
	void *p;
	int err;

	p = out->maps;
	err = grow(&p, &out->cap, out->count + 1, sizeof(*out->maps), 64);
	out->maps = p;
	if (err)
		return err;
	p = out->strings;
	err = grow(&p, &out->strings_cap, out->strings_len + l->path_len + 1, 1, 4096);
	out->strings = p;
	if (err)
		return err;

	m = &out->maps[out->count++];
	*m = l->m;
	/* The arena may move while growing: keep the offset now, make the pointer at the end. */
	m->path = (char *)(uintptr_t)out->strings_len;
	if (l->path_len)
		memcpy(out->strings + out->strings_len, l->path, l->path_len);
	out->strings[out->strings_len + l->path_len] = '\0';
	out->strings_len += l->path_len + 1;
	return 0;
}

static void reset(struct lupe_procmaps *out)
{
	out->count = 0;
	out->malformed = 0;
	out->truncated = 0;
	out->strings_len = 0;
}

int lupe_procmaps_parse(const char *text, size_t len, struct lupe_procmaps *out)
{
	const char *p = text, *end, *nl;
	enum line_status st;
	struct line l;
	size_t i;
	int err = 0;

	if (!out)
		return -EINVAL;
	reset(out);
	if (!text && len)
		return -EINVAL;
	if (!len)
		return 0;

	end = text + len;
	while (p < end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		st = parse_line(p, nl ? nl : end, !nl, &l);
		if (st == LINE_SHORT && !nl) {
			out->truncated = 1;
		} else if (st != LINE_OK) {
			out->malformed++;
		} else if (l.m.prot & LUPE_MAP_X) {
			err = add_mapping(out, &l);
			if (err)
				goto err_out;
		}
		p = nl ? nl + 1 : end;
	}
	for (i = 0; i < out->count; i++)
		out->maps[i].path = out->strings + (uintptr_t)out->maps[i].path;
	return 0;

err_out:
	/* The paths still hold offsets: nothing may be used. */
	out->count = 0;
	return err;
}

/* One meaning per condition the caller acts on; see the header. */
static int fold_errno(int e)
{
	switch (e) {
	case ENOENT:
	case ESRCH:
		return -ESRCH;
	case EACCES:
	case EPERM:
		return -EPERM;
	default:
		return -e;
	}
}

int lupe_procmaps_read(const char *proc_root, pid_t pid, struct lupe_procmaps *out)
{
	char path[PATH_MAX];
	char *buf = NULL;
	size_t len = 0, cap = 0;
	ssize_t n;
	void *p;
	int fd = -1, err = 0;

	if (!out)
		return -EINVAL;
	reset(out);
	if (pid <= 0)
		return -EINVAL;
	if ((size_t)snprintf(path, sizeof(path), "%s/%d/maps", proc_root ? proc_root : "/proc",
			     (int)pid) >= sizeof(path))
		return -ENAMETOOLONG;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err = fold_errno(errno);
		goto out;
	}
	/* The kernel builds the text as it goes and returns about a page per read. */
	for (;;) {
		if (len == cap) {
			if (cap >= MAX_TEXT) {
				err = -EFBIG;
				goto out;
			}
			p = buf;
			err = grow(&p, &cap, len + 1, 1, FIRST_READ_SIZE);
			buf = p;
			if (err)
				goto out;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = fold_errno(errno);
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}

	err = lupe_procmaps_parse(buf, len, out);
	if (!err && out->malformed)
		pr_debug("maps '%s': skipped %zu malformed lines", path, out->malformed);
out:
	if (err && err != -ESRCH && err != -EPERM)
		pr_warn("maps '%s': failed to read: %s", path, lupe_errstr(err));
	if (fd >= 0)
		close(fd);
	free(buf);
	return err;
}

void lupe_procmaps_release(struct lupe_procmaps *out)
{
	if (!out)
		return;
	free(out->maps);
	free(out->strings);
	memset(out, 0, sizeof(*out));
}
