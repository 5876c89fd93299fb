/* procmaps: parsing against an awk oracle, hand-computed edge cases, every cut of a real
 * maps text, a generated 300-mapping file, this very process, and random mutations. */
#include "procmaps.h"
#include "log.h"
#include "lupe_test.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#define REAL_PID 31337 /* tests/fixtures/maps/proc/31337/maps, a python3 process */

/* Reads a whole file into a buffer of exactly its size (no NUL after it), so that ASan
 * catches any read past the length the parser was given. */
static char *slurp(const char *path, size_t *len)
{
	struct stat st;
	char *buf = NULL;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) || st.st_size <= 0)
		goto out;
	buf = malloc((size_t)st.st_size);
	if (!buf)
		goto out;
	n = read(fd, buf, (size_t)st.st_size);
	if (n != st.st_size) {
		free(buf);
		buf = NULL;
		goto out;
	}
	*len = (size_t)n;
out:
	close(fd);
	return buf;
}

static const char *fixture(char *buf, size_t sz, const char *rel)
{
	const char *dir = getenv("LUPE_FIXTURES");

	snprintf(buf, sz, "%s/maps/%s", dir ? dir : "tests/fixtures", rel);
	return buf;
}

static uint32_t prot_of(const char *perms)
{
	return (perms[0] == 'r' ? LUPE_MAP_R : 0) | (perms[1] == 'w' ? LUPE_MAP_W : 0) |
	       (perms[2] == 'x' ? LUPE_MAP_X : 0) | (perms[3] == 'p' ? LUPE_MAP_P : 0);
}

static int kind_of(const char *s)
{
	static const char *names[] = {
		[LUPE_MAP_FILE] = "file", [LUPE_MAP_VDSO] = "vdso", [LUPE_MAP_ANON] = "anon",
		[LUPE_MAP_MEMFD] = "memfd", [LUPE_MAP_SPECIAL] = "special",
	};
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(s, names[i]))
			return (int)i;
	return -1;
}

static const struct lupe_procmap *find_addr(const struct lupe_procmaps *m, uint64_t addr)
{
	size_t i;

	for (i = 0; i < m->count; i++)
		if (m->maps[i].start <= addr && addr < m->maps[i].end)
			return &m->maps[i];
	return NULL;
}

/* Compares a result against real.expected, written by expected.awk (see there). */
static int check_against_awk(const struct lupe_procmaps *m, char *why, size_t whysz)
{
	char path[PATH_MAX], line[8192], perms[8], kind[16];
	uint64_t start, end, off, ino;
	unsigned int maj, min;
	size_t i = 0;
	int deleted, n, ok = 0;
	const char *p;
	FILE *f;

	f = fopen(fixture(path, sizeof(path), "real.expected"), "re");
	if (!f) {
		snprintf(why, whysz, "cannot open %s", path);
		return 0;
	}
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (sscanf(line, "%" SCNx64 " %" SCNx64 " %7s %" SCNx64 " %x %x %" SCNu64 " %15s %d%n",
			   &start, &end, perms, &off, &maj, &min, &ino, kind, &deleted, &n) != 9) {
			snprintf(why, whysz, "bad oracle line '%s'", line);
			goto out;
		}
		p = line + n + (line[n] == ' ');
		if (i >= m->count) {
			snprintf(why, whysz, "only %zu mappings, oracle has more", m->count);
			goto out;
		}
		const struct lupe_procmap *g = &m->maps[i];
		if (g->start != start || g->end != end || g->file_offset != off ||
		    g->dev_major != maj || g->dev_minor != min || g->inode != ino ||
		    g->prot != prot_of(perms) || (int)g->kind != kind_of(kind) ||
		    g->deleted != deleted || strcmp(g->path, p)) {
			snprintf(why, whysz, "mapping %zu differs from oracle '%s' (got path '%s' kind %d)",
				 i, line, g->path, g->kind);
			goto out;
		}
		i++;
	}
	if (i != m->count) {
		snprintf(why, whysz, "%zu mappings, oracle has %zu", m->count, i);
		goto out;
	}
	ok = 1;
out:
	fclose(f);
	return ok;
}

