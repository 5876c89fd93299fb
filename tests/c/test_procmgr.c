/* procmgr against fixture /proc trees: maps text (tests/fixtures/procmgr) naming real files
 * with their real device, inode and executable-segment offsets, so that the manager opens,
 * hashes and parses them for real. Oracles: readelf -lW for segments and biases,
 * lupe_file_id_from_fd for file IDs, the fixtures' hand counts, and a model of the BPF maps
 * replayed from what the recording handler was told. No root needed. */
#include "procmgr.h"
#include "lupe_test.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

/* Above any pid_max (at most 2^22): never a live process, so kill(pid, 0) says ESRCH. */
#define FPID(n) ((pid_t)(5000000 + (n)))
#define MAX_XSEGS 8
#define MAX_WANT 512

#define CHECK(expr)                                                         \
	do {                                                                \
		const char *_msg = (expr);                                  \
		if (_msg)                                                   \
			FAIL("%s", _msg);                                   \
	} while (0)

struct xseg {
	uint64_t vaddr, offset, filesz, memsz;
};

/* A real file the fixtures name, described by the oracles. */
struct file {
	const char *name;
	bool optional;
	bool ok;                 /* exists (or, for "missing", is meant not to) */
	char path[PATH_MAX];
	dev_t dev;
	ino_t ino;
	struct xseg xs[MAX_XSEGS]; /* executable PT_LOADs per readelf, in order */
	size_t nx;
	struct lupe_file_id id;  /* lupe_file_id_from_fd; valid when nx > 0 */
};

enum { F_LS, F_LIBC, F_LD, F_LIBZ, F_NONPIE, F_TEXT, F_TRUNC, F_MISSING, F_LSCOPY, NFILES };

static struct {
	bool ready;
	const char *skip;
	char dir[64];
	struct file f[NFILES];
} fx = {
	.f = {
		[F_LS] = { .name = "ls" },
		[F_LIBC] = { .name = "libc" },
		[F_LD] = { .name = "ld" },
		[F_LIBZ] = { .name = "libz", .optional = true },
		[F_NONPIE] = { .name = "nonpie", .optional = true },
		[F_TEXT] = { .name = "text" },
		[F_TRUNC] = { .name = "trunc" },
		[F_MISSING] = { .name = "missing" },
		[F_LSCOPY] = { .name = "lscopy" },
	},
};

static char errbuf[1024];

__attribute__((format(printf, 1, 2))) static const char *err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
	va_end(ap);
	return errbuf;
}

static uint64_t page_size(void)
{
	return (uint64_t)sysconf(_SC_PAGESIZE);
}

/* ---- files and their oracles ---------------------------------------------------- */

/* The executable PT_LOADs of path as readelf prints them. Returns how many (0: none, or
 * not an ELF file readelf understands). */
static size_t readelf_xsegs(const char *path, struct xseg *xs, size_t max)
{
	char cmd[PATH_MAX + 64], line[512];
	size_t n = 0;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "readelf -lW '%s' 2>/dev/null", path);
	p = popen(cmd, "r");
	if (!p)
		return 0;
	while (fgets(line, sizeof(line), p)) {
		uint64_t off, va, pa, fsz, msz;
		char *s = line, *align;
		int used = 0;

		while (*s == ' ')
			s++;
		if (strncmp(s, "LOAD ", 5))
			continue;
		if (sscanf(s + 5, "%" SCNx64 " %" SCNx64 " %" SCNx64 " %" SCNx64 " %" SCNx64 " %n",
			   &off, &va, &pa, &fsz, &msz, &used) != 5 || !used)
			continue;
		/* The flags ("R E", "RW ") sit between MemSiz and the 0x of Align. */
		align = strstr(s + 5 + used, "0x");
		if (align)
			*align = '\0';
		if (strchr(s + 5 + used, 'E') && n < max)
			xs[n++] = (struct xseg){ va, off, fsz, msz };
	}
	pclose(p);
	return n;
}

static int copy_file(const char *src, const char *dst, size_t max)
{
	char buf[65536];
	int in, out, rc = -1;
	size_t done = 0;
	ssize_t n;

	in = open(src, O_RDONLY | O_CLOEXEC);
	out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	if (in < 0 || out < 0)
		goto out;
	while (done < max && (n = read(in, buf, sizeof(buf) < max - done ? sizeof(buf) : max - done)) > 0) {
		if (write(out, buf, (size_t)n) != n)
			goto out;
		done += (size_t)n;
	}
	rc = 0;
out:
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	return rc;
}

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	size_t len = strlen(text);
	int rc;

	if (fd < 0)
		return -1;
	rc = write(fd, text, len) == (ssize_t)len ? 0 : -1;
	close(fd);
	return rc;
}

static int append_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	size_t len = strlen(text);
	int rc;

	if (fd < 0)
		return -1;
	rc = write(fd, text, len) == (ssize_t)len ? 0 : -1;
	close(fd);
	return rc;
}

/* Fills the oracle's view of f from the file at f->path. */
static void describe_file(struct file *f)
{
	struct stat st;
	int fd;

	f->ok = stat(f->path, &st) == 0;
	if (!f->ok)
		return;
	f->dev = st.st_dev;
	f->ino = st.st_ino;
	f->nx = readelf_xsegs(f->path, f->xs, MAX_XSEGS);
	if (!f->nx)
		return;
	fd = open(f->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || lupe_file_id_from_fd(fd, &f->id))
		f->nx = 0;
	if (fd >= 0)
		close(fd);
}

/* The path of the first mapping of this process whose path contains needle: libc, ld.so
 * and libz (libelf's dependency) as the dynamic loader found them. */
static bool self_mapped_path(const char *needle, char *out, size_t outlen)
{
	char line[PATH_MAX + 256];
	bool found = false;
	FILE *f = fopen("/proc/self/maps", "r");

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		char *path = strchr(line, '/');

		if (path && strstr(path, needle)) {
			path[strcspn(path, "\n")] = '\0';
			snprintf(out, outlen, "%s", path);
			found = true;
		}
	}
	fclose(f);
	return found;
}

static void remove_fixture_dir(void)
{
	char cmd[128];

	if (fx.dir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx.dir);
		if (system(cmd) != 0)
			printf("    could not remove %s\n", fx.dir);
	}
}

static const char *fixtures_dir(void)
{
	const char *d = getenv("LUPE_FIXTURES");

	return d ? d : "tests/fixtures";
}

/* Builds the temp dir and the files once; returns NULL, or why the tests must skip. */
static const char *fx_init(void)
{
	static const char text[] = "not an ELF file, only text mapped executable\n";
	char cmd[PATH_MAX * 2 + 128];
	size_t i;

	if (fx.ready)
		return fx.skip;
	fx.ready = true;
	snprintf(fx.dir, sizeof(fx.dir), "/tmp/lupe-procmgr-XXXXXX");
	if (!mkdtemp(fx.dir)) {
		fx.dir[0] = '\0';
		return fx.skip = "mkdtemp failed";
	}
	atexit(remove_fixture_dir);

	snprintf(fx.f[F_LS].path, PATH_MAX, "/usr/bin/ls");
	if (!self_mapped_path("/libc.so", fx.f[F_LIBC].path, PATH_MAX) ||
	    !self_mapped_path("/ld-linux", fx.f[F_LD].path, PATH_MAX))
		return fx.skip = "libc or ld.so not found in /proc/self/maps";
	if (!self_mapped_path("/libz.so", fx.f[F_LIBZ].path, PATH_MAX))
		fx.f[F_LIBZ].path[0] = '\0';
	snprintf(fx.f[F_NONPIE].path, PATH_MAX, "%s/nonpie", fx.dir);
	snprintf(cmd, sizeof(cmd), "cc -no-pie -O1 -o '%s' '%s/elf/hello.c' >/dev/null 2>&1",
		 fx.f[F_NONPIE].path, fixtures_dir());
	if (system(cmd) != 0)
		printf("    note: cc -no-pie failed: no non-PIE executable in the fixtures\n");
	snprintf(fx.f[F_TEXT].path, PATH_MAX, "%s/notes.txt", fx.dir);
	if (write_text(fx.f[F_TEXT].path, text))
		return fx.skip = "cannot write the text file";
	snprintf(fx.f[F_TRUNC].path, PATH_MAX, "%s/truncated.so", fx.dir);
	if (copy_file(fx.f[F_LS].path, fx.f[F_TRUNC].path, 100))
		return fx.skip = "cannot write the truncated ELF";
	snprintf(fx.f[F_LSCOPY].path, PATH_MAX, "%s/ls copy", fx.dir);
	if (copy_file(fx.f[F_LS].path, fx.f[F_LSCOPY].path, SIZE_MAX) ||
	    append_text(fx.f[F_LSCOPY].path, "lupe: a trailer, so the copy has its own file ID\n"))
		return fx.skip = "cannot copy ls";

	for (i = 0; i < NFILES; i++)
		if (i != F_MISSING && fx.f[i].path[0])
			describe_file(&fx.f[i]);
	/* Named by the maps, absent from the disk. */
	snprintf(fx.f[F_MISSING].path, PATH_MAX, "%s/no-such-file.so", fx.dir);
	fx.f[F_MISSING].ok = true;
	fx.f[F_MISSING].dev = makedev(0xfe, 0x7f);
	fx.f[F_MISSING].ino = 4242;

	for (i = 0; i < NFILES; i++) {
		bool elf = i <= F_NONPIE || i == F_LSCOPY;

		if (!fx.f[i].optional && (!fx.f[i].ok || (elf && !fx.f[i].nx)))
			return fx.skip = "a fixture file is missing or readelf failed";
	}
	if (fx.f[F_TEXT].nx || fx.f[F_TRUNC].nx)
		return fx.skip = "readelf found segments in the text or truncated file";
	return NULL;
}

#define FX_INIT()                                                           \
	do {                                                                \
		const char *_why = fx_init();                               \
		if (_why)                                                   \
			SKIP("%s", _why);                                   \
	} while (0)

static uint64_t host_of(int fi)
{
	return lupe_file_id_host(fx.f[fi].id);
}

/* ---- templates ------------------------------------------------------------------ */

static char *slurp(const char *path)
{
	char *buf = NULL;
	struct stat st;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) == 0 && (buf = malloc((size_t)st.st_size + 1))) {
		n = read(fd, buf, (size_t)st.st_size);
		if (n != st.st_size) {
			free(buf);
			buf = NULL;
		} else {
			buf[n] = '\0';
		}
	}
	close(fd);
	return buf;
}

static struct file *file_named(const char *name, size_t len)
{
	size_t i;