TEST(parse_real_maps_matches_awk_oracle)
{
	struct lupe_procmaps m = { 0 };
	char path[PATH_MAX], why[1024] = "";
	size_t len;
	char *text = slurp(fixture(path, sizeof(path), "proc/31337/maps"), &len);

	if (!text)
		FAIL("cannot read %s", path);
	ASSERT_OK(lupe_procmaps_parse(text, len, &m));
	free(text);
	ASSERT_EQ(m.malformed, 0);
	ASSERT_EQ(m.truncated, 0);
	if (!check_against_awk(&m, why, sizeof(why))) {
		lupe_procmaps_release(&m);
		FAIL("parse: %s", why);
	}
	/* The same file through the reader, with the fixture directory as proc root. */
	ASSERT_OK(lupe_procmaps_read(fixture(path, sizeof(path), "proc"), REAL_PID, &m));
	if (!check_against_awk(&m, why, sizeof(why))) {
		lupe_procmaps_release(&m);
		FAIL("read: %s", why);
	}
	lupe_procmaps_release(&m);
}

struct want {
	uint64_t start, end, off;
	uint32_t maj, min;
	uint64_t ino;
	uint32_t prot;
	enum lupe_procmap_kind kind;
	int deleted;
	const char *path;
};

#define RXP (LUPE_MAP_R | LUPE_MAP_X | LUPE_MAP_P)

TEST(parse_edge_cases_by_hand)
{
	/* Values read off edge.maps by hand; its [stack] and one r--p line are not exec. */
	static const struct want want[] = {
		{ 0x400000, 0x452000, 0, 0x103, 0x0a, 5505089, RXP, LUPE_MAP_FILE, 0, "/usr/bin/wide minor" },
		{ 0x7f0000000000, 0x7f0000001000, 0x1000, 0xfd, 0x10, 42, RXP, LUPE_MAP_FILE, 0, "/opt/my app/lib x.so" },
		{ 0x7f0000001000, 0x7f0000002000, 0, 0x10f, 0, UINT64_MAX, LUPE_MAP_R | LUPE_MAP_X,
		  LUPE_MAP_FILE, 0, "/mnt/twelve bit major" },
		{ 0x7f0000002000, 0x7f0000003000, 0, 0, 5, 77, RXP, LUPE_MAP_MEMFD, 1, "/memfd:v8 jit" },
		{ 0x7f0000003000, 0x7f0000004000, 0, 0, 0, 0, RXP | LUPE_MAP_W, LUPE_MAP_ANON, 0, "" },
		{ 0x7f0000004000, 0x7f0000005000, 0, 0, 1, 1048, LUPE_MAP_R | LUPE_MAP_X, LUPE_MAP_ANON, 1, "/dev/zero" },
		{ 0x7f0000005000, 0x7f0000006000, 0x2000, 8, 1, 99, RXP, LUPE_MAP_FILE, 1, "/usr/lib/gone.so" },
		{ 0x7f0000006000, 0x7f0000007000, 0, 0, 0, 0, RXP, LUPE_MAP_VDSO, 0, "[vdso]" },
		{ 0x7f0000007000, 0x7f0000008000, 0, 0, 0, 0, RXP | LUPE_MAP_W, LUPE_MAP_SPECIAL, 0, "[heap]" },
		{ 0x7f0000009000, 0x7f000000a000, 0xabcd, 0x0a, 0x0b, 5, RXP, LUPE_MAP_FILE, 0,
		  "/upper hex and leading zeros" },
		{ 0x7f000000a000, 0x7f000000b000, 0, 8, 1, 6, LUPE_MAP_X | LUPE_MAP_P, LUPE_MAP_FILE, 1,
		  "/twice (deleted)" },
		{ 0x7f000000b000, 0x7f000000c000, 0, 8, 1, 7, RXP, LUPE_MAP_FILE, 0, "/dev/zero2" },
		{ 0x7f000000c000, 0x7f000000d000, 0, 8, 1, 8, RXP, LUPE_MAP_FILE, 0, "[vdso" },
		{ 0x7f000000d000, 0x7f000000e000, 0, 0xffffffff, 0xffffffff, 9, RXP, LUPE_MAP_FILE, 0, "/widest device" },
		{ 0x7f000000e000, 0x7f000000f000, 0, 0, 0, 0, RXP, LUPE_MAP_ANON, 0, "" },
		{ 0xffffffffff600000, 0xffffffffff601000, 0, 0, 0, 0, LUPE_MAP_X | LUPE_MAP_P,
		  LUPE_MAP_SPECIAL, 0, "[vsyscall]" },
	};
	struct lupe_procmaps m = { 0 };
	char path[PATH_MAX];
	size_t i, len, n = sizeof(want) / sizeof(want[0]);
	char *text = slurp(fixture(path, sizeof(path), "edge.maps"), &len);

	if (!text)
		FAIL("cannot read %s", path);
	ASSERT_OK(lupe_procmaps_parse(text, len, &m));
	free(text);
	ASSERT_EQ(m.malformed, 0);
	ASSERT_EQ(m.truncated, 0);
	ASSERT_EQ(m.count, n);
	for (i = 0; i < n; i++) {
		const struct lupe_procmap *g = &m.maps[i];
		const struct want *w = &want[i];

		if (g->start != w->start || g->end != w->end || g->file_offset != w->off ||
		    g->dev_major != w->maj || g->dev_minor != w->min || g->inode != w->ino ||
		    g->prot != w->prot || g->kind != w->kind || g->deleted != w->deleted ||
		    strcmp(g->path, w->path)) {
			lupe_procmaps_release(&m);
			FAIL("mapping %zu ('%s') differs from the hand-computed one", i, w->path);
		}
	}
	lupe_procmaps_release(&m);
}

TEST(parse_malformed_lines_are_counted)
{
	struct lupe_procmaps m = { 0 };
	char path[PATH_MAX];
	size_t len;
	char *text = slurp(fixture(path, sizeof(path), "malformed.maps"), &len);

	if (!text)
		FAIL("cannot read %s", path);
	ASSERT_OK(lupe_procmaps_parse(text, len, &m));
	free(text);
	/* 31 lines: 3 good exec lines, 1 good non-exec line, 27 broken ones, each broken in a
	 * different way (see the paths in the file). */
	ASSERT_EQ(m.malformed, 27);
	ASSERT_EQ(m.truncated, 0);
	ASSERT_EQ(m.count, 3);
	ASSERT_STREQ(m.maps[0].path, "/ok/one");
	ASSERT_EQ(m.maps[0].file_offset, 0x1000);
	ASSERT_STREQ(m.maps[1].path, "/ok/two");
	ASSERT_STREQ(m.maps[2].path, "/ok/top");
	ASSERT_EQ(m.maps[2].start, 0xfffffffffffff000);
	ASSERT_EQ(m.maps[2].end, UINT64_MAX);
	lupe_procmaps_release(&m);
}

TEST(parse_unterminated_last_line)
{
	static const struct {
		const char *text;
		size_t count, malformed, truncated;
		const char *last_path;
	} cases[] = {
		{ "00400000-00452000 r-xp 00000000 08:01 5 /a/b", 1, 0, 0, "/a/b" },
		{ "00400000-00452000 r-xp 00000000 08:01 5 ", 1, 0, 0, "" },
		{ "00400000-00452000 r-xp 00000000 08:01 5", 0, 0, 1, NULL },   /* inode cut? */
		{ "00400000-00452000 r-xp 00000000 08:", 0, 0, 1, NULL },
		{ "00400000-0045", 0, 0, 1, NULL },
		{ "0", 0, 0, 1, NULL },
		{ "00400000-00452000 r-xq", 0, 1, 0, NULL },   /* wrong before it stops */
		{ "zzz", 0, 1, 0, NULL },
		{ "00400000-00452000 r-xp 00000000 08:01 5 /x\n00500000-0050", 1, 0, 1, "/x" },
		{ "00400000-00452000 r-xp 00000000 08:01 5 /x\n", 1, 0, 0, "/x" },
		{ "00400000-00452000 r-xp 00000000 08:01 5\n", 1, 0, 0, "" },
		{ "\n", 0, 1, 0, NULL },
		{ "", 0, 0, 0, NULL },
	};
	struct lupe_procmaps m = { 0 };
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len = strlen(cases[i].text);
		char *t = malloc(len + 1);

		ASSERT(t);
		memcpy(t, cases[i].text, len);
		ASSERT_OK(lupe_procmaps_parse(t, len, &m));
		free(t);
		if (m.count != cases[i].count || m.malformed != cases[i].malformed ||
		    m.truncated != cases[i].truncated ||
		    (cases[i].last_path && strcmp(m.maps[m.count - 1].path, cases[i].last_path))) {
			lupe_procmaps_release(&m);
			FAIL("case %zu: count %zu malformed %zu truncated %zu", i, m.count, m.malformed,
			     m.truncated);
		}
	}
	lupe_procmaps_release(&m);
}