	for (i = 0; i < NFILES; i++)
		if (strlen(fx.f[i].name) == len && !strncmp(fx.f[i].name, name, len))
			return &fx.f[i];
	return NULL;
}

/* Expands one token ("x:libc+10000") into out; false when its file is unavailable. */
static bool expand_token(const char *tok, size_t len, char *out, size_t outlen)
{
	const char *colon = memchr(tok, ':', len), *name, *plus;
	uint64_t page = page_size(), add = 0;
	struct file *f;
	size_t klen;

	if (!colon)
		return false;
	klen = (size_t)(colon - tok);
	name = colon + 1;
	plus = memchr(name, '+', len - klen - 1);
	if (plus)
		add = strtoull(plus + 1, NULL, 16);
	f = file_named(name, plus ? (size_t)(plus - name) : len - klen - 1);
	if (!f || !f->ok || !f->path[0])
		return false;
	if (klen == 1 && tok[0] == 'f') {
		snprintf(out, outlen, "%02x:%02x %-10ju %s", major(f->dev), minor(f->dev),
			 (uintmax_t)f->ino, f->path);
		return true;
	}
	if (klen == 2 && !strncmp(tok, "di", 2)) {
		snprintf(out, outlen, "%02x:%02x %ju", major(f->dev), minor(f->dev), (uintmax_t)f->ino);
		return true;
	}
	if (!f->nx)
		return false;
	if (klen == 1 && tok[0] == 'x')
		snprintf(out, outlen, "%08" PRIx64, (f->xs[0].offset & ~(page - 1)) + add);
	else if (klen == 3 && !strncmp(tok, "xva", 3))
		snprintf(out, outlen, "%" PRIx64, f->xs[0].vaddr & ~(page - 1));
	else if (klen == 4 && !strncmp(tok, "xend", 4))
		snprintf(out, outlen, "%" PRIx64,
			 (f->xs[0].vaddr + f->xs[0].memsz + page - 1) & ~(page - 1));
	else
		return false;
	return true;
}

/* The template tests/fixtures/procmgr/NAME with its tokens filled in (README.md there),
 * comment lines and lines naming unavailable files dropped. malloc'd; NULL on failure. */
static char *expand(const char *name)
{
	char path[PATH_MAX], *tmpl, *out, *line, *next;
	size_t cap, len = 0;

	snprintf(path, sizeof(path), "%s/procmgr/%s", fixtures_dir(), name);
	tmpl = slurp(path);
	if (!tmpl)
		return NULL;
	cap = strlen(tmpl) * 4 + 4 * PATH_MAX;
	out = malloc(cap);
	if (!out)
		goto out;
	out[0] = '\0';
	for (line = tmpl; *line; line = next) {
		char buf[2 * PATH_MAX], tok[PATH_MAX + 64];
		size_t blen = 0;
		bool keep = true;
		const char *s;

		next = strchr(line, '\n');
		next = next ? next + 1 : line + strlen(line);
		if (line[0] == '#')
			continue;
		for (s = line; s < next && keep; s++) {
			const char *close;

			if (*s != '{') {
				if (blen + 1 < sizeof(buf))
					buf[blen++] = *s;
				continue;
			}
			close = memchr(s, '}', (size_t)(next - s));
			keep = close && expand_token(s + 1, (size_t)(close - s - 1), tok, sizeof(tok));
			if (keep) {
				blen += (size_t)snprintf(buf + blen, sizeof(buf) - blen, "%s", tok);
				s = close;
			}
		}
		if (!keep || len + blen + 1 >= cap)
			continue;
		memcpy(out + len, buf, blen);
		len += blen;
		out[len] = '\0';
	}
out:
	free(tmpl);
	return out;
}

/* "# expect KEY=N" in the template; -1 when absent. */
static long expect_of(const char *name, const char *key)
{
	char path[PATH_MAX], pat[64], *tmpl, *hit;
	long v = -1;

	snprintf(path, sizeof(path), "%s/procmgr/%s", fixtures_dir(), name);
	tmpl = slurp(path);
	if (!tmpl)
		return -1;
	snprintf(pat, sizeof(pat), "# expect %s=", key);
	hit = strstr(tmpl, pat);
	if (hit)
		v = strtol(hit + strlen(pat), NULL, 10);
	free(tmpl);
	return v;
}

/* ---- the expected state, computed from maps text and readelf ------------------------ */

struct want {
	uint64_t start, end, offset, bias;
	int file;                /* index into fx.f */
	char path[PATH_MAX];
	bool deleted;
};

/* The file mappings the manager must keep for this maps text, in order, and how many
 * anonymous executable regions it must count. Lines the oracle's sscanf rejects, non-X
 * lines, [special] lines and files that are not usable ELF files are not expected. */
static size_t oracle(const char *text, struct want *w, size_t max, size_t *anon)
{
	const char *line, *next;
	uint64_t page = page_size();
	size_t n = 0;

	*anon = 0;
	for (line = text; *line; line = next) {
		uint64_t start, end, off, ino;
		unsigned maj, min;
		char perms[8], path[PATH_MAX], buf[PATH_MAX + 128];
		int used = 0;
		size_t i, plen;
		const char *p;

		next = strchr(line, '\n');
		next = next ? next + 1 : line + strlen(line);
		/* One line at a time: sscanf would read on past a newline. */
		snprintf(buf, sizeof(buf), "%.*s", (int)(next - line), line);
		if (sscanf(buf, "%" SCNx64 "-%" SCNx64 " %4s %" SCNx64 " %x:%x %" SCNu64 "%n",
			   &start, &end, perms, &off, &maj, &min, &ino, &used) != 7 || !used ||
		    start >= end || perms[2] != 'x')
			continue;
		for (p = buf + used; *p == ' '; p++)
			;
		plen = strlen(p);
		while (plen && (p[plen - 1] == '\n' || p[plen - 1] == ' '))
			plen--;
		snprintf(path, sizeof(path), "%.*s", (int)plen, p);
		if (n < max)
			w[n].deleted = false;
		if (plen > 10 && !strcmp(path + plen - 10, " (deleted)")) {
			path[plen - 10] = '\0';
			if (n < max)
				w[n].deleted = true;
		}
		if (!path[0] || !strncmp(path, "/memfd:", 7) || !strcmp(path, "/dev/zero")) {
			(*anon)++;
			continue;
		}
		if (path[0] == '[' || n >= max)
			continue;
		for (i = 0; i < NFILES; i++) {
			const struct file *f = &fx.f[i];
			size_t s;

			if (!f->ok || !f->nx || f->dev != makedev(maj, min) || f->ino != ino)
				continue;
			for (s = 0; s < f->nx; s++) {
				const struct xseg *x = &f->xs[s];

				if (x->filesz && off >= (x->offset & ~(page - 1)) &&
				    off < x->offset + x->filesz)
					break;
			}
			if (s == f->nx)
				break;
			w[n].start = start;
			w[n].end = end;
			w[n].offset = off;
			/* bias = start - (seg.vaddr - (seg.offset - file_offset)) */
			w[n].bias = start - (f->xs[s].vaddr - (f->xs[s].offset - off));
			w[n].file = (int)i;
			snprintf(w[n].path, sizeof(w[n].path), "%s", path);
			n++;
			break;
		}
	}
	return n;
}

static size_t distinct_files(const struct want *w, size_t n)
{
	bool seen[NFILES] = { false };
	size_t i, d = 0;

	for (i = 0; i < n; i++)
		if (!seen[w[i].file]) {
			seen[w[i].file] = true;
			d++;
		}
	return d;
}

static int mappings_of_file(const struct want *w, size_t n, int file)
{
	size_t i;
	int c = 0;

	for (i = 0; i < n; i++)
		c += w[i].file == file;
	return c;
}

/* ---- fixture /proc trees -------------------------------------------------------- */

static const char *mkroot(const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", fx.dir, name);
	if (mkdir(buf, 0755) && errno != EEXIST)
		return NULL;
	return buf;
}

/* Writes ROOT/PID/maps and makes ROOT/PID/root a symlink to "/". */
static int write_maps(const char *root, pid_t pid, const char *text)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/%d", root, pid);
	if (mkdir(path, 0755) && errno != EEXIST)
		return -1;
	snprintf(path, sizeof(path), "%s/%d/root", root, pid);
	if (symlink("/", path) && errno != EEXIST)
		return -1;
	snprintf(path, sizeof(path), "%s/%d/maps", root, pid);
	return write_text(path, text);
}

static int write_template(const char *root, pid_t pid, const char *name)
{
	char *text = expand(name);
	int rc;

	if (!text)
		return -1;
	rc = write_maps(root, pid, text);
	free(text);
	return rc;
}

/* The oracle for a template. */
static size_t want_template(const char *name, struct want *w, size_t max, size_t *anon)
{
	char *text = expand(name);
	size_t n;

	if (!text)
		return 0;
	n = oracle(text, w, max, anon);
	free(text);
	return n;
}

static struct lupe_procmgr *pm_new(const char *root, struct lupe_stackdelta_provider *dp,
				   struct lupe_symbol_reporter *rep, struct lupe_ebpf_handler *h)
{
	LUPE_OPTS(lupe_procmgr_opts, o, .proc_root = root, .deltas = dp, .reporter = rep,
		  .ebpf = h);

	return lupe_procmgr__new(&o);
}

static struct lupe_procmgr_stats stats_of(struct lupe_procmgr *pm)
{
	struct lupe_procmgr_stats st;

	lupe_procmgr__stats(pm, &st);
	return st;
}

/* ---- checks --------------------------------------------------------------------- */

static bool id_eq(struct lupe_file_id a, struct lupe_file_id b)
{
	return a.hi == b.hi && a.lo == b.lo;
}