/* Cuts the real text at every byte. Lines wholly before the cut must come out exactly
 * like in the full parse; the cut line is kept iff it reaches past its inode field (the
 * sscanf %n below), else truncated is 1; nothing is ever malformed. */
TEST(parse_every_cut_of_real_text)
{
	struct lupe_procmaps full = { 0 }, m = { 0 };
	char path[PATH_MAX], line[8192], perms[8];
	size_t len, cut, ls, le, nfull_x, k;
	char *text = slurp(fixture(path, sizeof(path), "proc/31337/maps"), &len);
	size_t *hdr = NULL;
	int n;

	if (!text)
		FAIL("cannot read %s", path);
	ASSERT_OK(lupe_procmaps_parse(text, len, &full));
	hdr = calloc(len, sizeof(*hdr));
	ASSERT(hdr);
	/* hdr[ls] = length of the header (through the inode) of the line starting at ls. */
	for (ls = 0; ls < len; ls = le + 1) {
		le = (size_t)((char *)memchr(text + ls, '\n', len - ls) - text);
		ASSERT(le - ls < sizeof(line));
		memcpy(line, text + ls, le - ls);
		line[le - ls] = '\0';
		ASSERT_EQ(sscanf(line, "%*s %7s %*s %*s %*s%n", perms, &n), 1);
		hdr[ls] = (size_t)n;
	}

	for (cut = 0; cut <= len; cut++) {
		char *t = malloc(cut ? cut : 1);
		size_t want_count = 0, want_trunc = 0, partial = SIZE_MAX;

		ASSERT(t);
		memcpy(t, text, cut);
		/* The oracle: walk the full text's lines. */
		nfull_x = 0;
		for (ls = 0; ls < len; ls = le + 1) {
			le = (size_t)((char *)memchr(text + ls, '\n', len - ls) - text);
			const char *sp = memchr(text + ls, ' ', le - ls);
			int x;

			ASSERT(sp);
			x = sp[3] == 'x';
			if (le < cut) {
				want_count += x;
				nfull_x += x;
			} else if (ls < cut) {
				if (cut - ls > hdr[ls]) {
					want_count += x;
					if (x)
						partial = nfull_x;
				} else {
					want_trunc = 1;
				}
			}
		}
		ASSERT_OK(lupe_procmaps_parse(t, cut, &m));
		free(t);
		if (m.count != want_count || m.truncated != want_trunc || m.malformed) {
			free(hdr);
			free(text);
			lupe_procmaps_release(&full);
			lupe_procmaps_release(&m);
			FAIL("cut at %zu: count %zu (want %zu) truncated %zu (want %zu) malformed %zu",
			     cut, m.count, want_count, m.truncated, want_trunc, m.malformed);
		}
		for (k = 0; k < m.count; k++) {
			const struct lupe_procmap *a = &m.maps[k], *b = &full.maps[k];
			int same_head = a->start == b->start && a->end == b->end &&
					a->inode == b->inode && a->prot == b->prot;

			if (k == partial) {
				/* Possibly cut path: a prefix of the full one (suffix included). */
				size_t pl = strlen(a->path);
				char fullraw[8192];

				snprintf(fullraw, sizeof(fullraw), "%s%s", b->path,
					 b->deleted ? " (deleted)" : "");
				if (!same_head || pl > strlen(fullraw) || strncmp(a->path, fullraw, pl)) {
					free(hdr);
					free(text);
					lupe_procmaps_release(&full);
					lupe_procmaps_release(&m);
					FAIL("cut at %zu: partial mapping %zu '%s' is not a prefix of '%s'",
					     cut, k, a->path, fullraw);
				}
			} else if (!same_head || a->kind != b->kind || a->deleted != b->deleted ||
				   strcmp(a->path, b->path)) {
				free(hdr);
				free(text);
				lupe_procmaps_release(&full);
				lupe_procmaps_release(&m);
				FAIL("cut at %zu: mapping %zu differs from the full parse", cut, k);
			}
		}
	}
	free(hdr);
	free(text);
	lupe_procmaps_release(&full);
	lupe_procmaps_release(&m);
}