/* What lupe_procmgr__mappings reports for pid equals the oracle, field by field. */
static const char *check_views(struct lupe_procmgr *pm, pid_t pid, const struct want *w, size_t n)
{
	struct lupe_mapping_view *v = NULL;
	const char *msg = NULL;
	ssize_t got = lupe_procmgr__mappings(pm, pid, &v);
	size_t i;

	if (got != (ssize_t)n) {
		msg = err("pid %d: %zd mappings, want %zu", pid, got, n);
		goto out;
	}
	for (i = 0; i < n && !msg; i++) {
		const struct lupe_mapping *m = &v[i].m;
		const struct file *f = &fx.f[w[i].file];

		if (m->vaddr != w[i].start || m->length != w[i].end - w[i].start)
			msg = err("pid %d #%zu: range %" PRIx64 "+%" PRIx64 ", want %" PRIx64 "-%" PRIx64,
				  pid, i, m->vaddr, m->length, w[i].start, w[i].end);
		else if (m->bias != w[i].bias)
			msg = err("pid %d #%zu (%s): bias %" PRIx64 ", readelf says %" PRIx64, pid, i,
				  w[i].path, m->bias, w[i].bias);
		else if (m->file_offset != w[i].offset)
			msg = err("pid %d #%zu: offset %" PRIx64 ", want %" PRIx64, pid, i,
				  m->file_offset, w[i].offset);
		else if (m->device != (uint64_t)f->dev || m->inode != (uint64_t)f->ino)
			msg = err("pid %d #%zu: device/inode %" PRIx64 "/%" PRIu64 ", stat says %jx/%ju",
				  pid, i, m->device, m->inode, (uintmax_t)f->dev, (uintmax_t)f->ino);
		else if (!id_eq(m->file_id, f->id))
			msg = err("pid %d #%zu (%s): file ID differs from lupe_file_id_from_fd", pid, i,
				  w[i].path);
		else if (strcmp(v[i].path, w[i].path))
			msg = err("pid %d #%zu: path '%s', want '%s'", pid, i, v[i].path, w[i].path);
		else if (v[i].deleted != w[i].deleted)
			msg = err("pid %d #%zu: deleted %d, want %d", pid, i, v[i].deleted, w[i].deleted);
	}
out:
	free(v);
	return msg;
}

static const struct lupe_ebpf_record *records(struct lupe_procmgr *pm, size_t *n)
{
	return lupe_ebpf_recorder_records(lupe_procmgr__ebpf(pm), n);
}

static void clear_records(struct lupe_procmgr *pm)
{
	lupe_ebpf_recorder_clear(lupe_procmgr__ebpf(pm));
}

static size_t count_records(struct lupe_procmgr *pm, enum lupe_ebpf_call call)
{
	const struct lupe_ebpf_record *r;
	size_t i, n, c = 0;

	r = records(pm, &n);
	for (i = 0; i < n; i++)
		c += r[i].call == call;
	return c;
}

/* A first synchronization: new_pid, then one add_mapping per expected mapping, in order. */
static const char *check_first_records(struct lupe_procmgr *pm, pid_t pid, const struct want *w,
				       size_t n, bool with_deltas)
{
	const struct lupe_ebpf_record *r;
	size_t i, j = 0, nr;

	r = records(pm, &nr);
	if (nr < 1 || r[0].call != LUPE_EBPF_NEW_PID || r[0].pid != pid)
		return err("pid %d: the first record is not new_pid", pid);
	for (i = 1; i < nr; i++) {
		if (r[i].call == LUPE_EBPF_LOAD_DELTAS && with_deltas)
			continue;
		if (r[i].call != LUPE_EBPF_ADD_MAPPING || r[i].pid != pid)
			return err("pid %d: record %zu is call %d, want add_mapping", pid, i, r[i].call);
		if (j == n)
			return err("pid %d: more add_mapping than the %zu mappings", pid, n);
		if (r[i].vaddr != w[j].start || r[i].length != w[j].end - w[j].start ||
		    r[i].bias != w[j].bias || r[i].host_file_id != host_of(w[j].file))
			return err("pid %d: add_mapping %zu is %" PRIx64 "+%" PRIx64 " bias %" PRIx64
				   " host %016" PRIx64 ", want %" PRIx64 "+%" PRIx64 " bias %" PRIx64
				   " host %016" PRIx64 " (%s)", pid, j, r[i].vaddr, r[i].length,
				   r[i].bias, r[i].host_file_id, w[j].start, w[j].end - w[j].start,
				   w[j].bias, host_of(w[j].file), w[j].path);
		j++;
	}
	if (j != n)
		return err("pid %d: %zu add_mapping, want %zu", pid, j, n);
	return NULL;
}

/* A model of the BPF maps: what a handler writing them would hold after the records so
 * far. An add overwrites whatever overlaps it (LPM prefixes), a delete removes whatever
 * overlaps its range, so the order of the calls matters as it does in the kernel. */
struct bpf_entry {
	pid_t pid;
	uint64_t vaddr, len, host;
};

struct bpf_model {
	struct bpf_entry e[2048];
	size_t n;
	pid_t pids[64];
	size_t npids;
};

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

static size_t model_drop(struct bpf_model *m, pid_t pid, uint64_t vaddr, uint64_t len)
{
	size_t i, dropped = 0;

	for (i = 0; i < m->n;) {
		if (m->e[i].pid == pid && overlaps(m->e[i].vaddr, m->e[i].len, vaddr, len)) {
			m->e[i] = m->e[--m->n];
			dropped++;
		} else {
			i++;
		}
	}
	return dropped;
}

static ssize_t model_pid(const struct bpf_model *m, pid_t pid)
{
	size_t i;

	for (i = 0; i < m->npids; i++)
		if (m->pids[i] == pid)
			return (ssize_t)i;
	return -1;
}

/* Replays and clears the recorder. */
static const char *model_apply(struct bpf_model *m, struct lupe_procmgr *pm)
{
	const struct lupe_ebpf_record *r;
	const char *msg = NULL;
	size_t i, n;

	r = records(pm, &n);
	for (i = 0; i < n && !msg; i++) {
		ssize_t pi = model_pid(m, r[i].pid);

		switch (r[i].call) {
		case LUPE_EBPF_NEW_PID:
			if (pi >= 0)
				msg = err("new_pid %d twice", r[i].pid);
			else if (m->npids < 64)
				m->pids[m->npids++] = r[i].pid;
			break;
		case LUPE_EBPF_DELETE_PID:
			if (pi < 0)
				msg = err("delete_pid %d unknown", r[i].pid);
			else if (model_drop(m, r[i].pid, 0, UINT64_MAX))
				msg = err("delete_pid %d while mappings remain", r[i].pid);
			else
				m->pids[pi] = m->pids[--m->npids];
			break;
		case LUPE_EBPF_ADD_MAPPING:
			if (pi < 0) {
				msg = err("add_mapping for pid %d before new_pid", r[i].pid);
				break;
			}
			model_drop(m, r[i].pid, r[i].vaddr, r[i].length);
			if (m->n < 2048)
				m->e[m->n++] = (struct bpf_entry){ r[i].pid, r[i].vaddr,
								   r[i].length, r[i].host_file_id };
			break;
		case LUPE_EBPF_DELETE_MAPPING:
			if (!model_drop(m, r[i].pid, r[i].vaddr, r[i].length))
				msg = err("delete_mapping %" PRIx64 " of pid %d: nothing there",
					  r[i].vaddr, r[i].pid);
			break;
		default:
			break;
		}
	}
	clear_records(pm);
	return msg;
}

/* The model holds exactly the expected mappings for pid. */
static const char *model_check(const struct bpf_model *m, pid_t pid, const struct want *w, size_t n)
{
	size_t i, j, have = 0;

	for (i = 0; i < m->n; i++)
		have += m->e[i].pid == pid;
	for (j = 0; j < n; j++) {
		for (i = 0; i < m->n; i++)
			if (m->e[i].pid == pid && m->e[i].vaddr == w[j].start &&
			    m->e[i].len == w[j].end - w[j].start && m->e[i].host == host_of(w[j].file))
				break;
		if (i == m->n)
			return err("BPF would lack pid %d's mapping %" PRIx64 "-%" PRIx64 " (%s)", pid,
				   w[j].start, w[j].end, w[j].path);
	}
	if (have != n)
		return err("BPF would hold %zu mappings for pid %d, want %zu", have, pid, n);
	return NULL;
}

/* ---- fakes ------------------------------------------------------------------------ */

struct delta_log {
	int calls, frees;
	uint64_t hosts[64];
	int nhosts;
	const char *enoent_for, *eio_for;  /* path substrings answered with those errors */
};

struct fake_provider {
	struct lupe_stackdelta_provider p;
	struct delta_log *log;
};

#define FAKE_DELTAS 3

static int fake_get(struct lupe_stackdelta_provider *p, const struct lupe_exe_info *info,
		    struct lupe_interval_data *out)
{
	struct delta_log *log = ((struct fake_provider *)p)->log;
	size_t i;

	log->calls++;
	if (log->nhosts < 64)
		log->hosts[log->nhosts++] = info->host_file_id;
	if (log->enoent_for && strstr(info->path, log->enoent_for))
		return -ENOENT;
	if (log->eio_for && strstr(info->path, log->eio_for))
		return -EIO;
	out->deltas = calloc(FAKE_DELTAS, sizeof(*out->deltas));
	if (!out->deltas)
		return -ENOMEM;
	for (i = 0; i < FAKE_DELTAS; i++) {
		out->deltas[i].address = 0x1000 * (i + 1);
		out->deltas[i].cfa_param = 8 * (int32_t)(i + 1);
	}
	out->count = FAKE_DELTAS;
	return 0;
}

static void fake_provider_free(struct lupe_stackdelta_provider *p)
{
	((struct fake_provider *)p)->log->frees++;
	free(p);
}

static const struct lupe_stackdelta_provider_ops fake_provider_ops = {
	.get_interval_data = fake_get,
	.free = fake_provider_free,
};

static struct lupe_stackdelta_provider *fake_provider_new(struct delta_log *log)
{
	struct fake_provider *fp = calloc(1, sizeof(*fp));

	if (!fp)
		return NULL;
	fp->p.ops = &fake_provider_ops;
	fp->log = log;
	return &fp->p;
}

static bool provider_saw(const struct delta_log *log, uint64_t host)
{
	int i;

	for (i = 0; i < log->nhosts; i++)
		if (log->hosts[i] == host)
			return true;
	return false;
}

struct report_log {
	int loaded, unloaded, bad_info, frees;
};

struct fake_reporter {
	struct lupe_symbol_reporter r;
	struct report_log *log;
};

/* Checks that what the reporter is lent describes the file: its fd is that file. */
static void fake_loaded(struct lupe_symbol_reporter *r, const struct lupe_exe_info *info)
{
	struct report_log *log = ((struct fake_reporter *)r)->log;
	struct stat st;
	size_t i;
	bool good = false;

	log->loaded++;
	if (info->fd >= 0 && fstat(info->fd, &st) == 0 && info->elf && !info->vdso)
		for (i = 0; i < NFILES; i++)
			if (fx.f[i].ok && fx.f[i].ino == st.st_ino && fx.f[i].dev == st.st_dev &&
			    !strcmp(fx.f[i].path, info->path) && id_eq(fx.f[i].id, info->file_id) &&
			    info->host_file_id == host_of((int)i) && info->elf->nxsegs == fx.f[i].nx)
				good = true;
	log->bad_info += !good;
}