TEST(parse_resets_and_reuses)
{
	struct lupe_procmaps m = { 0 };
	const char *a = "1000-2000 r-xp 00000000 08:01 5 /a\n3000-4000 r-xp 0 08:01 6 /b\nbad\n";
	const char *b = "5000-6000 --xp 00000000 08:01 7 /c\n";

	ASSERT_EQ(lupe_procmaps_parse("x", 1, NULL), -EINVAL);
	ASSERT_EQ(lupe_procmaps_parse(NULL, 3, &m), -EINVAL);
	ASSERT_OK(lupe_procmaps_parse(NULL, 0, &m));
	ASSERT_EQ(m.count, 0);
	ASSERT_OK(lupe_procmaps_parse(a, strlen(a), &m));
	ASSERT_EQ(m.count, 2);
	ASSERT_EQ(m.malformed, 1);
	ASSERT_OK(lupe_procmaps_parse(b, strlen(b), &m));
	ASSERT_EQ(m.count, 1);
	ASSERT_EQ(m.malformed, 0);
	ASSERT_STREQ(m.maps[0].path, "/c");
	lupe_procmaps_release(&m);
	ASSERT(m.maps == NULL && m.strings == NULL && m.count == 0);
	lupe_procmaps_release(&m);
	lupe_procmaps_release(NULL);
	ASSERT_OK(lupe_procmaps_parse(a, strlen(a), &m));
	ASSERT_STREQ(m.maps[1].path, "/b");
	lupe_procmaps_release(&m);
}

static int rm_tree(const char *dir)
{
	char p[PATH_MAX];
	struct dirent *e;
	DIR *d = opendir(dir);

	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		struct stat st;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		if (!lstat(p, &st) && S_ISDIR(st.st_mode))
			rm_tree(p);
		else
			unlink(p);
	}
	closedir(d);
	return rmdir(dir) ? -errno : 0;
}

#define NSYN 300

/* 300 exec mappings (plus non-exec ones between them) in every field width and kind,
 * one with a 5000-byte path: over 40 KB, so the reader must loop and grow. */
TEST(read_synthetic_300_from_proc_root)
{
	static const char *perm_cycle[] = { "r-xp", "--xp", "rwxp", "r-xs" };
	static const char *addr_fmt[] = { "%08" PRIx64, "%012" PRIx64, "%016" PRIx64, "%" PRIx64 };
	struct want *w = calloc(NSYN, sizeof(*w));
	char **paths = calloc(NSYN, sizeof(*paths));
	char root[] = "/tmp/lupe-procmaps-XXXXXX", file[PATH_MAX], a[32], b[32];
	struct lupe_procmaps m = { 0 };
	FILE *f = NULL;
	size_t i;
	int ok = 0;

	ASSERT(w && paths);
	if (!mkdtemp(root))
		FAIL("mkdtemp: %s", strerror(errno));
	snprintf(file, sizeof(file), "%s/4242", root);
	if (mkdir(file, 0755))
		goto out;
	snprintf(file, sizeof(file), "%s/4242/maps", root);
	f = fopen(file, "we");
	if (!f)
		goto out;
	for (i = 0; i < NSYN; i++) {
		const char *raw;
		char buf[64];

		w[i].start = (uint64_t)0x1000 << (i % 52);
		w[i].end = w[i].start + 0x1000 * (i + 1);
		w[i].off = (uint64_t)i * 0x7000;
		w[i].maj = (uint32_t)(i * 37 % 4096);
		w[i].min = (uint32_t)(i * 101 % 1048576);
		w[i].ino = i ? (uint64_t)i * 1000003 * 1000003 : UINT64_MAX;
		w[i].prot = prot_of(perm_cycle[i % 4]);
		paths[i] = malloc(5100);
		if (!paths[i])
			goto out;
		switch (i % 6) {
		case 0:
			snprintf(paths[i], 5100, "/usr/lib/lib%zu.so", i);
			w[i].kind = LUPE_MAP_FILE;
			break;
		case 1:
			snprintf(paths[i], 5100, "/opt/dir with space/lib %zu.so", i);
			w[i].kind = LUPE_MAP_FILE;
			w[i].deleted = i % 12 == 1;
			break;
		case 2:
			paths[i][0] = '\0';
			w[i].kind = LUPE_MAP_ANON;
			break;
		case 3:
			snprintf(paths[i], 5100, "/memfd:jit-%zu", i);
			w[i].kind = LUPE_MAP_MEMFD;
			w[i].deleted = 1;
			break;
		case 4:
			snprintf(paths[i], 5100, "[special%zu]", i);
			w[i].kind = LUPE_MAP_SPECIAL;
			break;
		default:
			snprintf(paths[i], 5100, "/dev/zero");
			w[i].kind = LUPE_MAP_ANON;
			w[i].deleted = 1;
			break;
		}
		if (i == 150) {
			memset(paths[i], 'a', 5000);
			paths[i][0] = '/';
			paths[i][5000] = '\0';
			w[i].kind = LUPE_MAP_FILE;
			w[i].deleted = 0;
		}
		w[i].path = paths[i];
		raw = paths[i];
		snprintf(a, sizeof(a), addr_fmt[i % 4], w[i].start);
		snprintf(b, sizeof(b), addr_fmt[(i + 1) % 4], w[i].end);
		snprintf(buf, sizeof(buf), "%x:%x", w[i].maj, w[i].min);
		fprintf(f, "%s-%s %s %0*" PRIx64 " %s %" PRIu64 " %*s%s%s\n", a, b, perm_cycle[i % 4],
			(int)(i % 9), w[i].off, buf, w[i].ino, (int)(i % 30), "", raw,
			w[i].deleted ? " (deleted)" : "");
		if (i % 3 == 0)
			fprintf(f, "%s-%s rw-p 00000000 00:00 0 [not exec %zu]\n", a, b, i);
	}
	if (fclose(f)) {
		f = NULL;
		goto out;
	}
	f = NULL;

	if (lupe_procmaps_read(root, 4242, &m))
		goto out;
	if (m.count != NSYN || m.malformed || m.truncated)
		goto out;
	for (i = 0; i < NSYN; i++) {
		const struct lupe_procmap *g = &m.maps[i];

		if (g->start != w[i].start || g->end != w[i].end || g->file_offset != w[i].off ||
		    g->dev_major != w[i].maj || g->dev_minor != w[i].min || g->inode != w[i].ino ||
		    g->prot != w[i].prot || g->kind != w[i].kind || g->deleted != w[i].deleted ||
		    strcmp(g->path, w[i].path)) {
			printf("    mapping %zu differs\n", i);
			goto out;
		}
	}
	ok = 1;
out:
	if (f)
		fclose(f);
	rm_tree(root);
	for (i = 0; i < NSYN; i++)
		free(paths[i]);
	free(paths);
	free(w);
	if (!ok) {
		size_t c = m.count, mal = m.malformed;

		lupe_procmaps_release(&m);
		FAIL("synthetic maps: count %zu malformed %zu (errno %d)", c, mal, errno);
	}
	lupe_procmaps_release(&m);
}

static __attribute__((noinline)) int marker(int x)
{
	return x * 3 + 1;
}

TEST(read_self_finds_own_code_vdso_and_libc)
{
	struct lupe_procmaps m = { 0 };
	const struct lupe_procmap *g;
	char exe[PATH_MAX];
	struct stat st;
	ssize_t n;
	Dl_info info;
	void *libc, *sym;
	uint64_t vdso;

	ASSERT_EQ(marker(1), 4);
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	ASSERT(n > 0);
	exe[n] = '\0';
	ASSERT_OK(stat(exe, &st));
	ASSERT_OK(lupe_procmaps_read(NULL, getpid(), &m));
	ASSERT_EQ(m.malformed, 0);
	ASSERT_EQ(m.truncated, 0);

	g = find_addr(&m, (uintptr_t)&marker);
	ASSERT(g);
	ASSERT(g->prot & LUPE_MAP_X);
	ASSERT_EQ(g->kind, LUPE_MAP_FILE);
	ASSERT_EQ(g->deleted, 0);
	ASSERT_STREQ(g->path, exe);
	ASSERT_EQ(g->inode, st.st_ino);
	ASSERT_EQ(g->dev_major, major(st.st_dev));
	ASSERT_EQ(g->dev_minor, minor(st.st_dev));
	ASSERT((uintptr_t)&marker - g->start + g->file_offset < (uint64_t)st.st_size);

	vdso = getauxval(AT_SYSINFO_EHDR);
	if (vdso) {
		g = find_addr(&m, vdso);
		ASSERT(g);
		ASSERT_EQ(g->kind, LUPE_MAP_VDSO);
		ASSERT_STREQ(g->path, "[vdso]");
		ASSERT_EQ(g->start, vdso);
	}

	/* libc's own getpid (not a PLT stub): the mapping's inode is the file dladdr names. */
	libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
	ASSERT(libc);
	sym = dlsym(libc, "getpid");
	ASSERT(sym);
	ASSERT(dladdr(sym, &info) && info.dli_fname);
	ASSERT_OK(stat(info.dli_fname, &st));
	dlclose(libc);
	g = find_addr(&m, (uintptr_t)sym);
	ASSERT(g);
	ASSERT_EQ(g->kind, LUPE_MAP_FILE);
	ASSERT_EQ(g->inode, st.st_ino);
	ASSERT_EQ(g->dev_major, major(st.st_dev));
	lupe_procmaps_release(&m);
}