static void fake_unloaded(struct lupe_symbol_reporter *r, uint64_t host)
{
	((struct fake_reporter *)r)->log->unloaded++;
}

static void fake_reporter_free(struct lupe_symbol_reporter *r)
{
	((struct fake_reporter *)r)->log->frees++;
	free(r);
}

static const struct lupe_symbol_reporter_ops fake_reporter_ops = {
	.executable_loaded = fake_loaded,
	.executable_unloaded = fake_unloaded,
	.free = fake_reporter_free,
};

static struct lupe_symbol_reporter *fake_reporter_new(struct report_log *log)
{
	struct fake_reporter *fr = calloc(1, sizeof(*fr));

	if (!fr)
		return NULL;
	fr->r.ops = &fake_reporter_ops;
	fr->log = log;
	return &fr->r;
}

/* A handler that only counts: memory measurements without the recorder's growing log. */
struct null_handler {
	struct lupe_ebpf_handler h;
};

static int null_pid(struct lupe_ebpf_handler *h, pid_t pid)
{
	return 0;
}

static int null_map(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m)
{
	return 0;
}

static int null_load(struct lupe_ebpf_handler *h, uint64_t host, const struct lupe_interval_data *d)
{
	return 0;
}

static int null_unload(struct lupe_ebpf_handler *h, uint64_t host)
{
	return 0;
}

static void null_free(struct lupe_ebpf_handler *h)
{
	free(h);
}

static int failing_map(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m)
{
	return -ENOSPC; /* a full BPF map */
}

static const struct lupe_ebpf_handler_ops failing_ops = {
	.new_pid = null_pid, .delete_pid = null_pid, .add_mapping = failing_map,
	.delete_mapping = failing_map, .load_deltas = null_load, .unload_deltas = null_unload,
	.free = null_free,
};

static const struct lupe_ebpf_handler_ops null_ops = {
	.new_pid = null_pid, .delete_pid = null_pid, .add_mapping = null_map,
	.delete_mapping = null_map, .load_deltas = null_load, .unload_deltas = null_unload,
	.free = null_free,
};

/* ---- tests ------------------------------------------------------------------------ */

TEST(first_sync_keeps_exactly_the_file_mappings)
{
	struct want w[MAX_WANT];
	struct lupe_procmgr_stats st;
	struct lupe_mapping m;
	struct lupe_procmgr *pm;
	struct bpf_model *model;
	char root[PATH_MAX], path[PATH_MAX];
	size_t n, anon, d;
	pid_t pid = FPID(1);

	FX_INIT();
	ASSERT(mkroot("first", root, sizeof(root)));
	ASSERT_OK(write_template(root, pid, "first.maps"));
	n = want_template("first.maps", w, MAX_WANT, &anon);
	d = distinct_files(w, n);
	/* The fixture's file mappings: nonpie?, ls, libc twice, libz?, ld. */
	printf("    first.maps: %zu file mappings of %zu files (non-PIE: %s, libz: %s)\n", n, d,
	       fx.f[F_NONPIE].nx ? "yes" : "no", fx.f[F_LIBZ].nx ? "yes" : "no");
	ASSERT_EQ(n, 4 + !!fx.f[F_NONPIE].nx + !!fx.f[F_LIBZ].nx);
	ASSERT_EQ(anon, expect_of("first.maps", "anon"));

	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT(lupe_ebpf_handler_is_recorder(lupe_procmgr__ebpf(pm)));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	CHECK(check_first_records(pm, pid, w, n, false));
	CHECK(check_views(pm, pid, w, n));
	model = calloc(1, sizeof(*model));
	ASSERT(model);
	CHECK(model_apply(model, pm));
	CHECK(model_check(model, pid, w, n));
	free(model);

	st = stats_of(pm);
	ASSERT_EQ(st.processes, 1);
	ASSERT_EQ(st.mappings, n);
	ASSERT_EQ(st.anon_regions, anon);
	ASSERT_EQ(st.executables, d);
	ASSERT_EQ(st.executables_loaded_total, d);
	ASSERT_EQ(st.no_deltas, d);
	ASSERT_EQ(st.elf_cache_misses, d);
	ASSERT_EQ(st.elf_cache_hits, n - d); /* libc's second mapping */
	ASSERT_EQ(st.maps_malformed + st.elf_errors + st.file_open_errors + st.ebpf_errors, 0);
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LIBC)), 2);
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LS)), 1);

	/* Lookups: the last byte of a mapping, one past it, an anonymous region. */
	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, w[0].end - 1, 0, &m, path, sizeof(path)));
	ASSERT_EQ(m.vaddr, w[0].start);
	ASSERT_STREQ(path, w[0].path);
	ASSERT_EQ(lupe_procmgr__find_mapping(pm, pid, 0x7f0000000100, 0, &m, NULL, 0), -ENOENT);
	ASSERT_EQ(lupe_procmgr__find_mapping(pm, pid, 0x55d0a001a000, 0, &m, NULL, 0), -ENOENT);
	ASSERT(lupe_procmgr__file_id(pm, host_of(F_LS), &m.file_id));
	ASSERT(id_eq(m.file_id, fx.f[F_LS].id));
	lupe_procmgr__free(pm);
}

TEST(resync_unchanged_is_silent)
{
	struct want w[MAX_WANT];
	struct lupe_procmgr *pm;
	struct lupe_procmgr_stats st;
	char root[PATH_MAX];
	size_t n, anon, nr;
	pid_t pid = FPID(2);
	int i;

	FX_INIT();
	ASSERT(mkroot("unchanged", root, sizeof(root)));
	ASSERT_OK(write_template(root, pid, "first.maps"));
	n = want_template("first.maps", w, MAX_WANT, &anon);
	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	st = stats_of(pm);
	clear_records(pm);
	for (i = 0; i < 3; i++)
		ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	records(pm, &nr);
	ASSERT_EQ(nr, 0);
	ASSERT_EQ(stats_of(pm).elf_cache_misses, st.elf_cache_misses);
	ASSERT_EQ(stats_of(pm).elf_cache_hits, st.elf_cache_hits); /* nothing reopened */
	ASSERT_EQ(stats_of(pm).executables_loaded_total, st.executables_loaded_total);
	ASSERT_EQ(stats_of(pm).sync_attempts, st.sync_attempts + 3);
	CHECK(check_views(pm, pid, w, n));
	lupe_procmgr__free(pm);
}

/* Rewrites pid's maps as the expansion of first.maps without the lines containing drop[]
 * (NULL-terminated) and with extra appended. */
static int write_variant(const char *root, pid_t pid, const char *const *drop, const char *extra,
			 struct want *w, size_t *n)
{
	char *text = expand("first.maps"), *out, *line, *next;
	size_t len = 0, anon;
	int rc = -1;

	if (!text)
		return -1;
	out = malloc(strlen(text) + (extra ? strlen(extra) : 0) + 1);
	if (!out)
		goto out;
	for (line = text; *line; line = next) {
		const char *const *d;
		bool keep = true;

		next = strchr(line, '\n');
		next = next ? next + 1 : line + strlen(line);
		for (d = drop; d && *d; d++)
			if (memmem(line, (size_t)(next - line), *d, strlen(*d)))
				keep = false;
		if (keep) {
			memcpy(out + len, line, (size_t)(next - line));
			len += (size_t)(next - line);
		}
	}
	out[len] = '\0';
	if (extra)
		strcat(out, extra);
	*n = oracle(out, w, MAX_WANT, &anon);
	rc = write_maps(root, pid, out);
	free(out);
out:
	free(text);
	return rc;
}

TEST(resync_removed_then_added)
{
	static const char *const drop_ldtext[] = { "7f0000401000-", NULL };
	struct want w[MAX_WANT], w2[MAX_WANT];
	const struct lupe_ebpf_record *r;
	struct lupe_procmgr_stats st;
	struct lupe_procmgr *pm;
	struct bpf_model *model;
	char root[PATH_MAX];
	size_t n, n2, nr;
	pid_t pid = FPID(3);

	FX_INIT();
	ASSERT(mkroot("diff", root, sizeof(root)));
	model = calloc(1, sizeof(*model));
	ASSERT(model);
	ASSERT_OK(write_variant(root, pid, NULL, NULL, w, &n));
	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	CHECK(model_apply(model, pm));
	st = stats_of(pm);

	/* ld.so's text goes: one delete_mapping, ld.so unloaded (nothing else maps it). */
	ASSERT_OK(write_variant(root, pid, drop_ldtext, NULL, w2, &n2));
	ASSERT_EQ(n2, n - 1);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	r = records(pm, &nr);
	ASSERT_EQ(nr, 1);
	ASSERT_EQ(r[0].call, LUPE_EBPF_DELETE_MAPPING);
	ASSERT_EQ(r[0].pid, pid);
	ASSERT_EQ(r[0].vaddr, 0x7f0000401000);
	ASSERT_EQ(r[0].host_file_id, host_of(F_LD));
	CHECK(model_apply(model, pm));
	CHECK(model_check(model, pid, w2, n2));
	CHECK(check_views(pm, pid, w2, n2));
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LD)), 0);
	ASSERT_EQ(stats_of(pm).executables_unloaded_total, 1);
	ASSERT_EQ(stats_of(pm).mappings, n - 1);

	/* And comes back: one add_mapping, loaded again, from the ELF cache. */
	ASSERT_OK(write_variant(root, pid, NULL, NULL, w, &n));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	r = records(pm, &nr);
	ASSERT_EQ(nr, 1);
	ASSERT_EQ(r[0].call, LUPE_EBPF_ADD_MAPPING);
	ASSERT_EQ(r[0].vaddr, 0x7f0000401000);
	ASSERT_EQ(r[0].host_file_id, host_of(F_LD));
	CHECK(model_apply(model, pm));
	CHECK(model_check(model, pid, w, n));
	CHECK(check_views(pm, pid, w, n));
	ASSERT_EQ(stats_of(pm).executables_loaded_total, st.executables_loaded_total + 1);
	ASSERT_EQ(stats_of(pm).elf_cache_misses, st.elf_cache_misses);
	ASSERT_EQ(stats_of(pm).mappings, n);
	free(model);
	lupe_procmgr__free(pm);
}

/* The range of ld.so's text in first.maps now holds the copy of ls: BPF must end up with
 * the new file there, so the old mapping's delete must not come after the new one's add
 * (a delete of the same range would remove the entry just added). */