static void quiet(enum lupe_log_level level, const char *msg, void *ctx)
{
	(*(int *)ctx)++;
}

TEST(read_missing_process_and_bad_arguments)
{
	struct lupe_procmaps m = { 0 };
	char root[] = "/tmp/lupe-procmaps-XXXXXX", dir[PATH_MAX], longroot[PATH_MAX + 16];
	const char *one = "1000-2000 r-xp 0 08:01 5 /a\n";
	int pid_max = 0, warned = 0, err;
	FILE *f;

	f = fopen("/proc/sys/kernel/pid_max", "re");
	ASSERT(f);
	ASSERT_EQ(fscanf(f, "%d", &pid_max), 1);
	fclose(f);
	/* PIDs are below pid_max, so this one cannot exist. A failed read empties out. */
	ASSERT_OK(lupe_procmaps_parse(one, strlen(one), &m));
	ASSERT_EQ(lupe_procmaps_read(NULL, pid_max, &m), -ESRCH);
	ASSERT_EQ(m.count, 0);
	ASSERT_EQ(lupe_procmaps_read("/nonexistent-lupe-root", 1, &m), -ESRCH);
	ASSERT_EQ(lupe_procmaps_read(NULL, 0, &m), -EINVAL);
	ASSERT_EQ(lupe_procmaps_read(NULL, -1, &m), -EINVAL);
	ASSERT_EQ(lupe_procmaps_read(NULL, 1, NULL), -EINVAL);
	memset(longroot, 'a', sizeof(longroot) - 1);
	longroot[0] = '/';
	longroot[sizeof(longroot) - 1] = '\0';
	ASSERT_EQ(lupe_procmaps_read(longroot, 1, &m), -ENAMETOOLONG);

	/* Other errors pass through, with a warning: here maps is a directory. */
	ASSERT(mkdtemp(root));
	snprintf(dir, sizeof(dir), "%s/7", root);
	ASSERT_OK(mkdir(dir, 0755));
	ASSERT_EQ(lupe_procmaps_read(root, 8, &m), -ESRCH);
	snprintf(dir, sizeof(dir), "%s/7/maps", root);
	ASSERT_OK(mkdir(dir, 0755));
	lupe_set_print(quiet, &warned);
	err = lupe_procmaps_read(root, 7, &m);
	lupe_set_print(NULL, NULL);
	rm_tree(root);
	ASSERT_EQ(err, -EISDIR);
	ASSERT_EQ(warned, 1);
	lupe_procmaps_release(&m);
}

TEST(read_other_users_process_is_eperm)
{
	int status;
	pid_t c = fork();

	ASSERT(c >= 0);
	if (c == 0) {
		struct lupe_procmaps m = { 0 };
		int r;

		if (geteuid() == 0 &&
		    (setgroups(0, NULL) || setresgid(65534, 65534, 65534) ||
		     setresuid(65534, 65534, 65534)))
			_exit(200);
		r = lupe_procmaps_read(NULL, 1, &m);
		lupe_procmaps_release(&m);
		_exit(r == -EPERM ? 0 : r == 0 ? 201 : 202);
	}
	ASSERT_EQ(waitpid(c, &status, 0), c);
	ASSERT(WIFEXITED(status));
	if (WEXITSTATUS(status) == 200)
		SKIP("cannot drop privileges to uid 65534");
	if (WEXITSTATUS(status) == 201 && geteuid() != 0)
		SKIP("pid 1 is readable without privileges here");
	ASSERT_EQ(WEXITSTATUS(status), 0);
}

TEST(read_zombie_and_kernel_thread_are_empty)
{
	struct lupe_procmaps m = { 0 };
	char comm[64] = "";
	siginfo_t si;
	FILE *f;
	int r;
	pid_t c = fork();

	ASSERT(c >= 0);
	if (c == 0)
		_exit(0);
	/* WNOWAIT leaves the child a zombie: /proc/PID exists, its mm is gone. */
	memset(&si, 0, sizeof(si));
	ASSERT_OK(waitid(P_PID, (id_t)c, &si, WEXITED | WNOWAIT));
	r = lupe_procmaps_read(NULL, c, &m);
	waitpid(c, NULL, 0);
	ASSERT_OK(r);
	ASSERT_EQ(m.count, 0);

	f = fopen("/proc/2/comm", "re");
	if (!f || !fgets(comm, sizeof(comm), f) || strcmp(comm, "kthreadd\n")) {
		if (f)
			fclose(f);
		lupe_procmaps_release(&m);
		SKIP("pid 2 is not kthreadd");
	}
	fclose(f);
	ASSERT_OK(lupe_procmaps_read(NULL, 2, &m));
	ASSERT_EQ(m.count, 0);
	ASSERT_EQ(m.malformed, 0);
	lupe_procmaps_release(&m);
}

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64*: deterministic, so a failure replays. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

/* 10,000 mutations of the real text, each parsed from a buffer of exactly its size. The
 * parser must not crash (ASan/UBSan build) and its output must stay coherent. */
TEST(parse_survives_random_mutations)
{
	static const char alphabet[] = "0123456789abcdefABCDEF-: \n\tpsrwx()[]/\0z";
	struct lupe_procmaps m = { 0 };
	char path[PATH_MAX];
	size_t len, iter, cap;
	char *text = slurp(fixture(path, sizeof(path), "proc/31337/maps"), &len);
	char *work;

	if (!text)
		FAIL("cannot read %s", path);
	cap = len * 2 + 64;
	work = malloc(cap);
	ASSERT(work);
	rng_state = 0x6c757065; /* "lupe" */
	for (iter = 0; iter < 10000; iter++) {
		size_t n = len, k, nm = 1 + rnd() % 8, lines = 1, i;
		char *t;

		memcpy(work, text, len);
		for (k = 0; k < nm && n; k++) {
			size_t at = rnd() % n, span = 1 + rnd() % 40;

			switch (rnd() % 7) {
			case 0: /* random byte */
				work[at] = (char)rnd();
				break;
			case 1: /* byte a parser cares about */
				work[at] = alphabet[rnd() % (sizeof(alphabet) - 1)];
				break;
			case 2: /* delete a span */
				span = span > n - at ? n - at : span;
				memmove(work + at, work + at + span, n - at - span);
				n -= span;
				break;
			case 3: /* a run of hex digits, to overflow a field */
				if (n + span <= cap) {
					memmove(work + at + span, work + at, n - at);
					memset(work + at, "f09"[rnd() % 3], span);
					n += span;
				}
				break;
			case 4: /* duplicate a span */
				span = span > n - at ? n - at : span;
				if (n + span <= cap) {
					memmove(work + at + span, work + at, n - at);
					n += span;
				}
				break;
			case 5: /* cut the text */
				n = at;
				break;
			default: /* strip a blank run */
				if (work[at] == ' ')
					while (at < n && work[at] == ' ')
						memmove(work + at, work + at + 1, --n - at);
				break;
			}
		}
		t = malloc(n ? n : 1);
		ASSERT(t);
		memcpy(t, work, n);
		for (i = 0; i < n; i++)
			lines += t[i] == '\n';
		if (lupe_procmaps_parse(t, n, &m)) {
			free(t);
			FAIL("iteration %zu: parse failed", iter);
		}
		free(t);
		if (m.count + m.malformed + m.truncated > lines || m.truncated > 1)
			FAIL("iteration %zu: %zu kept + %zu malformed + %zu truncated > %zu lines",
			     iter, m.count, m.malformed, m.truncated, lines);
		for (i = 0; i < m.count; i++) {
			const struct lupe_procmap *g = &m.maps[i];

			if (g->start >= g->end || !(g->prot & LUPE_MAP_X) || !g->path ||
			    strlen(g->path) >= n || strchr(g->path, '\n') ||
			    (unsigned)g->kind > LUPE_MAP_SPECIAL)
				FAIL("iteration %zu: incoherent mapping %zu", iter, i);
		}
	}
	free(work);
	free(text);
	lupe_procmaps_release(&m);
}