TEST(resync_replaced_at_same_address)
{
	static const char *const drop_ldtext[] = { "7f0000401000-", NULL };
	struct want w[MAX_WANT], w2[MAX_WANT];
	const struct lupe_ebpf_record *r;
	struct lupe_procmgr *pm;
	struct bpf_model *model;
	char root[PATH_MAX], extra[PATH_MAX + 128];
	size_t n, n2, nr, i, adds = 0, dels = 0, add_at = 0, del_at = 0;
	const char *msg;
	pid_t pid = FPID(4);
	const struct file *c = &fx.f[F_LSCOPY];

	FX_INIT();
	ASSERT(mkroot("replace", root, sizeof(root)));
	model = calloc(1, sizeof(*model));
	ASSERT(model);
	ASSERT_OK(write_variant(root, pid, NULL, NULL, w, &n));
	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	CHECK(model_apply(model, pm));
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LD)), 1);

	snprintf(extra, sizeof(extra), "7f0000401000-7f0000427000 r-xp %08" PRIx64 " %02x:%02x %ju %s\n",
		 c->xs[0].offset & ~(page_size() - 1), major(c->dev), minor(c->dev),
		 (uintmax_t)c->ino, c->path);
	ASSERT_OK(write_variant(root, pid, drop_ldtext, extra, w2, &n2));
	ASSERT_EQ(n2, n);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	r = records(pm, &nr);
	for (i = 0; i < nr; i++) {
		if (r[i].call == LUPE_EBPF_ADD_MAPPING) {
			adds++;
			add_at = i;
			ASSERT_EQ(r[i].host_file_id, host_of(F_LSCOPY));
			ASSERT_EQ(r[i].vaddr, 0x7f0000401000);
		} else if (r[i].call == LUPE_EBPF_DELETE_MAPPING) {
			dels++;
			del_at = i;
			ASSERT_EQ(r[i].host_file_id, host_of(F_LD));
			ASSERT_EQ(r[i].vaddr, 0x7f0000401000);
		}
	}
	ASSERT_EQ(nr, 2);
	ASSERT_EQ(adds, 1);
	ASSERT_EQ(dels, 1);
	/* The old file's reference went with its mapping; the new one is held. */
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LD)), 0);
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LSCOPY)), 1);
	CHECK(check_views(pm, pid, w2, n2));
	msg = model_apply(model, pm);
	if (!msg)
		msg = model_check(model, pid, w2, n2);
	free(model);
	lupe_procmgr__free(pm);
	if (del_at > add_at)
		FAIL("delete_mapping of the old file (record %zu) comes after add_mapping of the new "
		     "one (record %zu) for the same range: %s", del_at, add_at, msg ? msg : "");
	CHECK(msg);
}

TEST(refcount_across_processes)
{
	struct delta_log dlog = { 0 };
	struct report_log rlog = { 0 };
	struct want w[MAX_WANT];
	struct lupe_procmgr_stats st;
	const struct lupe_ebpf_record *r;
	struct lupe_procmgr *pm;
	char root[PATH_MAX];
	size_t n, anon, d, nr, i, unloads = 0, loads = 0;
	pid_t a = FPID(5), b = FPID(6);
	uint64_t t1, t2;
	int f;

	FX_INIT();
	ASSERT(mkroot("refcount", root, sizeof(root)));
	ASSERT_OK(write_template(root, a, "first.maps"));
	ASSERT_OK(write_template(root, b, "first.maps"));
	n = want_template("first.maps", w, MAX_WANT, &anon);
	d = distinct_files(w, n);
	pm = pm_new(root, fake_provider_new(&dlog), fake_reporter_new(&rlog), NULL);
	ASSERT(pm);

	ASSERT_OK(lupe_procmgr__synchronize_process(pm, a));
	CHECK(check_first_records(pm, a, w, n, true));
	r = records(pm, &nr);
	for (i = 0; i < nr; i++) {
		if (r[i].call != LUPE_EBPF_LOAD_DELTAS)
			continue;
		loads++;
		ASSERT_EQ(r[i].ndeltas, FAKE_DELTAS);
	}
	ASSERT_EQ(loads, d);
	ASSERT_EQ(dlog.calls, d);
	ASSERT_EQ(rlog.loaded, d);
	ASSERT_EQ(rlog.bad_info, 0);
	clear_records(pm);

	ASSERT_OK(lupe_procmgr__synchronize_process(pm, b));
	st = stats_of(pm);
	ASSERT_EQ(st.executables_loaded_total, d);
	ASSERT_EQ(st.executables, d);
	ASSERT_EQ(st.processes, 2);
	ASSERT_EQ(count_records(pm, LUPE_EBPF_LOAD_DELTAS), 0);
	ASSERT_EQ(dlog.calls, d);
	ASSERT_EQ(rlog.loaded, d);
	for (f = 0; f < NFILES; f++)
		if (mappings_of_file(w, n, f))
			ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(f)),
				  2 * mappings_of_file(w, n, f));
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LS)), 2);
	clear_records(pm);

	/* Exits are deferred: BPF forgets now, the host keeps the files. */
	t1 = lupe_ktime_now();
	t2 = t1 + 1000;
	ASSERT(lupe_procmgr__pid_exit(pm, a, t1));
	ASSERT(lupe_procmgr__pid_exit(pm, b, t2));
	ASSERT(!lupe_procmgr__pid_exit(pm, b, t2));
	ASSERT_EQ(count_records(pm, LUPE_EBPF_DELETE_MAPPING), 2 * n);
	ASSERT_EQ(count_records(pm, LUPE_EBPF_DELETE_PID), 2);
	ASSERT_EQ(count_records(pm, LUPE_EBPF_UNLOAD_DELTAS), 0);
	st = stats_of(pm);
	ASSERT_EQ(st.processes, 0);
	ASSERT_EQ(st.exited_pending, 2);
	ASSERT_EQ(st.mappings, 0);
	ASSERT_EQ(st.anon_regions, 0);
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LS)), 2);
	clear_records(pm);

	ASSERT_EQ(lupe_procmgr__symbolization_complete(pm, t1 - 1), 0);
	ASSERT_EQ(lupe_procmgr__symbolization_complete(pm, t1), 1);
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LS)), 1);
	ASSERT_EQ(stats_of(pm).executables_unloaded_total, 0);
	ASSERT_EQ(count_records(pm, LUPE_EBPF_UNLOAD_DELTAS), 0);
	ASSERT_EQ(lupe_procmgr__symbolization_complete(pm, t2), 1);
	for (f = 0; f < NFILES; f++)
		ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(f)), 0);
	st = stats_of(pm);
	ASSERT_EQ(st.executables_unloaded_total, d);
	ASSERT_EQ(st.executables, 0);
	ASSERT_EQ(st.exited_pending, 0);
	r = records(pm, &nr);
	for (i = 0; i < nr; i++)
		if (r[i].call == LUPE_EBPF_UNLOAD_DELTAS) {
			unloads++;
			ASSERT(provider_saw(&dlog, r[i].host_file_id));
		}
	ASSERT_EQ(unloads, d);
	ASSERT_EQ(rlog.unloaded, d);
	lupe_procmgr__free(pm);
	ASSERT_EQ(dlog.frees, 1);
	ASSERT_EQ(rlog.frees, 1);
}

TEST(provider_errors_fall_back_to_frame_pointers)
{
	struct delta_log dlog = { .enoent_for = "/libc.so", .eio_for = "/ld-linux" };
	struct want w[MAX_WANT];
	struct lupe_procmgr_stats st;
	struct lupe_procmgr *pm;
	char root[PATH_MAX];
	size_t n, anon, d;
	pid_t pid = FPID(7);

	FX_INIT();
	ASSERT(mkroot("provider", root, sizeof(root)));
	ASSERT_OK(write_template(root, pid, "first.maps"));
	n = want_template("first.maps", w, MAX_WANT, &anon);
	d = distinct_files(w, n);
	pm = pm_new(root, fake_provider_new(&dlog), NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	st = stats_of(pm);
	ASSERT_EQ(st.no_deltas, 1);
	ASSERT_EQ(st.delta_errors, 1);
	ASSERT_EQ(st.mappings, n); /* still mapped, unwound by frame pointers */
	ASSERT_EQ(count_records(pm, LUPE_EBPF_LOAD_DELTAS), d - 2);
	clear_records(pm);
	ASSERT(lupe_procmgr__pid_exit(pm, pid, 0));
	ASSERT_EQ(lupe_procmgr__symbolization_complete(pm, UINT64_MAX), 1);
	/* Only what was loaded is unloaded. */
	ASSERT_EQ(count_records(pm, LUPE_EBPF_UNLOAD_DELTAS), d - 2);
	lupe_procmgr__free(pm);
}

TEST(pid_reuse_after_deferred_exit)
{
	struct want w[MAX_WANT], w2[MAX_WANT];
	const struct lupe_ebpf_record *r;
	struct lupe_mapping m;
	struct lupe_procmgr *pm;
	char root[PATH_MAX], path[PATH_MAX];
	size_t n, n2, anon, nr;
	const uint64_t addr = 0x55d0a0004100; /* ls in first.maps, libc in second.maps */
	const uint64_t libc_old = 0x7f0000026100;
	pid_t pid = FPID(8);
	uint64_t t1;

	FX_INIT();
	ASSERT(mkroot("reuse", root, sizeof(root)));
	ASSERT_OK(write_template(root, pid, "first.maps"));
	n = want_template("first.maps", w, MAX_WANT, &anon);
	n2 = want_template("second.maps", w2, MAX_WANT, &anon);
	ASSERT_EQ(n2, 2);
	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	clear_records(pm);

	t1 = lupe_ktime_now();
	ASSERT(lupe_procmgr__pid_exit(pm, pid, t1));
	r = records(pm, &nr);
	ASSERT_EQ(nr, n + 1);
	ASSERT_EQ(r[n].call, LUPE_EBPF_DELETE_PID);
	clear_records(pm);

	/* The PID comes back as another program. */
	ASSERT_OK(write_template(root, pid, "second.maps"));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	CHECK(check_first_records(pm, pid, w2, n2, false));
	CHECK(check_views(pm, pid, w2, n2));
	ASSERT_EQ(stats_of(pm).processes, 1);
	ASSERT_EQ(stats_of(pm).exited_pending, 1);

	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, addr, t1 - 1, &m, path, sizeof(path)));
	ASSERT_STREQ(path, fx.f[F_LS].path);
	ASSERT_EQ(lupe_file_id_host(m.file_id), host_of(F_LS));
	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, addr, t1, &m, NULL, 0));
	ASSERT_EQ(lupe_file_id_host(m.file_id), host_of(F_LS));
	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, addr, t1 + 1, &m, path, sizeof(path)));
	ASSERT_STREQ(path, fx.f[F_LIBC].path);
	ASSERT_EQ(m.bias, w2[0].bias);
	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, addr, 0, &m, NULL, 0));
	ASSERT_EQ(lupe_file_id_host(m.file_id), host_of(F_LIBC));
	/* Only the old process mapped libc there. */
	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, libc_old, t1 - 1, &m, NULL, 0));
	ASSERT_EQ(lupe_file_id_host(m.file_id), host_of(F_LIBC));
	ASSERT_EQ(lupe_procmgr__find_mapping(pm, pid, libc_old, 0, &m, NULL, 0), -ENOENT);

	ASSERT_EQ(lupe_procmgr__symbolization_complete(pm, t1 - 1), 0);
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LS)), 1);
	ASSERT_EQ(lupe_procmgr__symbolization_complete(pm, t1), 1);
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LS)), 0);
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, host_of(F_LIBC)), 1);
	ASSERT_EQ(stats_of(pm).exited_pending, 0);
	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, addr, t1 - 1, &m, NULL, 0));
	ASSERT_EQ(lupe_file_id_host(m.file_id), host_of(F_LIBC));
	ASSERT_EQ(lupe_procmgr__find_mapping(pm, pid, libc_old, t1 - 1, &m, NULL, 0), -ENOENT);
	CHECK(check_views(pm, pid, w2, n2));
	lupe_procmgr__free(pm);
}

/* The same PID exits twice (two programs in turn): a trace resolves in the incarnation
 * that was alive at its time, i.e. the oldest one that exited at or after it. */
TEST(two_exited_incarnations)
{
	struct lupe_procmgr *pm;
	struct lupe_mapping m;
	char root[PATH_MAX];
	const uint64_t addr = 0x55d0a0004100; /* ls in first.maps, libc in second.maps */
	pid_t pid = FPID(9);
	uint64_t t1, t2;

	FX_INIT();
	ASSERT(mkroot("twice", root, sizeof(root)));
	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(write_template(root, pid, "first.maps"));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	t1 = lupe_ktime_now();
	ASSERT(lupe_procmgr__pid_exit(pm, pid, t1));
	ASSERT_OK(write_template(root, pid, "second.maps"));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	t2 = t1 + 1000000;
	ASSERT(lupe_procmgr__pid_exit(pm, pid, t2));
	ASSERT_EQ(stats_of(pm).exited_pending, 2);
	ASSERT_EQ(stats_of(pm).processes, 0);

	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, addr, t1 - 1, &m, NULL, 0));
	ASSERT_EQ(lupe_file_id_host(m.file_id), host_of(F_LS));
	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, addr, t1 + 1, &m, NULL, 0));
	ASSERT_EQ(lupe_file_id_host(m.file_id), host_of(F_LIBC));
	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, addr, t2, &m, NULL, 0));
	ASSERT_EQ(lupe_file_id_host(m.file_id), host_of(F_LIBC));
	/* ktime 0: the newest; after every exit: nothing was alive then, the newest too. */
	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, addr, 0, &m, NULL, 0));
	ASSERT_EQ(lupe_file_id_host(m.file_id), host_of(F_LIBC));
	ASSERT_EQ(lupe_procmgr__symbolization_complete(pm, t2 - 1), 1);
	ASSERT_OK(lupe_procmgr__find_mapping(pm, pid, addr, t1 - 1, &m, NULL, 0));
	ASSERT_EQ(lupe_file_id_host(m.file_id), host_of(F_LIBC));
	ASSERT_EQ(lupe_procmgr__symbolization_complete(pm, t2), 1);
	ASSERT_EQ(lupe_procmgr__find_mapping(pm, pid, addr, 0, &m, NULL, 0), -ENOENT);
	ASSERT_EQ(stats_of(pm).executables, 0);
	lupe_procmgr__free(pm);
}

/* An ELF cache of one entry churns on every file and must still be right. */
TEST(tiny_elf_cache_still_correct)
{
	struct want w[MAX_WANT];
	struct lupe_procmgr *pm;
	char root[PATH_MAX];
	size_t n, anon, d;
	pid_t a = FPID(60), b = FPID(61);

	FX_INIT();
	ASSERT(mkroot("tinycache", root, sizeof(root)));
	ASSERT_OK(write_template(root, a, "first.maps"));
	ASSERT_OK(write_template(root, b, "first.maps"));
	n = want_template("first.maps", w, MAX_WANT, &anon);
	d = distinct_files(w, n);
	{
		LUPE_OPTS(lupe_procmgr_opts, o, .proc_root = root, .elf_cache_size = 1);

		pm = lupe_procmgr__new(&o);
	}
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, a));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, b));
	CHECK(check_views(pm, a, w, n));
	CHECK(check_views(pm, b, w, n));
	ASSERT(stats_of(pm).elf_cache_misses >= 2 * d);
	ASSERT_EQ(stats_of(pm).executables_loaded_total, d);
	lupe_procmgr__free(pm);
}

/* A handler that fails (a full BPF map) is counted; the host still tracks the mappings. */
TEST(handler_failures_are_counted)
{
	struct want w[MAX_WANT];
	struct null_handler *h;
	struct lupe_procmgr *pm;
	char root[PATH_MAX];
	size_t n, anon;
	pid_t pid = FPID(62);

	FX_INIT();
	ASSERT(mkroot("failing", root, sizeof(root)));
	ASSERT_OK(write_template(root, pid, "first.maps"));
	n = want_template("first.maps", w, MAX_WANT, &anon);
	h = calloc(1, sizeof(*h));
	ASSERT(h);
	h->h.ops = &failing_ops;
	pm = pm_new(root, NULL, NULL, &h->h);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	ASSERT_EQ(stats_of(pm).ebpf_errors, n);
	CHECK(check_views(pm, pid, w, n));
	ASSERT(lupe_procmgr__pid_exit(pm, pid, 0));
	ASSERT_EQ(stats_of(pm).ebpf_errors, 2 * n);
	lupe_procmgr__free(pm);
}

TEST(bad_input_is_counted_not_fatal)
{
	struct want w[MAX_WANT];
	struct lupe_procmgr_stats st, st2;
	struct lupe_procmgr *pm;
	char root[PATH_MAX], text[PATH_MAX + 128];
	size_t n, anon;
	long malformed = expect_of("bad.maps", "malformed");
	long elf_errors = expect_of("bad.maps", "elf_errors");
	long open_errors = expect_of("bad.maps", "open_errors");
	const struct file *ls = &fx.f[F_LS];
	pid_t x = FPID(10), y = FPID(11), z = FPID(12), e = FPID(13), ne = FPID(14);

	FX_INIT();
	ASSERT(malformed > 0 && elf_errors > 0 && open_errors > 0);
	ASSERT(mkroot("bad", root, sizeof(root)));
	ASSERT_OK(write_template(root, x, "bad.maps"));
	ASSERT_OK(write_template(root, y, "bad.maps"));
	n = want_template("bad.maps", w, MAX_WANT, &anon);
	ASSERT_EQ(n, expect_of("bad.maps", "loaded"));
	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);

	ASSERT_OK(lupe_procmgr__synchronize_process(pm, x));
	st = stats_of(pm);
	ASSERT_EQ(st.maps_malformed, malformed);
	ASSERT_EQ(st.elf_errors, elf_errors);
	ASSERT_EQ(st.file_open_errors, open_errors);
	ASSERT_EQ(st.elf_cache_misses, n + elf_errors);
	ASSERT_EQ(st.mappings, n);
	CHECK(check_views(pm, x, w, n));

	/* The same bad files again: answered by the negative cache, parsed once. */
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, y));
	st2 = stats_of(pm);
	ASSERT_EQ(st2.elf_errors, elf_errors);
	ASSERT_EQ(st2.elf_cache_misses, st.elf_cache_misses);
	ASSERT_EQ(st2.elf_cache_hits, st.elf_cache_hits + n + elf_errors);
	ASSERT_EQ(st2.file_open_errors, 2 * open_errors);
	ASSERT_EQ(st2.maps_malformed, 2 * malformed);
	CHECK(check_views(pm, y, w, n));

	/* Executable at an offset no executable segment covers: not code, not loaded. */
	if ((ls->xs[0].offset & ~(page_size() - 1)) > 0) {
		snprintf(text, sizeof(text), "55d0a0000000-55d0a0004000 r-xp 00000000 %02x:%02x %ju %s\n",
			 major(ls->dev), minor(ls->dev), (uintmax_t)ls->ino, ls->path);
		ASSERT_OK(write_maps(root, z, text));
		ASSERT_OK(lupe_procmgr__synchronize_process(pm, z));
		ASSERT_EQ(stats_of(pm).elf_errors, elf_errors + 1);
		ASSERT_EQ(lupe_procmgr__find_mapping(pm, z, 0x55d0a0000000, 0, &(struct lupe_mapping){ 0 },
						     NULL, 0), -ENOENT);
	}

	/* No such PID; no mappings (a kernel thread); nothing executable. */
	ASSERT_EQ(lupe_procmgr__synchronize_process(pm, FPID(99)), -ESRCH);
	ASSERT_EQ(stats_of(pm).sync_esrch, 1);
	ASSERT_OK(write_maps(root, e, ""));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, e));
	ASSERT_EQ(stats_of(pm).sync_empty, 1);
	ASSERT_OK(write_maps(root, ne, "55d0a1000000-55d0a1021000 rw-p 00000000 00:00 0  [heap]\n"
				       "7f0000000000-7f0000010000 rwxp 00000000 00:00 0 \n"));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, ne));
	ASSERT_EQ(stats_of(pm).sync_empty, 2);
	{
		struct lupe_mapping_view *v = NULL;

		ASSERT_EQ(lupe_procmgr__mappings(pm, e, &v), -ENOENT);
		ASSERT_EQ(lupe_procmgr__mappings(pm, ne, &v), -ENOENT);
	}
	ASSERT_EQ(lupe_procmgr__synchronize_process(pm, 0), -EINVAL);
	ASSERT_EQ(lupe_procmgr__synchronize_process(pm, -5), -EINVAL);

	/* A tracked process left with no mappings is a zombie: it exits now. */
	ASSERT_OK(write_maps(root, x, ""));
	ASSERT_EQ(lupe_procmgr__synchronize_process(pm, x), -ESRCH);
	ASSERT_EQ(stats_of(pm).exited_pending, 1);
	ASSERT_EQ(lupe_procmgr__symbolization_complete(pm, lupe_ktime_now()), 1);
	lupe_procmgr__free(pm);
}

TEST(changed_file_is_rehashed)
{
	struct file f = { .name = "mtime" };
	struct lupe_mapping_view *v = NULL;
	struct lupe_procmgr_stats st;
	struct lupe_procmgr *pm;
	struct timespec times[2];
	struct lupe_file_id old_id;
	char root[PATH_MAX], text[PATH_MAX + 128];
	pid_t a = FPID(20), b = FPID(21), c = FPID(22);
	int fd;

	FX_INIT();
	ASSERT(mkroot("mtime", root, sizeof(root)));
	snprintf(f.path, sizeof(f.path), "%s/mtime/ls again", fx.dir);
	ASSERT_OK(copy_file(fx.f[F_LS].path, f.path, SIZE_MAX));
	describe_file(&f);
	ASSERT(f.nx > 0);
	snprintf(text, sizeof(text), "55d0a0004000-55d0a001a000 r-xp %08" PRIx64 " %02x:%02x %ju %s\n",
		 f.xs[0].offset & ~(page_size() - 1), major(f.dev), minor(f.dev), (uintmax_t)f.ino,
		 f.path);
	ASSERT_OK(write_maps(root, a, text));
	ASSERT_OK(write_maps(root, b, text));
	ASSERT_OK(write_maps(root, c, text));
	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, a));
	ASSERT_EQ(stats_of(pm).elf_cache_misses, 1);

	/* Touched, same bytes: re-read, same file ID, the loaded file is shared. */
	clock_gettime(CLOCK_REALTIME, &times[0]);
	times[1] = times[0];
	times[1].tv_sec -= 3600;
	ASSERT_OK(utimensat(AT_FDCWD, f.path, times, 0));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, b));
	st = stats_of(pm);
	ASSERT_EQ(st.elf_cache_misses, 2);
	ASSERT_EQ(st.elf_cache_hits, 0);
	ASSERT_EQ(st.executables_loaded_total, 1);
	ASSERT_EQ(lupe_procmgr__exe_refcount(pm, lupe_file_id_host(f.id)), 2);

	/* Grown by a page: re-read, a new file ID (the oracle rehashes it too). */
	old_id = f.id;
	fd = open(f.path, O_WRONLY | O_APPEND | O_CLOEXEC);
	ASSERT(fd >= 0);
	{
		static const char page[4096];

		ASSERT_EQ(write(fd, page, sizeof(page)), (ssize_t)sizeof(page));
	}
	close(fd);
	describe_file(&f);
	ASSERT(!id_eq(f.id, old_id));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, c));
	st = stats_of(pm);
	ASSERT_EQ(st.elf_cache_misses, 3);
	ASSERT_EQ(st.executables_loaded_total, 2);
	ASSERT_EQ(lupe_procmgr__mappings(pm, c, &v), 1);
	ASSERT(id_eq(v[0].m.file_id, f.id));
	free(v);
	v = NULL;
	ASSERT_EQ(lupe_procmgr__mappings(pm, a, &v), 1);
	ASSERT(id_eq(v[0].m.file_id, old_id)); /* a still maps what it mapped */
	free(v);
	lupe_procmgr__free(pm);
}

TEST(deleted_file_opens_through_map_files)
{
	struct want w[MAX_WANT];
	struct lupe_procmgr *pm;
	char root[PATH_MAX], link[PATH_MAX];
	size_t n, anon;
	pid_t a = FPID(30), b = FPID(31);

	FX_INIT();
	ASSERT(mkroot("deleted", root, sizeof(root)));
	ASSERT_OK(write_template(root, a, "deleted.maps"));
	ASSERT_OK(write_template(root, b, "deleted.maps"));
	n = want_template("deleted.maps", w, MAX_WANT, &anon);
	ASSERT_EQ(n, 1);
	ASSERT(w[0].deleted);
	ASSERT_STREQ(w[0].path, "/gone/away/ls copy");
	snprintf(link, sizeof(link), "%s/%d/map_files", root, a);
	ASSERT(mkdir(link, 0755) == 0 || errno == EEXIST);
	snprintf(link, sizeof(link), "%s/%d/map_files/%" PRIx64 "-%" PRIx64, root, a, w[0].start,
		 w[0].end);
	ASSERT(symlink(fx.f[F_LSCOPY].path, link) == 0 || errno == EEXIST);

	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, a));
	CHECK(check_views(pm, a, w, n));
	ASSERT_EQ(stats_of(pm).file_open_errors, 0);
	/* Without map_files the path is all there is, and it is gone. */
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, b));
	ASSERT_EQ(stats_of(pm).file_open_errors, 1);
	CHECK(check_views(pm, b, w, 0));
	lupe_procmgr__free(pm);
}

TEST(synthetic_deltas_take_precedence)
{
	struct delta_log dlog = { 0 };
	struct lupe_stack_delta deltas[7] = { { .address = 0x4000 } };
	struct want w[MAX_WANT];
	const struct lupe_ebpf_record *r;
	struct lupe_procmgr *pm;
	char root[PATH_MAX];
	size_t n, anon, d, nr, i;
	pid_t pid = FPID(40);
	bool ls_seen = false;

	FX_INIT();
	ASSERT(mkroot("synth", root, sizeof(root)));
	ASSERT_OK(write_template(root, pid, "first.maps"));
	n = want_template("first.maps", w, MAX_WANT, &anon);
	d = distinct_files(w, n);
	pm = pm_new(root, fake_provider_new(&dlog), NULL, NULL);
	ASSERT(pm);

	/* Before ls is loaded: nothing to tell BPF yet. */
	ASSERT_OK(lupe_procmgr__add_synth_interval_data(pm, host_of(F_LS),
		  &(struct lupe_interval_data){ deltas, 5 }));
	records(pm, &nr);
	ASSERT_EQ(nr, 0);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	r = records(pm, &nr);
	for (i = 0; i < nr; i++) {
		if (r[i].call != LUPE_EBPF_LOAD_DELTAS)
			continue;
		if (r[i].host_file_id == host_of(F_LS)) {
			ASSERT(!ls_seen);
			ls_seen = true;
			ASSERT_EQ(r[i].ndeltas, 5);
		} else {
			ASSERT_EQ(r[i].ndeltas, FAKE_DELTAS);
		}
	}
	ASSERT(ls_seen);
	ASSERT_EQ(count_records(pm, LUPE_EBPF_LOAD_DELTAS), d);
	ASSERT_EQ(dlog.calls, d - 1);
	ASSERT(!provider_saw(&dlog, host_of(F_LS)));
	clear_records(pm);

	/* After libc is loaded (from the provider): reloaded with the synthetic data. */
	ASSERT_OK(lupe_procmgr__add_synth_interval_data(pm, host_of(F_LIBC),
		  &(struct lupe_interval_data){ deltas, 7 }));
	r = records(pm, &nr);
	ASSERT_EQ(nr, 2);
	ASSERT_EQ(r[0].call, LUPE_EBPF_UNLOAD_DELTAS);
	ASSERT_EQ(r[0].host_file_id, host_of(F_LIBC));
	ASSERT_EQ(r[1].call, LUPE_EBPF_LOAD_DELTAS);
	ASSERT_EQ(r[1].host_file_id, host_of(F_LIBC));
	ASSERT_EQ(r[1].ndeltas, 7);
	clear_records(pm);
	/* Replacing synthetic data reloads too; an unknown file is only remembered. */
	ASSERT_OK(lupe_procmgr__add_synth_interval_data(pm, host_of(F_LS),
		  &(struct lupe_interval_data){ deltas, 2 }));
	r = records(pm, &nr);
	ASSERT_EQ(nr, 2);
	ASSERT_EQ(r[1].call, LUPE_EBPF_LOAD_DELTAS);
	ASSERT_EQ(r[1].ndeltas, 2);
	clear_records(pm);
	ASSERT_OK(lupe_procmgr__add_synth_interval_data(pm, 0x1234,
		  &(struct lupe_interval_data){ deltas, 1 }));
	records(pm, &nr);
	ASSERT_EQ(nr, 0);
	ASSERT_EQ(dlog.calls, d - 1);

	ASSERT(lupe_procmgr__pid_exit(pm, pid, 0));
	ASSERT_EQ(lupe_procmgr__symbolization_complete(pm, UINT64_MAX), 1);
	ASSERT_EQ(count_records(pm, LUPE_EBPF_UNLOAD_DELTAS), d);
	lupe_procmgr__free(pm);
}

TEST(vdso_of_this_process)
{
	char line[PATH_MAX + 256], root[PATH_MAX], dump[PATH_MAX];
	struct lupe_mapping_view *v = NULL;
	struct lupe_procmgr *pm;
	struct file f = { .name = "vdso" };
	uint64_t start = 0, end = 0, page = page_size();
	bool found = false;
	FILE *maps;
	pid_t self = getpid();
	size_t s;

	FX_INIT();
	maps = fopen("/proc/self/maps", "r");
	ASSERT(maps);
	while (!found && fgets(line, sizeof(line), maps))
		found = strstr(line, "[vdso]") &&
			sscanf(line, "%" SCNx64 "-%" SCNx64, &start, &end) == 2;
	fclose(maps);
	if (!found)
		SKIP("no [vdso] in /proc/self/maps");
	ASSERT_EQ(getauxval(AT_SYSINFO_EHDR), start);
	/* The oracle reads the image from a dump: readelf for segments, the file ID from fd. */
	snprintf(dump, sizeof(dump), "%s/vdso.so", fx.dir);
	{
		int fd = open(dump, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

		ASSERT(fd >= 0);
		ASSERT_EQ(write(fd, (const void *)(uintptr_t)start, end - start), (ssize_t)(end - start));
		close(fd);
	}
	snprintf(f.path, sizeof(f.path), "%s", dump);
	describe_file(&f);
	ASSERT(f.nx > 0);
	for (s = 0; s < f.nx; s++)
		if ((f.xs[s].offset & ~(page - 1)) == 0)
			break;
	ASSERT(s < f.nx);

	ASSERT(mkroot("vdso", root, sizeof(root)));
	ASSERT_OK(write_maps(root, self, line));
	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, self));
	ASSERT_EQ(lupe_procmgr__mappings(pm, self, &v), 1);
	ASSERT_STREQ(v[0].path, "[vdso]");
	ASSERT_EQ(v[0].m.vaddr, start);
	ASSERT_EQ(v[0].m.bias, start - (f.xs[s].vaddr - f.xs[s].offset));
	ASSERT(id_eq(v[0].m.file_id, f.id));
	free(v);
	lupe_procmgr__free(pm);
}

TEST(cleanup_pids_sweeps_dead_and_zombies)
{
	struct lupe_procmgr_stats st;
	struct lupe_procmgr *pm;
	char root[PATH_MAX], path[PATH_MAX], stat_text[128];
	pid_t self = getpid(), parent = getppid(), dead = FPID(50);
	pid_t *pids = NULL;
	bool *exited = NULL;
	ssize_t np, i;

	FX_INIT();
	ASSERT(mkroot("cleanup", root, sizeof(root)));
	ASSERT_OK(write_template(root, self, "second.maps"));
	ASSERT_OK(write_template(root, parent, "second.maps"));
	ASSERT_OK(write_template(root, dead, "second.maps"));
	/* comm may hold ") Z": only the last ')' counts. The parent is shown as a zombie. */
	snprintf(path, sizeof(path), "%s/%d/stat", root, self);
	snprintf(stat_text, sizeof(stat_text), "%d (a) Z (b) S 1 1 1 0\n", self);
	ASSERT_OK(write_text(path, stat_text));
	snprintf(path, sizeof(path), "%s/%d/stat", root, parent);
	snprintf(stat_text, sizeof(stat_text), "%d (sh) Z 1 1 1 0\n", parent);
	ASSERT_OK(write_text(path, stat_text));

	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, self));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, parent));
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, dead));
	ASSERT_EQ(lupe_procmgr__cleanup_pids(pm), 2);
	st = stats_of(pm);
	ASSERT_EQ(st.processes, 1);
	ASSERT_EQ(st.exited_pending, 2);
	np = lupe_procmgr__processes(pm, &pids, &exited);
	ASSERT_EQ(np, 3);
	for (i = 0; i < np; i++)
		if (pids[i] == self && exited[i])
			FAIL("the live process was swept");
	free(pids);
	free(exited);
	ASSERT_EQ(lupe_procmgr__cleanup_pids(pm), 0);
	lupe_procmgr__free(pm);
}

TEST(tick_sweeps_only_when_the_monitor_interval_has_passed)
{
	char root[PATH_MAX];
	pid_t dead = FPID(51);
	struct lupe_procmgr *pm;
	uint64_t now;

	FX_INIT();
	ASSERT(mkroot("tick", root, sizeof(root)));
	ASSERT_OK(write_template(root, dead, "second.maps"));
	{
		LUPE_OPTS(lupe_procmgr_opts, o, .proc_root = root, .monitor_interval_ms = 50);
		pm = lupe_procmgr__new(&o);
	}
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, dead));
	now = lupe_ktime_now();
	ASSERT_EQ(lupe_procmgr__tick(pm, now), 0);             /* not due yet */
	ASSERT_EQ(stats_of(pm).processes, 1);
	ASSERT_EQ(lupe_procmgr__tick(pm, now + 60000000ull), 1); /* 60 ms later */
	ASSERT_EQ(stats_of(pm).exited_pending, 1);
	ASSERT_EQ(lupe_procmgr__tick(pm, now + 70000000ull), 0); /* swept 10 ms ago */
	lupe_procmgr__free(pm);
}

/* The bound: at most 16 KiB per tracked process plus 256 bytes per mapping. */
TEST(memory_within_bound_for_300_mappings)
{
	static const int files[] = { F_LS, F_LIBC, F_LD, F_LIBZ };
	const size_t nbig = 300, nsmall = 10, nproc = 10;
	struct lupe_procmgr_stats st;
	struct lupe_procmgr *pm;
	struct null_handler *h;
	char root[PATH_MAX], *big, *small;
	size_t i, len = 0, nf = 0, m0, m1, m10, ms, cap;
	struct mallinfo2 h0, h1;
	double per_proc300, per_proc10, per_map, fixed, heap_per_proc300;
	int usable[4];

	FX_INIT();
	for (i = 0; i < 4; i++)
		if (fx.f[files[i]].ok && fx.f[files[i]].nx)
			usable[nf++] = files[i];
	ASSERT(nf >= 3);
	cap = nbig * (PATH_MAX / 8 + 128);
	big = malloc(cap);
	small = malloc(cap);
	ASSERT(big && small);
	for (i = 0; i < nbig; i++) {
		const struct file *f = &fx.f[usable[i % nf]];
		uint64_t start = 0x7f0000000000ull + i * 0x100000ull;

		len += (size_t)snprintf(big + len, cap - len,
					"%" PRIx64 "-%" PRIx64 " r-xp %08" PRIx64 " %02x:%02x %ju %s\n",
					start, start + 0x10000, f->xs[0].offset & ~(page_size() - 1),
					major(f->dev), minor(f->dev), (uintmax_t)f->ino, f->path);
		if (i + 1 == nsmall)
			memcpy(small, big, len + 1);
	}
	ASSERT(len < cap);
	ASSERT(mkroot("memory", root, sizeof(root)));
	for (i = 0; i < nproc; i++) {
		ASSERT_OK(write_maps(root, FPID(100 + (int)i), big));
		ASSERT_OK(write_maps(root, FPID(200 + (int)i), small));
	}
	free(big);
	free(small);

	h = calloc(1, sizeof(*h));
	ASSERT(h);
	h->h.ops = &null_ops;
	pm = pm_new(root, NULL, NULL, &h->h);
	ASSERT(pm);
	m0 = stats_of(pm).memory_bytes;
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, FPID(100)));
	m1 = stats_of(pm).memory_bytes;
	h0 = mallinfo2();
	for (i = 1; i < nproc; i++)
		ASSERT_OK(lupe_procmgr__synchronize_process(pm, FPID(100 + (int)i)));
	h1 = mallinfo2();
	m10 = stats_of(pm).memory_bytes;
	for (i = 0; i < nproc; i++)
		ASSERT_OK(lupe_procmgr__synchronize_process(pm, FPID(200 + (int)i)));
	st = stats_of(pm);
	ms = st.memory_bytes;
	ASSERT_EQ(st.mappings, nproc * (nbig + nsmall));
	ASSERT_EQ(st.processes, 2 * nproc);

	per_proc300 = (double)(m10 - m1) / (double)(nproc - 1);
	per_proc10 = (double)(ms - m10) / (double)nproc;
	per_map = (per_proc300 - per_proc10) / (double)(nbig - nsmall);
	fixed = per_proc10 - per_map * (double)nsmall;
	heap_per_proc300 = (double)(h1.uordblks - h0.uordblks) / (double)(nproc - 1);
	printf("    memory: empty manager %zu B; first process (300 mappings, 4 files cached) +%zu B\n",
	       m0, m1 - m0);
	printf("    memory: per process with 300 mappings %.0f B, with 10 mappings %.0f B\n",
	       per_proc300, per_proc10);
	printf("    memory: per mapping %.1f B, per process (fixed part) %.0f B\n", per_map, fixed);
	printf("    memory: total %" PRIu64 " B for %" PRIu64 " processes, %" PRIu64
	       " mappings (bound %" PRIu64 " B)\n", st.memory_bytes, st.processes, st.mappings,
	       st.processes * 16384 + st.mappings * 256);
	if (h1.uordblks > h0.uordblks)
		printf("    heap (mallinfo2): per process with 300 mappings %.0f B, %.1f B per mapping\n",
		       heap_per_proc300, heap_per_proc300 / (double)nbig);
	else
		printf("    heap (mallinfo2): not available under this allocator\n");

	ASSERT(per_map <= 256.0);
	ASSERT(fixed <= 16384.0);
	ASSERT(st.memory_bytes <= st.processes * 16384 + st.mappings * 256);
	/* The real heap, an oracle independent of the manager's own accounting. */
	if (h1.uordblks > h0.uordblks)
		ASSERT(heap_per_proc300 <= 16384.0 + 256.0 * (double)nbig);
	lupe_procmgr__free(pm);
}

/* A mapped path is resolved inside the process's root: a symlink there that points at an
 * absolute host path must not reach the host's file, and a FIFO planted at a mapped path
 * must neither block the manager nor be read. The control, a real file inside the root,
 * is loaded. */
TEST(mapped_paths_stay_inside_the_process_root)
{
	struct lupe_procmgr_stats st;
	struct lupe_procmgr *pm;
	char root[PATH_MAX], dir[PATH_MAX + 64], path[PATH_MAX + 96], maps[1024];
	pid_t pid = FPID(40);

	FX_INIT();
	ASSERT(mkroot("escape", root, sizeof(root)));
	snprintf(dir, sizeof(dir), "%s/%d", root, pid);
	ASSERT(mkdir(dir, 0755) == 0 || errno == EEXIST);
	snprintf(dir, sizeof(dir), "%s/%d/root", root, pid);
	ASSERT(mkdir(dir, 0755) == 0 || errno == EEXIST);
	snprintf(dir, sizeof(dir), "%s/%d/root/lib", root, pid);
	ASSERT(mkdir(dir, 0755) == 0 || errno == EEXIST);
	/* The escape: absolute, and by "..", both to a real ELF file of the host. */
	snprintf(path, sizeof(path), "%s/abs.so", dir);
	ASSERT_OK(symlink(fx.f[F_LS].path, path));
	snprintf(path, sizeof(path), "%s/dots.so", dir);
	ASSERT_OK(symlink("../../../../../../../../../../../../usr/bin/ls", path));
	snprintf(path, sizeof(path), "%s/fifo.so", dir);
	ASSERT_OK(mkfifo(path, 0600));
	snprintf(path, sizeof(path), "%s/good.so", dir);
	ASSERT_OK(copy_file(fx.f[F_LS].path, path, SIZE_MAX));
	snprintf(maps, sizeof(maps),
		 "7f0000000000-7f0000001000 r-xp 00000000 00:00 1 /lib/abs.so\n"
		 "7f0000002000-7f0000003000 r-xp 00000000 00:00 2 /lib/dots.so\n"
		 "7f0000004000-7f0000005000 r-xp 00000000 00:00 3 /lib/fifo.so\n"
		 "7f0000006000-7f0000007000 r-xp 00000000 00:00 4 /lib/good.so\n");
	snprintf(path, sizeof(path), "%s/%d/maps", root, pid);
	ASSERT_OK(write_text(path, maps));

	pm = pm_new(root, NULL, NULL, NULL);
	ASSERT(pm);
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, pid));
	st = stats_of(pm);
	printf("    escape: %" PRIu64 " executables, %" PRIu64 " open errors, %" PRIu64
	       " ELF errors, %" PRIu64 " mappings\n", st.executables, st.file_open_errors,
	       st.elf_errors, st.mappings);
	/* Only good.so is opened (and read: its made-up offset fits no segment of ls, so it
	 * counts as an ELF error); the symlinks resolve inside the root, to nothing there, and
	 * the FIFO is refused. Before the fix: abs.so and dots.so opened the host's ls, and
	 * the FIFO blocked the manager. */
	ASSERT_EQ(st.file_open_errors, 3);
	ASSERT_EQ(st.elf_errors, 1);
	lupe_procmgr__free(pm);
}
